//! Who did something, as recorded: a stable identity and, beside it, a label for people
//! to read.
//!
//! The identity (`id`) is what every decision uses. The label fields come from the
//! validated token at the time of the action (`name`, `preferred_username`/`upn`) or
//! from the subjects the caller matched; the identity provider signs them but does not
//! vouch for them (anyone may call themselves "Security Officer"), so they are cleaned
//! ([`display_text`]), capped, shown beside the identity and never compared.

use serde::{Deserialize, Serialize};

use crate::{CallerKind, Principal};

/// The longest display field kept, in characters.
pub const MAX_DISPLAY_CHARS: usize = 128;

/// Someone or something that acted: a person, an application, or Influxion itself
/// (`system`, `bootstrap`, `anonymous`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The stable identity: `tenant/object` (with `user:`/`app:` in audit records).
    pub id: String,
    pub kind: Option<CallerKind>,
    /// A person's `name` claim; for an application, the subject it matched.
    pub name: Option<String>,
    /// A person's `preferred_username` or `upn`; an application's client id.
    pub username: Option<String>,
    /// The subjects the caller matched, comma-separated.
    pub subject: Option<String>,
}

/// Read from the API's object, or from a bare identity string (what servers before
/// labels sent), so a newer client still reads an older server's answers.
impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            id: String,
            #[serde(default)]
            kind: Option<CallerKind>,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            subject: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Id(String),
            Full(Wire),
        }
        Ok(match Either::deserialize(d)? {
            Either::Id(id) => Actor::id_only(id),
            Either::Full(w) => Actor {
                id: w.id,
                kind: w.kind,
                name: w.name,
                username: w.username,
                subject: w.subject,
            },
        })
    }
}

/// What is stored beside the identity (one JSON text column).
#[derive(Serialize, Deserialize, Default)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<CallerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

impl Actor {
    /// An actor known only by its identity: Influxion itself, or a record written
    /// before labels were kept.
    pub fn id_only(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// A caller as its token and matched subjects describe it. `id` is the form the
    /// record keys on ([`Principal::audit_id`] or [`Principal::identity`]).
    pub fn of(p: &Principal, id: String, subjects: &[String]) -> Self {
        let subject = (!subjects.is_empty())
            .then(|| display_text(&subjects.join(", ")))
            .flatten();
        match p.kind {
            CallerKind::User => Self {
                id,
                kind: Some(CallerKind::User),
                name: p.name.clone(),
                username: p.username.clone(),
                subject,
            },
            // Application tokens carry no name of their own in Entra v2: the subject
            // an administrator made for the pipeline is its name here.
            CallerKind::App => Self {
                id,
                kind: Some(CallerKind::App),
                name: subjects.first().and_then(|s| display_text(s)),
                username: p.app_id.as_deref().and_then(display_text),
                subject,
            },
        }
    }

    /// One line for people: `Bob Approver <bob@contoso.com>`, `ci-build (app)`, or the
    /// identity when nothing else is known.
    pub fn label(&self) -> String {
        let app = self.kind == Some(CallerKind::App) || self.id.starts_with("app:");
        match (&self.name, &self.username) {
            (Some(n), _) if app => format!("{n} (app)"),
            (None, Some(u)) if app => format!("app {u}"),
            (Some(n), Some(u)) if n != u => format!("{n} <{u}>"),
            (Some(n), _) => n.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => self.id.clone(),
        }
    }

    /// Whether there is anything beside the identity.
    pub fn has_label(&self) -> bool {
        self.name.is_some() || self.username.is_some() || self.subject.is_some()
    }

    /// The label fields as stored beside the identity; None when there are none.
    pub fn stored_label(&self) -> Option<String> {
        if !self.has_label() && self.kind.is_none() {
            return None;
        }
        serde_json::to_string(&Stored {
            kind: self.kind,
            name: self.name.clone(),
            username: self.username.clone(),
            subject: self.subject.clone(),
        })
        .ok()
    }

    /// An actor read back: the identity and its stored label, if any. A label that does
    /// not parse (written by hand into the database) is dropped, and what parses is
    /// cleaned again, so nothing unclean reaches a screen whatever the row holds.
    pub fn from_stored(id: String, label: Option<&str>) -> Self {
        let s: Stored = label
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let clean = |v: Option<String>| v.as_deref().and_then(display_text);
        Self {
            id,
            kind: s.kind,
            name: clean(s.name),
            username: clean(s.username),
            subject: clean(s.subject),
        }
    }
}

/// The API writes the label beside the fields, so that every client shows the same
/// line without knowing the rule.
impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            kind: Option<CallerKind>,
            name: Option<&'a str>,
            username: Option<&'a str>,
            subject: Option<&'a str>,
            label: String,
        }
        Wire {
            id: &self.id,
            kind: self.kind,
            name: self.name.as_deref(),
            username: self.username.as_deref(),
            subject: self.subject.as_deref(),
            label: self.label(),
        }
        .serialize(s)
    }
}

