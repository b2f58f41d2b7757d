//! Per-process cache of what issuing under a profile needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::service::pki::IssuanceContext;
use crate::{ApiError, AppState};

/// [`IssuanceContext`] by profile name, read once per change of CA/profile/key data
/// (the store's PKI generation). The writer re-checks that the CA and its key are
/// active when the certificate commits, so a stale entry cannot issue under a
/// disabled CA.
#[derive(Default)]
pub struct PkiCache {
    entries: Mutex<HashMap<String, (u64, Arc<IssuanceContext>)>>,
}

pub(crate) async fn issuance_context(
    st: &AppState,
    profile: &str,
) -> Result<Arc<IssuanceContext>, ApiError> {
    let generation = st.store.pki_generation();
    if let Ok(m) = st.pki_cache.entries.lock() {
        if let Some((g, ctx)) = m.get(profile) {
            if *g == generation {
                return Ok(ctx.clone());
            }
        }
    }
    let ctx = Arc::new(IssuanceContext::load(st, profile).await?);
    if let Ok(mut m) = st.pki_cache.entries.lock() {
        // Bounded by the number of profiles; cleared wholesale if names are abused.
        if m.len() > 1024 {
            m.clear();
        }
        m.insert(profile.to_owned(), (generation, ctx.clone()));
    }
    Ok(ctx)
}
