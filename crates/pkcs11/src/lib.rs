//! The PKCS#11 key backend (`pkcs11`, or `pkcs11:NAME` for one of several tokens):
//! key pairs generated on a token and used there, never extractable
//! (`CKA_SENSITIVE`, `CKA_EXTRACTABLE=false`, `CKA_TOKEN`).
//!
//! A key's handle names the token, the object's `CKA_ID` and `CKA_LABEL`, and the
//! public key read when it was made. Signing hashes nothing on the token: Influxion
//! already has the digest, so ECDSA is `CKM_ECDSA` over it (r‖s from the token becomes
//! DER), RSA PKCS#1 v1.5 is `CKM_RSA_PKCS` over a DigestInfo built here, RSA-PSS is
//! `CKM_RSA_PKCS_PSS` with the digest's hash, MGF1 of the same hash and a salt as long
//! as the hash, and Ed25519 is `CKM_EDDSA` over the digest, as the software keystore
//! signs it. Every signature is verified against the pinned public key before it is
//! returned.
//!
//! Sessions: login is per token, not per session, so the pool logs in once and every
//! session of the pool may sign; concurrent signatures use different sessions.
//!
//! Modules: `C_Initialize` and `C_Finalize` act on the whole module in the process, so
//! the tokens of one module share one loaded module ([`Module`]); it is finalized only
//! when no token uses it any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use influxion_core::{
    BackendError, BoundKey, Digest, ExistingKey, GeneratedKey, KeyBackend, KeyType, SignAlgorithm,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The backend's name for a single token; `pkcs11:NAME` for one of several.
pub const NAME: &str = "pkcs11";

/// Which token of a module keys live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token's label (`CKA_LABEL` of the token info), the usual way to name it.
    Label(String),
    /// A slot id, for modules whose tokens share a label. The label found in the slot
    /// at start is what reconnection looks for afterwards (slot ids may change).
    Slot(u64),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token {l:?}"),
            TokenSelector::Slot(s) => write!(f, "the token in slot {s}"),
        }
    }
}

/// How to reach one token. The PIN never comes from a configuration file; the caller
/// reads it from the environment or a file and names that setting in `pin_setting`.
#[derive(Clone)]
pub struct TokenConfig {
    /// The backend's name, recorded with each of its keys: `pkcs11` or `pkcs11:NAME`.
    pub name: String,
    /// The vendor's PKCS#11 library.
    pub module: String,
    pub token: TokenSelector,
    pub pin: Zeroizing<String>,
    /// Where the PIN came from (`INFLUXION_PKCS11_PIN`), named when it is refused.
    pub pin_setting: String,
    /// Sessions in the pool, 1 to 64.
    pub pool: usize,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin_setting", &self.pin_setting)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Why the token could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("loading the PKCS#11 module {module}: {why}")]
    Module { module: String, why: String },
    #[error("no {0} is present")]
    NoToken(String),
    /// Not retried: a loop of wrong PINs locks the token.
    #[error("the token refused the user PIN ({setting}): {why}")]
    Pin { setting: String, why: String },
    #[error("the token: {0}")]
    Token(String),
}

/// One token, and a pool of sessions logged in on it. When the token goes away the
/// pool is dropped, operations answer "unavailable", and a background task loads the
/// module again (once no other token holds it), finds the token and logs in once more.
pub struct Pkcs11Backend {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TokenConfig,
    /// The token's label, read at start: handles record it, reconnection finds it.
    label: String,
    /// The token's serial number, read at start: reconnection finds only this token,
    /// never another one that carries the same label.
    serial: String,
    /// The live connection; `None` while the token is away.
    current: RwLock<Option<Arc<Connection>>>,
    reconnecting: AtomicBool,
    /// Why the token is away, for the answers given meanwhile.
    away: Mutex<String>,
}

/// A loaded, initialized module, shared by the tokens reached through it. Dropping the
/// last reference (connections and their sessions hold it) finalizes the module.
struct Module {
    context: Pkcs11,
    /// The tokens using it: when one cannot find its token here, the others check
    /// theirs, so a module whose tokens all went away is released and loaded afresh.
    users: Mutex<Vec<Weak<Inner>>>,
    /// Declared after `context`, so dropped after it: says the module is finalized.
    _finalized: Finalized,
}

