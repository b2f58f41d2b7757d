//! URL facts several modules check (configuration, sign-in): a leaf, so neither
//! needs the other for them.

/// Whether a URL names this host (where plain http cannot be overheard).
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}
