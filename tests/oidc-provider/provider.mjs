// Loopback OIDC / OAuth2 provider for Influxion integration tests.
//
// Wraps panva's oidc-provider (v9) and shapes its JWT access tokens like
// Microsoft Entra ID v2 tokens. See README.md for the config format.
//
// stdout carries exactly one line, the ready line; everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { fileURLToPath } from 'node:url';

// oidc-provider prints "NOTICE" lines with console.info (i.e. stdout). Route every
// console method to stderr *before* loading it so stdout stays machine-readable.
for (const m of ['log', 'info', 'debug']) console[m] = (...a) => console.error(...a);

// Installed first so a signal that arrives during startup also ends the process.
let server;
function shutdown(signal) {
  // Nothing to flush (in-memory state): stop accepting, drop keep-alive sockets, exit.
  console.error(`[oidc] ${signal}, shutting down`);
  server?.close();
  server?.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
const { default: Provider, errors, interactionPolicy } = await import('oidc-provider');

// ---------------------------------------------------------------- config
const configPath = process.env.OIDC_CONFIG
  || fileURLToPath(new URL('./config.example.json', import.meta.url));
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const port = Number(process.env.OIDC_PORT || 0);
const audience = cfg.audience;
const tenantId = cfg.tenant_id;
const apiScopes = String(cfg.scope || '').split(' ').filter(Boolean);
const users = cfg.users || {}; // optional: { "<login>": { "roles": [...], "name": "..." } }
const userInfo = (login) => (Object.hasOwn(users, login) ? users[login] : {});
const autoConsent = cfg.auto_consent !== false; // default: never show the consent page
const accessTokenTyp = cfg.access_token_typ || 'JWT'; // Entra uses "JWT"; RFC 9068 says "at+jwt"
const accessTokenTtl = Number(cfg.access_token_ttl || 3600);
// Entra puts a user's app roles (and name) in the ID token too; with this on, so do we.
const idTokenClaims = cfg.id_token_claims === true;
// Entra v2: clients ask for the Application ID URI (api://<id>), the token's aud is the
// bare client id. Resource indicators must be absolute URIs, so `audience` stays the
// URI and this names the aud the tokens carry.
const accessTokenAudience = cfg.access_token_audience || audience;
if (!audience || !tenantId) throw new Error('config needs "audience" and "tenant_id"');

const rolesByClient = new Map((cfg.clients || []).map((c) => [c.client_id, c.roles || []]));

// Stable, UUID-looking id derived from a string (Entra "oid" is a GUID).
function stableUuid(kind, id) {
  const h = crypto.createHash('sha256').update(`influxion-test:${kind}:${id}`).digest('hex');
  const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

// ---------------------------------------------------------------- keys
// Keys are generated as PEM and re-imported before the JWK export: on Node 20,
// exporting a JWK straight from generateKeyPairSync's KeyObject can deadlock when a GC
// during the export runs the key-generation job's destructor (it takes the mutex the
// export holds; seen as a provider that never becomes ready, main thread in
// KeyGenJob::~KeyGenJob).
function jwkOf(type, options) {
  const encoding = { privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } };
  const { privateKey } = crypto.generateKeyPairSync(type, { ...options, ...encoding });
  return crypto.createPrivateKey(privateKey).export({ format: 'jwk' });
}

function generateSigningKeys() {
  const rsa = jwkOf('rsa', { modulusLength: 2048 });
  const ec = jwkOf('ec', { namedCurve: 'P-256' });
  // kid is left out on purpose: oidc-provider sets it to the RFC 7638 thumbprint.
  return { keys: [{ ...rsa, use: 'sig', alg: 'RS256' }, { ...ec, use: 'sig', alg: 'ES256' }] };
}
const jwks = cfg.signing_keys || generateSigningKeys();

// ---------------------------------------------------------------- clients
function toClientMetadata(entry) {
  // roles / public are ours; every other key is passed through as client metadata,
  // so a test can override grant_types etc. directly in the config.
  const { roles, public: isPublic, public_key_pem: publicKeyPem, ...meta } = entry;
  // A client authenticating with private_key_jwt may be given as a PEM public key.
  if (publicKeyPem) meta.jwks = { keys: [crypto.createPublicKey(publicKeyPem).export({ format: 'jwk' })] };
  const hasRedirect = Array.isArray(meta.redirect_uris) && meta.redirect_uris.length > 0;
  let base;
  if (isPublic) {
    // Native app (RFC 8252): loopback redirect URIs match on any port, PKCE is required.
    base = {
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
    };
  } else if (meta.jwks || meta.jwks_uri) {
    base = {
      token_endpoint_auth_method: 'private_key_jwt',
      grant_types: hasRedirect ? ['client_credentials', 'authorization_code', 'refresh_token'] : ['client_credentials'],
      response_types: hasRedirect ? ['code'] : [],
    };
  } else {
    // A client registered with client_secret_basic also accepts client_secret_post
    // (oidc-provider treats the two as interchangeable), so both curl styles work.
    base = {
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: hasRedirect ? ['client_credentials', 'authorization_code', 'refresh_token'] : ['client_credentials'],
      response_types: hasRedirect ? ['code'] : [],
    };
  }
  return { ...base, ...meta };
}

// ---------------------------------------------------------------- resource server (the API)
const resourceServerInfo = {
  // Short form ("access_as_user") and Entra's full form ("api://x/access_as_user") are
  // both accepted; "scp" is always emitted in the short form.
  scope: [...apiScopes, ...apiScopes.map((s) => `${audience}/${s}`)].join(' '),
  audience,
  accessTokenFormat: 'jwt',
  accessTokenTTL: accessTokenTtl,
  jwt: { sign: { alg: 'RS256' } },
};
const stripAudiencePrefix = (s) => (s.startsWith(`${audience}/`) ? s.slice(audience.length + 1) : s);

// Shape access tokens like Entra ID v2 tokens.
async function entraCustomizer(ctx, token, jwt) {
  const p = jwt.payload;
  const clientId = token.clientId;
  const authMethod = ctx?.oidc?.client?.clientAuthMethod;
  p.ver = '2.0';
  p.tid = tenantId;
  p.azp = clientId;
  p.azpacr = authMethod === 'none' ? '0' : authMethod === 'private_key_jwt' ? '2' : '1';
  p.aud = accessTokenAudience;
  p.nbf = p.iat;
  delete p.client_id; // Entra v2 has azp, not client_id

  if (token.kind === 'ClientCredentials') {
    // App-only token: no scope, roles from the client config.
    const oid = stableUuid('client', clientId);
    p.idtyp = 'app';
    p.oid = oid;
    p.sub = oid;
    const roles = rolesByClient.get(clientId) || [];
    if (roles.length) p.roles = roles; else delete p.roles;
  } else {
    // Delegated token (a person): scp instead of scope.
    const accountId = token.accountId;
    const scp = [...new Set(String(p.scope || '').split(' ').filter(Boolean).map(stripAudiencePrefix))]
      .filter((s) => apiScopes.includes(s));
    const oid = stableUuid('user', accountId);
    p.idtyp = 'user';
    p.oid = oid;
    p.sub = oid;
    p.name = userInfo(accountId).name || accountId;
    p.preferred_username = accountId;
    if (scp.length) p.scp = scp.join(' ');
    const roles = userInfo(accountId).roles || [];
    if (roles.length) p.roles = roles;
  }
  delete p.scope;
  jwt.header = { typ: accessTokenTyp };
}

// ---------------------------------------------------------------- interactions
// Auto-grant everything requested so an authenticated person never sees a consent page
// (login page only). Native clients normally get a mandatory consent prompt; drop it too.
async function loadExistingGrantAll(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  const grant = (grantId && await oidc.provider.Grant.find(grantId))
    || new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  if (oidc.claims) grant.addOIDCClaims(Object.keys({ ...oidc.claims.id_token, ...oidc.claims.userinfo }));
  for (const [indicator, rs] of Object.entries(oidc.resourceServers)) {
    grant.addResourceScope(indicator, [...oidc.requestParamScopes].filter((s) => rs.scopes.has(s)).join(' '));
  }
  await grant.save();
  return grant;
}
const policy = interactionPolicy.base();
if (autoConsent) policy.get('consent').checks.remove('native_client_prompt');

// ---------------------------------------------------------------- server + provider
server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: (cfg.clients || []).map(toClientMetadata),
  jwks,
  cookies: { keys: ['influxion-test-only-cookie-key'] },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  ...(idTokenClaims ? { conformIdTokenClaims: false } : {}),
  claims: {
    openid: idTokenClaims ? ['sub', 'roles', 'tid', 'oid', 'ver'] : ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Any login is accepted (devInteractions page); the account id is the login name.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: userInfo(sub).name || sub,
          preferred_username: sub,
          email: sub.includes('@') ? sub : `${sub}@example.test`,
          email_verified: true,
          // Entra ID tokens carry the tenant, the person's object id and the version.
          ...(idTokenClaims ? { tid: tenantId, oid: stableUuid('user', sub), ver: '2.0' } : {}),
          ...(idTokenClaims && userInfo(sub).roles?.length ? { roles: userInfo(sub).roles } : {}),
        };
      },
    };
  },
  ...(autoConsent ? { loadExistingGrant: loadExistingGrantAll } : {}),
  // oidc-provider drops offline_access unless prompt=consent was sent (which forces the
  // consent page). Like Entra, hand out a refresh token whenever the client may use one,
  // and don't tie tokens to the login session.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // "rotate_refresh_tokens": every refresh spends the token it used; spending one twice
  // is refused (and revokes the grant), as strict providers do.
  ...(cfg.rotate_refresh_tokens ? { rotateRefreshToken: () => true } : {}),
  expiresWithSession: async () => false,
  interactions: { policy },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // No `resource` parameter needed: every token is for the configured API.
      defaultResource: async (ctx, client, oneOf) => (oneOf ? (oneOf.includes(audience) ? audience : oneOf[0]) : audience),
      // Authorization-code/refresh tokens are for the API even when `openid` was requested.
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) throw new errors.InvalidTarget();
        return resourceServerInfo;
      },
    },
  },
  formats: { customizers: { jwt: entraCustomizer } },
  ttl: {
    AccessToken: () => accessTokenTtl,
    ClientCredentials: () => accessTokenTtl,
    AuthorizationCode: () => 60,
    IdToken: () => 3600,
    RefreshToken: () => 24 * 3600,
    DeviceCode: () => 600,
    Interaction: () => 3600,
    Session: () => 24 * 3600,
    Grant: () => 24 * 3600,
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});

for (const ev of ['server_error', 'grant.error', 'authorization.error', 'end_session.error', 'userinfo.error']) {
  provider.on(ev, (ctx, err) => console.error(`[oidc] ${ev}: ${err?.message} ${err?.error_description || ''} ${err?.error_detail || ''}`));
}

// The built-in HTML pages @import a Google Fonts stylesheet; strip it so a headless
// browser in a sandbox never waits on the internet.
provider.use(async (ctx, next) => {
  await next();
  if (typeof ctx.body === 'string' && ctx.response.is('html')) {
    ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);?/g, '');
  }
});

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ ready: true, issuer })}\n`);
console.error(`[oidc] listening at ${issuer} (config ${configPath})`);