/// Set once a module's context has been dropped, that is finalized: `C_Initialize` of
/// the same library must wait for it, or the old context's `C_Finalize` (which runs
/// after the last reference is gone, outside any lock) would finalize the new one.
#[derive(Clone, Default)]
struct Finalized(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Drop for Finalized {
    fn drop(&mut self) {
        // Only the module's own copy signals; the registry's copy just waits.
        if Arc::strong_count(&self.0) > 1 {
            if let Ok(mut done) = self.0 .0.lock() {
                *done = true;
                self.0 .1.notify_all();
            }
        }
    }
}

impl Finalized {
    /// Wait (up to 10 s) until the module this belonged to is finalized.
    fn wait(&self) {
        let (lock, cvar) = &*self.0;
        if let Ok(done) = lock.lock() {
            let _ = cvar.wait_timeout_while(done, Duration::from_secs(10), |d| !*d);
        }
    }
}

/// The modules loaded in this process, by canonical path. Process-wide because
/// `C_Initialize` is: a module loaded twice would be initialized twice and finalized
/// under its other users.
static MODULES: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Each module: the live one, if any, and the signal of its finalization.
type Registry = HashMap<String, (Weak<Module>, Finalized)>;

/// The token's slot and the sessions logged in on it.
struct Connection {
    slot: Slot,
    sessions: Mutex<Vec<Session>>,
    available: tokio::sync::Semaphore,
    module: Arc<Module>,
    /// Private key handles by (CKA_ID, CKA_LABEL). A handle any session of the
    /// application found is valid in all of them (PKCS#11 2.40, 2.4): signing skips
    /// C_FindObjects*, three calls (round trips on a network HSM) per signature.
    keys: Mutex<HashMap<(Vec<u8>, String), cryptoki::object::ObjectHandle>>,
}

impl Connection {
    /// The private key `id`/`label`, from the cache or found on the token.
    fn key_handle(
        &self,
        s: &Session,
        id: &[u8],
        label: &str,
    ) -> Result<cryptoki::object::ObjectHandle, BackendError> {
        let cache_key = (id.to_vec(), label.to_owned());
        if let Some(h) = self
            .keys
            .lock()
            .ok()
            .and_then(|k| k.get(&cache_key).copied())
        {
            return Ok(h);
        }
        let h = private_key(s, id, label)?;
        if let Ok(mut k) = self.keys.lock() {
            k.insert(cache_key, h);
        }
        Ok(h)
    }

    fn forget_key(&self, id: &[u8], label: &str) {
        if let Ok(mut k) = self.keys.lock() {
            k.remove(&(id.to_vec(), label.to_owned()));
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Handle {
    token: String,
    /// `CKA_ID`, hex.
    id: String,
    label: String,
    key_type: String,
    /// DER SubjectPublicKeyInfo, base64.
    spki: String,
    /// An imported key the token would let out, bound with `allow_extractable`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    extractable: bool,
}

fn crypto(what: impl std::fmt::Display) -> BackendError {
    BackendError::Crypto(what.to_string())
}

/// A token's error as the backend reports it: a token that went away is unavailable
/// (the caller may retry), anything else is an error of the operation.
fn token_error(e: cryptoki::error::Error) -> BackendError {
    use cryptoki::error::{Error, RvError};
    match e {
        Error::Pkcs11(
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::TokenNotPresent
            | RvError::UserNotLoggedIn,
            _,
        ) => BackendError::Unavailable(format!("the PKCS#11 token: {e}")),
        other => crypto(format!("the PKCS#11 token: {other}")),
    }
}

/// DER OIDs of the named curves, as `CKA_EC_PARAMS`.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
/// Ed25519 as SoftHSM and PKCS#11 3.0 name it: the printable string "edwards25519".
const ED25519_PARAMS: &[u8] = &[
    0x13, 0x0c, b'e', b'd', b'w', b'a', b'r', b'd', b's', b'2', b'5', b'5', b'1', b'9',
];

/// DigestInfo prefixes (RFC 8017 section 9.2, note 1) for PKCS#1 v1.5 over a digest.
fn digest_info_prefix(alg: SignAlgorithm) -> Option<&'static [u8]> {
    Some(match alg {
        SignAlgorithm::Rs256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        SignAlgorithm::Rs384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        SignAlgorithm::Rs512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
        _ => return None,
    })
}

impl Pkcs11Backend {
    /// Load the module (or share it with tokens already open on it), find the token,
    /// open `pool` sessions and log in once. A wrong PIN fails here and is not retried.
    pub fn open(cfg: TokenConfig) -> Result<Self, OpenError> {
        let mut cfg = cfg;
        cfg.pool = cfg.pool.clamp(1, 64);
        let (connection, label, serial) = connect(
            &cfg.module,
            &cfg.token,
            None,
            &cfg.pin,
            &cfg.pin_setting,
            cfg.pool,
        )?;
        let inner = Arc::new(Inner {
            cfg,
            label,
            serial,
            current: RwLock::new(None),
            reconnecting: AtomicBool::new(false),
            away: Mutex::new(String::new()),
        });
        inner.attach(connection);
        Ok(Self { inner })
    }

    /// Whether the token is connected now (false while it is away and the backend
    /// reconnects).
    pub fn connected(&self) -> bool {
        self.inner.connection().is_some()
    }

    /// The token's label (read from the token at start when it was chosen by slot).
    pub fn token_label(&self) -> &str {
        &self.inner.label
    }

    /// The token's serial number, read at start: two backends on one token are a
    /// configuration error the caller can see.
    pub fn token_serial(&self) -> &str {
        &self.inner.serial
    }

    /// Run `f` on a session of the pool, off the async workers (tokens block). A token
    /// fault drops the pool and starts the reconnection.
    async fn with_session<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Session, &Connection) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let Some(conn) = self.inner.connection() else {
            return Err(self.inner.away_error());
        };
        let _permit = conn
            .available
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("the session pool is closed".into()))?;
        let session = conn
            .sessions
            .lock()
            .map_err(|_| crypto("session pool poisoned"))?
            .pop()
            .ok_or_else(|| crypto("no session free despite a permit"))?;
        let probe = conn.clone();
        let (session, result) = tokio::task::spawn_blocking(move || {
            let mut r = f(&session, &probe);
            // SoftHSM, when its token directory goes, answers with no objects (or a
            // general error for a cached handle) rather than "token not present": a
            // failure on a token whose info cannot be read is a token away, not a
            // deleted key or a bad request.
            if let Err(BackendError::Refused(why) | BackendError::Crypto(why)) = &r {
                if let Err(e) = probe.module.context.get_token_info(probe.slot) {
                    r = Err(BackendError::Unavailable(format!(
                        "the PKCS#11 token does not answer ({e}) and {why}"
                    )));
                }
            }
            (session, r)
        })
        .await
        .map_err(crypto)?;
        if let Err(BackendError::Unavailable(why)) = &result {
            drop(session);
            self.inner.token_away(&conn, why);
            return result;
        }
        if let Ok(mut pool) = conn.sessions.lock() {
            pool.push(session);
        }
        result
    }

    fn handle(&self, key_type: KeyType, handle: &[u8]) -> Result<(Handle, Vec<u8>), BackendError> {
        let h: Handle = serde_json::from_slice(handle)
            .map_err(|_| crypto("the PKCS#11 handle does not parse"))?;
        if h.key_type != key_type.as_str() {
            return Err(crypto("the PKCS#11 handle is of another key type"));
        }
        if h.token != self.inner.label {
            return Err(BackendError::Unavailable(format!(
                "the key is on token {:?}, backend {} has {:?}",
                h.token, self.inner.cfg.name, self.inner.label
            )));
        }
        let spki = B64
            .decode(&h.spki)
            .map_err(|_| crypto("the PKCS#11 handle's public key does not parse"))?;
        Ok((h, spki))
    }
}

