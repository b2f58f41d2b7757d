-- Keys: metadata, public key and the backend's handle (wrapped key material for the
-- software keystore). Types are kept to TEXT/BLOB/INTEGER so the PostgreSQL migration
-- differs only in BLOB -> BYTEA.
CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    key_type    TEXT NOT NULL,
    backend     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    public_key  BLOB NOT NULL,
    handle      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);

-- The audit log is hash-chained: each record carries the hash of the one before.
-- seq is assigned by the writer as previous + 1, so a gap shows a deleted record.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE
);

-- The chain head, updated in the same transaction as each append, so that deleting
-- the newest records is detected too.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
