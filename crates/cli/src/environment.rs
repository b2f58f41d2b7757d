//! Reading the environment: the leaf every other module may use (configuration,
//! profiles, sign-in), so none of them needs another for it.

/// Read the environment, treating empty values as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