/// The registry's key for the library at `path`: two spellings of one library (a
/// symlink) are one module to the dynamic loader.
fn module_key(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_owned())
}

/// The module at `path`, loaded and initialized once for the process and shared.
fn load_module(path: &str) -> Result<Arc<Module>, OpenError> {
    let key = module_key(path);
    let mut modules = MODULES
        .lock()
        .map_err(|_| OpenError::Token("the module registry is poisoned".into()))?;
    if let Some((weak, finalized)) = modules.get(&key) {
        if let Some(m) = weak.upgrade() {
            return Ok(m);
        }
        // The last user is gone; its C_Finalize may still be running.
        finalized.wait();
    }
    let context = Pkcs11::new(path).map_err(|e| OpenError::Module {
        module: path.to_owned(),
        why: e.to_string(),
    })?;
    context
        .initialize(CInitializeArgs::OsThreads)
        .map_err(|e| OpenError::Module {
            module: path.to_owned(),
            why: format!("C_Initialize: {e}"),
        })?;
    let finalized = Finalized::default();
    let module = Arc::new(Module {
        context,
        users: Mutex::new(Vec::new()),
        _finalized: finalized.clone(),
    });
    modules.retain(|_, (m, _)| m.strong_count() > 0);
    modules.insert(key, (Arc::downgrade(&module), finalized));
    Ok(module)
}