/// Text from a token made fit to show: control characters (terminal escapes, newlines
/// that forge log lines) and bidirectional overrides (which reorder what a reader sees)
/// are removed, runs of white space become one space, and the result is capped at
/// [`MAX_DISPLAY_CHARS`]. None when nothing is left. HTML escaping is the renderer's
/// job; this makes the text safe for terminals and logs and keeps it short.
pub fn display_text(s: &str) -> Option<String> {
    let words = s
        .split(char::is_whitespace)
        .map(|w| {
            w.chars()
                .filter(|c| !c.is_control() && !is_invisible_format(*c))
                .collect::<String>()
        })
        .filter(|w| !w.is_empty());
    let mut out = String::new();
    for w in words {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
        if out.len() > MAX_DISPLAY_CHARS * 4 {
            break;
        }
    }
    if out.chars().count() > MAX_DISPLAY_CHARS {
        // Mark the cut so nobody mistakes a prefix for the whole name.
        out = out.chars().take(MAX_DISPLAY_CHARS - 1).collect();
        out.truncate(out.trim_end().len());
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

/// Bidirectional embeddings, overrides and isolates, marks, zero-width characters and
/// the byte-order mark: invisible, and able to make one name look like another.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
            | '\u{061C}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: Option<&str>, username: Option<&str>) -> Principal {
        Principal {
            issuer: "i".into(),
            tenant_id: Some("t".into()),
            object_id: "o".into(),
            app_id: Some("web".into()),
            kind: CallerKind::User,
            scopes: vec![],
            roles: vec![],
            groups: vec![],
            name: name.map(str::to_owned),
            username: username.map(str::to_owned),
        }
    }

    #[test]
    fn labels() {
        let p = person(Some("Bob Approver"), Some("bob@contoso.com"));
        let a = Actor::of(&p, p.audit_id(), &["approvers".into()]);
        assert_eq!(a.label(), "Bob Approver <bob@contoso.com>");
        assert_eq!(a.subject.as_deref(), Some("approvers"));
        let p = person(None, Some("bob@contoso.com"));
        assert_eq!(Actor::of(&p, p.identity(), &[]).label(), "bob@contoso.com");
        let p = person(None, None);
        assert_eq!(Actor::of(&p, p.identity(), &[]).label(), "t/o");

        let mut app = person(None, None);
        app.kind = CallerKind::App;
        app.app_id = Some("1234".into());
        let a = Actor::of(
            &app,
            app.audit_id(),
            &["ci-build".into(), "auditors".into()],
        );
        assert_eq!(a.label(), "ci-build (app)");
        assert_eq!(a.username.as_deref(), Some("1234"));
        assert_eq!(a.subject.as_deref(), Some("ci-build, auditors"));
        assert_eq!(Actor::of(&app, app.audit_id(), &[]).label(), "app 1234");
        assert_eq!(Actor::id_only("system").label(), "system");
    }

    #[test]
    fn stored_labels_round_trip_and_old_records_show_the_identity() {
        let p = person(Some("Bob"), Some("bob@x"));
        let a = Actor::of(&p, p.audit_id(), &[]);
        let back = Actor::from_stored(a.id.clone(), a.stored_label().as_deref());
        assert_eq!(back, a);
        assert_eq!(Actor::id_only("system").stored_label(), None);
        let old = Actor::from_stored("user:t/o".into(), None);
        assert_eq!(old.label(), "user:t/o");
        let junk = Actor::from_stored("user:t/o".into(), Some("{not json"));
        assert_eq!(junk.label(), "user:t/o");
        let sneaky = Actor::from_stored("u".into(), Some(r#"{"name":"a\u001b[2Jb"}"#));
        assert_eq!(sneaky.name.as_deref(), Some("a[2Jb"));
    }

    #[test]
    fn the_wire_form_carries_the_label() {
        let p = person(Some("Bob"), Some("bob@x"));
        let v = serde_json::to_value(Actor::of(&p, p.audit_id(), &["s".into()])).unwrap();
        assert_eq!(v["id"], "user:t/o");
        assert_eq!(v["name"], "Bob");
        assert_eq!(v["username"], "bob@x");
        assert_eq!(v["subject"], "s");
        assert_eq!(v["kind"], "user");
        assert_eq!(v["label"], "Bob <bob@x>");
        let back: Actor = serde_json::from_value(v).unwrap();
        assert_eq!(back.name.as_deref(), Some("Bob"));
        // An older server's bare identity reads as an actor without a label.
        let old: Actor = serde_json::from_value(serde_json::json!("t/o")).unwrap();
        assert_eq!(old, Actor::id_only("t/o"));
    }

    #[test]
    fn display_text_is_cleaned_and_capped() {
        assert_eq!(
            display_text("  Bob \n\t Approver "),
            Some("Bob Approver".into())
        );
        assert_eq!(
            display_text("\u{1b}[31mred\u{1b}[0m"),
            Some("[31mred[0m".into())
        );
        assert_eq!(
            display_text("evil\u{202E}gpj.exe"),
            Some("evilgpj.exe".into())
        );
        assert_eq!(display_text("a\u{200B}b\u{FEFF}"), Some("ab".into()));
        assert_eq!(display_text(" \u{7} \n"), None);
        assert_eq!(display_text(""), None);
        let long = "x".repeat(500);
        let capped = display_text(&long).unwrap();
        assert_eq!(capped.chars().count(), MAX_DISPLAY_CHARS);
        assert!(capped.ends_with('…'));
        let exact = "y".repeat(MAX_DISPLAY_CHARS);
        assert_eq!(display_text(&exact), Some(exact.clone()));
        // HTML is left for the renderer to escape: it is text, not markup, here.
        assert_eq!(
            display_text("<img src=x onerror=alert(1)>"),
            Some("<img src=x onerror=alert(1)>".into())
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_long_never_control(s in any::<String>()) {
                if let Some(t) = display_text(&s) {
                    prop_assert!(t.chars().count() <= MAX_DISPLAY_CHARS);
                    prop_assert!(!t.chars().any(|c| c.is_control() || is_invisible_format(c)));
                    prop_assert_eq!(t.trim(), t.as_str());
                    prop_assert!(!t.contains("  "));
                }
            }
        }
    }
}
