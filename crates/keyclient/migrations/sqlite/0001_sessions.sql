-- Browser sessions of the keyclient. The cookie value never reaches the database:
-- rows are found by its SHA-256, and the tokens are sealed with AES-256-GCM under the
-- keyclient's session key (AAD = id_hash), so a copy of this table opens no session.
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('login', 'user')),
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    sealed     BLOB NOT NULL
);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);