/// Find the token on the (shared) module, open `pool` sessions, log in once. Returns
/// the connection and the token's label.
fn connect(
    module_path: &str,
    token: &TokenSelector,
    serial: Option<&str>,
    pin: &Zeroizing<String>,
    pin_setting: &str,
    pool: usize,
) -> Result<(Connection, String, String), OpenError> {
    let module = load_module(module_path)?;
    let (slot, label, serial) = find_token(&module.context, token, serial)?;
    let mut sessions = Vec::with_capacity(pool);
    for i in 0..pool {
        let s = module
            .context
            .open_rw_session(slot)
            .map_err(|e| OpenError::Token(e.to_string()))?;
        if i == 0 {
            match s.login(UserType::User, Some(&AuthPin::new(pin.as_str().into()))) {
                Ok(()) => {}
                // Login is per token: another backend of this process (or a session
                // left from before) logged in already.
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => {}
                Err(
                    e @ cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::PinIncorrect
                        | cryptoki::error::RvError::PinInvalid
                        | cryptoki::error::RvError::PinLenRange
                        | cryptoki::error::RvError::PinExpired
                        | cryptoki::error::RvError::PinLocked,
                        _,
                    ),
                ) => {
                    return Err(OpenError::Pin {
                        setting: pin_setting.to_owned(),
                        why: e.to_string(),
                    })
                }
                Err(other) => return Err(OpenError::Token(other.to_string())),
            }
        }
        sessions.push(s);
    }
    Ok((
        Connection {
            slot,
            sessions: Mutex::new(sessions),
            available: tokio::sync::Semaphore::new(pool),
            module,
            keys: Mutex::new(HashMap::new()),
        },
        label,
        serial,
    ))
}

impl Inner {
    fn connection(&self) -> Option<Arc<Connection>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// Make `c` the live connection and register with its module.
    fn attach(self: &Arc<Self>, c: Connection) {
        if let Ok(mut users) = c.module.users.lock() {
            users.retain(|u| u.strong_count() > 0 && !std::ptr::eq(u.as_ptr(), Arc::as_ptr(self)));
            users.push(Arc::downgrade(self));
        }
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(c));
        }
    }

    fn away_error(&self) -> BackendError {
        let why = self.away.lock().map(|w| w.clone()).unwrap_or_default();
        BackendError::Unavailable(format!(
            "the PKCS#11 token {:?} ({}) is away; reconnecting in the background ({why})",
            self.label, self.cfg.name
        ))
    }

    /// `conn` failed with a token fault: drop it (once) and reconnect in the
    /// background.
    fn token_away(self: &Arc<Self>, conn: &Arc<Connection>, why: &str) {
        if let Ok(mut current) = self.current.write() {
            match current.as_ref() {
                Some(c) if Arc::ptr_eq(c, conn) => *current = None,
                _ => return, // another request already dropped it
            }
        }
        if let Ok(mut away) = self.away.lock() {
            *away = why.to_owned();
        }
        tracing::warn!(backend = %self.cfg.name, token = %self.label, error = why, "PKCS#11 token away; reconnecting");
        if self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let old = Arc::downgrade(conn);
        let inner = self.clone();
        std::thread::spawn(move || inner.reconnect(old));
    }

    /// Whether the live connection's token still answers; if not, it is away. Asked
    /// when another token of the same module cannot find its own.
    fn probe(self: &Arc<Self>) {
        if let Some(conn) = self.connection() {
            if let Err(e) = conn.module.context.get_token_info(conn.slot) {
                self.token_away(&conn, &format!("the token does not answer: {e}"));
            }
        }
    }

    /// Wait until the old connection's last session is gone, then find the token again
    /// until it is back. The module is loaded afresh when no other token holds it
    /// (SoftHSM, for one, sees a token directory again only then). A refused PIN ends
    /// the attempts: retrying a wrong PIN would lock the token.
    fn reconnect(self: Arc<Self>, old: Weak<Connection>) {
        let mut waited = Duration::ZERO;
        while old.strong_count() > 0 && waited < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        let mut delay = Duration::from_millis(250);
        let by_label = TokenSelector::Label(self.label.clone());
        loop {
            let c = &self.cfg;
            match connect(
                &c.module,
                &by_label,
                Some(&self.serial),
                &c.pin,
                &c.pin_setting,
                c.pool,
            ) {
                Ok((conn, _, _)) => {
                    // Cleared before the connection is live: a fault on it from then on
                    // starts a new reconnection instead of finding this one still running.
                    self.reconnecting.store(false, Ordering::SeqCst);
                    self.attach(conn);
                    tracing::info!(backend = %c.name, token = %self.label, "PKCS#11 token back; logged in again");
                    return;
                }
                Err(e @ OpenError::Pin { .. }) => {
                    tracing::error!(backend = %c.name, token = %self.label, error = %e, "the token refused the PIN on reconnection; not retrying");
                    if let Ok(mut away) = self.away.lock() {
                        *away = format!("{e}; restart with the right PIN");
                    }
                    break;
                }
                Err(e) => {
                    if let Ok(mut away) = self.away.lock() {
                        *away = e.to_string();
                    }
                    self.probe_module_peers();
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.reconnecting.store(false, Ordering::SeqCst);
    }

    /// Ask the other tokens of this module whether theirs still answer, so a module
    /// whose tokens are all gone is not held by one that has not noticed yet.
    fn probe_module_peers(self: &Arc<Self>) {
        let peers: Vec<Arc<Inner>> = MODULES
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&module_key(&self.cfg.module))
                    .and_then(|(weak, _)| weak.upgrade())
            })
            .and_then(|module| {
                module
                    .users
                    .lock()
                    .ok()
                    .map(|u| u.iter().filter_map(Weak::upgrade).collect())
            })
            .unwrap_or_default();
        for peer in peers.iter().filter(|p| !Arc::ptr_eq(p, self)) {
            peer.probe();
        }
    }
}

