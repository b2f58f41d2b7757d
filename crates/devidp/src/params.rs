//! Form and query parameters of the OAuth endpoints.

use std::collections::HashMap;

/// Form or query parameters. RFC 6749 §3.1: empty values count as absent, and no
/// parameter may appear twice (a repeated one reads as absent and is reported).
pub(crate) struct Params(HashMap<String, Vec<String>>);

impl Params {
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            if !v.is_empty() {
                map.entry(k).or_default().push(v);
            }
        }
        Self(map)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        match self.0.get(name).map(Vec::as_slice) {
            Some([one]) => Some(one.as_str()),
            _ => None,
        }
    }

    pub(crate) fn repeated(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, v)| v.len() > 1)
            .map(|(k, _)| k.as_str())
    }
}
