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
