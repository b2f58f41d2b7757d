-- The keyclient's PostgreSQL schema: the SQLite schema (migrations/sqlite, 0001 to
-- 0003) in its final form, in PostgreSQL's dialect. Same tables, columns, checks and
-- keys; INTEGER (Unix seconds) is BIGINT, BLOB is BYTEA.
--
-- Browser sessions. The cookie value never reaches the database: rows are found by
-- its SHA-256, and the tokens are sealed with AES-256-GCM under the keyclient's
-- session key (AAD = id_hash), so a copy of this table opens no session.
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('login', 'user')),
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    sealed     BYTEA NOT NULL,
    -- One replica at a time refreshes a session's tokens: the one holding this lease.
    refresh_lease_until BIGINT
);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);

-- Sign-ins in progress live in a sealed cookie, not here. A completed one is recorded
-- until its cookie would have expired, so its callback cannot be replayed (on any
-- replica).
CREATE TABLE completed_logins (
    id_hash    TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