/// The token `token` names, and (when reconnecting) whose serial number is `serial`:
/// its slot, label and serial number. Two tokens matching a label is an error, not a
/// choice: keys must never land on a token nobody named.
fn find_token(
    context: &Pkcs11,
    token: &TokenSelector,
    serial: Option<&str>,
) -> Result<(Slot, String, String), OpenError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| OpenError::Token(e.to_string()))?;
    let mut hits = Vec::new();
    for slot in slots {
        if let Ok(info) = context.get_token_info(slot) {
            let label = info.label().trim_end().to_owned();
            let number = info.serial_number().trim_end().to_owned();
            let named = match token {
                TokenSelector::Label(l) => *l == label,
                TokenSelector::Slot(id) => slot.id() == *id,
            };
            if named && serial.is_none_or(|s| s == number) {
                hits.push((slot, label, number));
            }
        }
    }
    match hits.len() {
        0 => Err(OpenError::NoToken(token.to_string())),
        1 => Ok(hits.remove(0)),
        _ => Err(OpenError::Token(format!(
            "several tokens are {token} (slots {}): name one by its slot id",
            hits.iter()
                .map(|(s, _, _)| s.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The private key object with `CKA_ID` `id` and `CKA_LABEL` `label`: both, so a
/// handle changed in either part finds nothing.
fn private_key(
    session: &Session,
    id: &[u8],
    label: &str,
) -> Result<cryptoki::object::ObjectHandle, BackendError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(token_error)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(BackendError::Refused(format!(
            "the token has no private key with id {}",
            hex::encode(id)
        ))),
        _ => Err(crypto(format!(
            "the token has several private keys with id {}",
            hex::encode(id)
        ))),
    }
}

fn unfit(why: impl Into<String>) -> BackendError {
    BackendError::Unfit(why.into())
}

/// An existing private key by label or id: exactly one, able to sign, of a type
/// Influxion signs with, with its public key object beside it (same id). Returns its
/// handle (the object's id and label, whether it is extractable), type and public key.
fn find_existing(
    s: &Session,
    token: String,
    label: Option<String>,
    id: Option<Vec<u8>>,
    allow_extractable: bool,
) -> Result<(Handle, KeyType, Vec<u8>), BackendError> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    let named = match (&label, &id) {
        (Some(l), None) => {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
            format!("label {l:?}")
        }
        (None, Some(i)) => {
            template.push(Attribute::Id(i.clone()));
            format!("id {}", hex::encode(i))
        }
        _ => return Err(unfit("name the token key by exactly one of label and id")),
    };
    let found = s.find_objects(&template).map_err(token_error)?;
    let key = match found.as_slice() {
        [one] => *one,
        [] => return Err(unfit(format!("the token has no private key with {named}"))),
        _ => {
            return Err(unfit(format!(
                "the token has several private keys with {named}; name it by id"
            )))
        }
    };
    let attrs = s
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::Sign,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::EcParams,
                AttributeType::Modulus,
            ],
        )
        .map_err(token_error)?;
    let (mut ck_type, mut obj_id, mut obj_label) = (None, Vec::new(), String::new());
    let (mut sign, mut sensitive, mut extractable) = (false, false, true);
    let (mut params, mut modulus_bits) = (None, 0usize);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => ck_type = Some(t),
            Attribute::Id(i) => obj_id = i,
            Attribute::Label(l) => obj_label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Sign(b) => sign = b,
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Modulus(m) => modulus_bits = m.len() * 8,
            _ => {}
        }
    }
    if !sign {
        return Err(unfit(format!(
            "the token key with {named} may not sign (CKA_SIGN is false)"
        )));
    }
    let lets_out = extractable || !sensitive;
    if lets_out && !allow_extractable {
        return Err(unfit(format!(
            "the token key with {named} can leave the token (CKA_EXTRACTABLE={extractable}, \
             CKA_SENSITIVE={sensitive}); import it with --allow-extractable to accept that"
        )));
    }
    let key_type = match (ck_type, params.as_deref(), modulus_bits) {
        (Some(t), Some(P256_OID), _) if t == CkKeyType::EC => KeyType::EcP256,
        (Some(t), Some(P384_OID), _) if t == CkKeyType::EC => KeyType::EcP384,
        (Some(t), Some(_), _) if t == CkKeyType::EC_EDWARDS => KeyType::Ed25519,
        (Some(t), _, 2048) if t == CkKeyType::RSA => KeyType::Rsa2048,
        (Some(t), _, 3072) if t == CkKeyType::RSA => KeyType::Rsa3072,
        (Some(t), _, 4096) if t == CkKeyType::RSA => KeyType::Rsa4096,
        _ => {
            return Err(unfit(format!(
                "the token key with {named} is of a type Influxion does not sign with \
                 (it signs with EC P-256, P-384, Ed25519, RSA-2048, RSA-3072 and RSA-4096)"
            )))
        }
    };
    if key_type == KeyType::Ed25519 && params.as_deref() != Some(ED25519_PARAMS) {
        // CKA_EC_PARAMS of an Edwards key may also be the OID 1.3.101.112.
        if params.as_deref() != Some(&[0x06, 0x03, 0x2b, 0x65, 0x70][..]) {
            return Err(unfit(format!(
                "the token key with {named} is not on edwards25519"
            )));
        }
    }
    let public = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(obj_id.clone()),
        ])
        .map_err(token_error)?;
    let [public] = public.as_slice() else {
        return Err(unfit(format!(
            "the token has no single public key with the id {} of the key with {named}",
            hex::encode(&obj_id)
        )));
    };
    let spki = spki_of(s, key_type, *public)?;
    // Imported keys are found again by id and label, as generated ones are.
    let again = private_key(s, &obj_id, &obj_label)?;
    if again != key {
        return Err(unfit(format!(
            "the token key with {named} is not the only one with its id and label"
        )));
    }
    let handle = Handle {
        token,
        id: hex::encode(obj_id),
        label: obj_label,
        key_type: key_type.as_str().to_owned(),
        spki: B64.encode(&spki),
        extractable: lets_out,
    };
    Ok((handle, key_type, spki))
}

