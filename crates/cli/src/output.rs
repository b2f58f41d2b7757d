//! `--output text|json`: what a command prints on stdout. With `json`, every command
//! prints one JSON document on stdout (and an error as JSON on stderr), so pipelines
//! never parse prose; progress and notes stay on stderr either way.

use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub fn set(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The result of a command: `value` as JSON under `--output json`, else `text()`.
pub fn emit(value: &serde_json::Value, text: impl FnOnce()) {
    if json() {
        println!("{value}");
    } else {
        text();
    }
}

/// A note for people (stderr); under `--output json` the JSON result says it instead.
pub fn note(value: &serde_json::Value, text: &str) {
    if json() {
        println!("{value}");
    } else {
        eprintln!("{text}");
    }
}

/// Someone as a line shows them: the label first, the stable identity after it when the
/// label is not the identity (`Bob Approver <bob@contoso.com> [tenant/object]`). The
/// server cleans labels of control characters; this strips them again, as a terminal
/// must never receive escapes from an identity provider's profile data.
pub fn who(a: &influxion_api::Actor) -> String {
    let label = terminal_safe(&a.label());
    if a.has_label() {
        format!("{label} [{}]", terminal_safe(&a.id))
    } else {
        label
    }
}

/// Text for a terminal: control characters and bidirectional overrides dropped.
pub fn terminal_safe(s: &str) -> String {
    s.chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// Cut to `width` characters (marked), so the columns stay aligned.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_shows_the_label_then_the_identity() {
        let mut a = influxion_api::Actor::id_only("t/o");
        assert_eq!(who(&a), "t/o");
        a.name = Some("Bob\u{1b}[2J".into());
        a.username = Some("bob@x".into());
        assert_eq!(who(&a), "Bob[2J <bob@x> [t/o]");
        assert_eq!(terminal_safe("a\u{202E}b\nc"), "abc");
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