/// The public key of a generated pair as DER SubjectPublicKeyInfo.
fn spki_of(
    session: &Session,
    key_type: KeyType,
    public: cryptoki::object::ObjectHandle,
) -> Result<Vec<u8>, BackendError> {
    use p256::pkcs8::EncodePublicKey as _;
    let der = match key_type {
        KeyType::EcP256 | KeyType::EcP384 | KeyType::Ed25519 => {
            let attrs = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(token_error)?;
            let Some(Attribute::EcPoint(point)) = attrs.into_iter().next() else {
                return Err(crypto("the token returned no EC point"));
            };
            // CKA_EC_POINT is a DER OCTET STRING around the point; a few tokens give
            // the bare point.
            let point = unwrap_octet_string(&point).unwrap_or(&point).to_vec();
            match key_type {
                KeyType::EcP256 => p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| crypto("the token's P-256 point is not on the curve"))?
                    .to_public_key_der(),
                KeyType::EcP384 => p384::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| crypto("the token's P-384 point is not on the curve"))?
                    .to_public_key_der(),
                _ => {
                    let bytes: [u8; 32] = point
                        .as_slice()
                        .try_into()
                        .map_err(|_| crypto("the token's Ed25519 key is not 32 bytes"))?;
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                        .map_err(|_| crypto("the token's Ed25519 key is not valid"))?
                        .to_public_key_der()
                }
            }
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let attrs = session
                .get_attributes(
                    public,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(token_error)?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            let (Some(n), Some(e)) = (n, e) else {
                return Err(crypto("the token returned no RSA public key"));
            };
            rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|_| crypto("the token's RSA key is not valid"))?
            .to_public_key_der()
        }
    };
    Ok(der.map_err(crypto)?.into_vec())
}

/// The contents of a short DER OCTET STRING.
fn unwrap_octet_string(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => Some(rest),
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => Some(rest),
        _ => None,
    }
}

fn hash_mechanism(alg: SignAlgorithm) -> Option<(MechanismType, PkcsMgfType, u64)> {
    Some(match alg {
        SignAlgorithm::Ps256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
        SignAlgorithm::Ps384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
        SignAlgorithm::Ps512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
        _ => return None,
    })
}

#[async_trait::async_trait]
impl KeyBackend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    async fn generate(
        &self,
        key_id: &str,
        key_type: KeyType,
    ) -> Result<GeneratedKey, BackendError> {
        let id = uuid_bytes(key_id);
        let label = format!("influxion-{key_id}");
        let token = self.inner.label.clone();
        let (id2, label2) = (id.clone(), label.clone());
        let (spki, id, label) = self
            .with_session(move |s, _| {
                let common = |public: bool| {
                    vec![
                        Attribute::Token(true),
                        Attribute::Id(id2.clone()),
                        Attribute::Label(label2.clone().into_bytes()),
                        Attribute::Private(!public),
                    ]
                };
                let mut public = common(true);
                public.push(Attribute::Verify(true));
                let mut private = common(false);
                private.extend([
                    Attribute::Sign(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ]);
                let mechanism = match key_type {
                    KeyType::EcP256 | KeyType::EcP384 => {
                        public.push(Attribute::KeyType(CkKeyType::EC));
                        public.push(Attribute::EcParams(
                            if key_type == KeyType::EcP256 {
                                P256_OID
                            } else {
                                P384_OID
                            }
                            .to_vec(),
                        ));
                        Mechanism::EccKeyPairGen
                    }
                    KeyType::Ed25519 => {
                        public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                        Mechanism::EccEdwardsKeyPairGen
                    }
                    KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                        let bits: u64 = match key_type {
                            KeyType::Rsa2048 => 2048,
                            KeyType::Rsa3072 => 3072,
                            _ => 4096,
                        };
                        public.push(Attribute::ModulusBits(bits.into()));
                        public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                        Mechanism::RsaPkcsKeyPairGen
                    }
                };
                let (pub_handle, _) =
                    s.generate_key_pair(&mechanism, &public, &private)
                        .map_err(|e| match e {
                            cryptoki::error::Error::Pkcs11(
                                cryptoki::error::RvError::MechanismInvalid,
                                _,
                            ) => BackendError::Unsupported(key_type),
                            other => token_error(other),
                        })?;
                Ok((spki_of(s, key_type, pub_handle)?, id2, label2))
            })
            .await?;
        let handle = Handle {
            token,
            id: hex::encode(id),
            label,
            key_type: key_type.as_str().to_owned(),
            spki: B64.encode(&spki),
            extractable: false,
        };
        Ok(GeneratedKey {
            handle: serde_json::to_vec(&handle).map_err(crypto)?,
            public_key_der: spki,
        })
    }

    async fn sign(
        &self,
        _key_id: &str,
        key_type: KeyType,
        handle: &[u8],
        digest: &Digest,
    ) -> Result<Vec<u8>, BackendError> {
        let (h, spki) = self.handle(key_type, handle)?;
        let alg = digest.algorithm();
        if !key_type.allows(alg) {
            return Err(BackendError::AlgorithmMismatch);
        }
        let key_id =
            hex::decode(&h.id).map_err(|_| crypto("the PKCS#11 handle's id is not hex"))?;
        for attempt in 0..2 {
            let id = key_id.clone();
            let d = digest.as_bytes().to_vec();
            let label = h.label.clone();
            let raw = self
                .with_session(move |s, conn| {
                    let key = conn.key_handle(s, &id, &label)?;
                    let sign = |m: &Mechanism, data: &[u8]| match s.sign(m, key, data) {
                        // The object was replaced since its handle was cached: find it again.
                        Err(cryptoki::error::Error::Pkcs11(
                            cryptoki::error::RvError::ObjectHandleInvalid
                            | cryptoki::error::RvError::KeyHandleInvalid,
                            _,
                        )) => {
                            conn.forget_key(&id, &label);
                            let key = conn.key_handle(s, &id, &label)?;
                            s.sign(m, key, data).map_err(token_error)
                        }
                        r => r.map_err(token_error),
                    };
                    match (key_type, alg) {
                        (KeyType::EcP256 | KeyType::EcP384, _) => sign(&Mechanism::Ecdsa, &d),
                        (KeyType::Ed25519, _) => {
                            let params = cryptoki::mechanism::eddsa::EddsaParams::new(
                                cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
                            );
                            sign(&Mechanism::Eddsa(params), &d)
                        }
                        (_, alg) => match (digest_info_prefix(alg), hash_mechanism(alg)) {
                            (Some(prefix), _) => {
                                let mut info = prefix.to_vec();
                                info.extend_from_slice(&d);
                                sign(&Mechanism::RsaPkcs, &info)
                            }
                            (None, Some((hash_alg, mgf, s_len))) => {
                                let params = PkcsPssParams {
                                    hash_alg,
                                    mgf,
                                    s_len: s_len.into(),
                                };
                                sign(&Mechanism::RsaPkcsPss(params), &d)
                            }
                            _ => Err(BackendError::AlgorithmMismatch),
                        },
                    }
                })
                .await?;
            let sig = match key_type {
                KeyType::EcP256 | KeyType::EcP384 => {
                    influxion_verify::ecdsa_raw_to_der(key_type, &raw).ok_or_else(|| {
                        crypto("the token's ECDSA signature is not r‖s of the curve's size")
                    })?
                }
                _ => raw,
            };
            if let Ok(true) = influxion_verify::verify(key_type, &spki, digest, &sig) {
                return Ok(sig);
            }
            // A cached handle may name another object by now (the key deleted and made
            // again under the same id and label): forget it and find the key once more.
            if attempt == 0 {
                if let Some(conn) = self.inner.connection() {
                    conn.forget_key(&key_id, &h.label);
                }
            }
        }
        Err(crypto(format!(
            "the signature from token {} key {} does not verify with the key's public key",
            h.token, h.id
        )))
    }

    async fn check(
        &self,
        _key_id: &str,
        key_type: KeyType,
        handle: &[u8],
    ) -> Result<(), BackendError> {
        let (h, spki) = self.handle(key_type, handle)?;
        let id = hex::decode(&h.id).map_err(|_| crypto("the PKCS#11 handle's id is not hex"))?;
        let label = h.label.clone();
        self.with_session(move |s, _| {
            private_key(s, &id, &label)?;
            // The token's public key must be the one the record pinned.
            let public = s
                .find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(id.clone()),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(token_error)?;
            let [public] = public.as_slice() else {
                return Err(BackendError::Refused(format!(
                    "the token has no single public key with id {}",
                    hex::encode(&id)
                )));
            };
            if spki_of(s, key_type, *public)? != spki {
                return Err(crypto(format!(
                    "the token's key {} is not the key this record was made with",
                    hex::encode(&id)
                )));
            }
            Ok(())
        })
        .await
    }

    fn describe(&self, handle: &[u8]) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Ok(h) = serde_json::from_slice::<Handle>(handle) {
            m.insert("token".into(), h.token.into());
            m.insert("key_id".into(), h.id.into());
            m.insert("label".into(), h.label.into());
            if h.extractable {
                m.insert("extractable".into(), true.into());
            }
        }
        m
    }

    async fn bind(&self, _key_id: &str, existing: &ExistingKey) -> Result<BoundKey, BackendError> {
        let ExistingKey::TokenKey {
            label,
            id,
            allow_extractable,
        } = existing.clone()
        else {
            return Err(BackendError::Unfit(format!(
                "the PKCS#11 backend binds token keys only, not {existing:?}"
            )));
        };
        let token = self.inner.label.clone();
        let (handle, key_type, spki) = self
            .with_session(move |s, _| find_existing(s, token, label, id, allow_extractable))
            .await?;
        Ok(BoundKey {
            key_type,
            handle: serde_json::to_vec(&handle).map_err(crypto)?,
            public_key_der: spki,
            certificate_chain: Vec::new(),
        })
    }
}

/// `CKA_ID` of a key: its Influxion key id's bytes (a UUID, without dashes, 16 bytes),
/// so the object on the token and the record name each other.
fn uuid_bytes(key_id: &str) -> Vec<u8> {
    let hexed: String = key_id.chars().filter(char::is_ascii_hexdigit).collect();
    match hex::decode(&hexed) {
        Ok(b) if !b.is_empty() && hexed.len() == key_id.chars().filter(|c| *c != '-').count() => b,
        _ => key_id.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_signals_its_finalization_when_its_context_is_gone() {
        let registry = Finalized::default();
        let held_by_module = registry.clone();
        let done = |f: &Finalized| f.0 .0.lock().map(|d| *d).unwrap_or(false);
        assert!(!done(&registry));
        drop(held_by_module);
        assert!(
            done(&registry),
            "the module's copy signals when it is dropped"
        );
        registry.wait(); // returns at once
                         // The registry's own copy, dropped alone, signals nothing.
        let lone = Finalized::default();
        let probe = Arc::downgrade(&lone.0);
        drop(lone);
        assert!(probe.upgrade().is_none());
    }
}
