-- The PostgreSQL schema: the SQLite schema (migrations/sqlite, 0001 to 0009) in its
-- final form, in PostgreSQL's dialect. Same tables, columns, checks and unique keys;
-- BLOB is BYTEA, INTEGER is BIGINT, key_generated is BOOLEAN. Timestamps stay
-- RFC 3339 text, compared as text, as in SQLite. The audit chain is keyed from the
-- start (docs/audit.md): the first open seals the head.

-- JSON text written by the store, read as jsonb; NULL (not an error) for text that is
-- not JSON, like SQLite's json_valid() guard, so a damaged row cannot break a search.
CREATE FUNCTION influxion_jsonb(t TEXT) RETURNS JSONB
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

CREATE TABLE keys (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    key_type            TEXT NOT NULL,
    backend             TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    public_key          BYTEA NOT NULL,
    handle              BYTEA NOT NULL,
    created_at          TEXT NOT NULL,
    created_by          TEXT NOT NULL,
    created_by_label    TEXT,
    -- 0 approvals: signing is immediate.
    approvals_required  BIGINT NOT NULL DEFAULT 0 CHECK (approvals_required >= 0),
    approval_ttl_secs   BIGINT NOT NULL DEFAULT 86400 CHECK (approval_ttl_secs > 0),
    -- JSON array of subject names allowed to approve; empty: any approver of the key.
    approver_subjects   TEXT NOT NULL DEFAULT '[]',
    -- 'ca' keys sign only their CA's certificates and CRLs.
    purpose             TEXT NOT NULL DEFAULT 'sign' CHECK (purpose IN ('sign', 'ca')),
    -- PEM, leaf first; NULL: the key has none.
    certificate_pem     TEXT
);

-- Hash-chained and keyed: seq is previous + 1 (a gap shows a deleted record).
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    actor_label  TEXT,
    action       TEXT NOT NULL,
    target       TEXT,
    outcome      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    mac          TEXT
);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- The chain head, updated in the same transaction as each append. Writers serialise
-- on a transaction-scoped advisory lock taken before they read it (src/postgres).
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL,
    mac   TEXT
);

CREATE TABLE subjects (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    description       TEXT NOT NULL DEFAULT '',
    issuer            TEXT,
    tenant_id         TEXT,
    object_id         TEXT,
    app_id            TEXT,
    app_role          TEXT,
    group_id          TEXT,
    caller            TEXT NOT NULL DEFAULT 'any' CHECK (caller IN ('app', 'user', 'any')),
    created_at        TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    created_by_label  TEXT
);

CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    subject_id  TEXT NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'key-admin', 'signer', 'approver', 'provisioner', 'auditor')),
    pattern     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    UNIQUE (subject_id, role, pattern)
);

CREATE TABLE signing_requests (
    id                 TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (id),
    key_name           TEXT NOT NULL,
    algorithm          TEXT NOT NULL,
    digest             TEXT NOT NULL,
    requester          TEXT NOT NULL,
    requester_name     TEXT,
    requester_label    TEXT,
    reason             TEXT NOT NULL,
    metadata           TEXT NOT NULL,
    quorum             BIGINT NOT NULL CHECK (quorum >= 1),
    approver_subjects  TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'signed', 'rejected', 'cancelled', 'expired')),
    signature          BYTEA,
    created_at         TEXT NOT NULL,
    expires_at         BIGINT NOT NULL,
    finished_at        TEXT,
    -- A signature exists exactly when the request is signed: one signature per
    -- approved request, whichever replica completes the quorum.
    CHECK ((status = 'signed') = (signature IS NOT NULL))
);
CREATE INDEX signing_requests_status ON signing_requests (status, created_at);

-- The primary key makes one approver count once, across replicas.
CREATE TABLE approvals (
    request_id      TEXT NOT NULL REFERENCES signing_requests (id),
    approver        TEXT NOT NULL,
    approver_label  TEXT,
    decision        TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment         TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE cas (
    name               TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL UNIQUE REFERENCES keys (id),
    status             TEXT NOT NULL CHECK (status IN ('pending', 'active', 'disabled')),
    subject            TEXT NOT NULL,
    parent             TEXT REFERENCES cas (name),
    csr_pem            TEXT,
    certificate        BYTEA,
    chain_pem          TEXT NOT NULL DEFAULT '',
    not_after          TEXT,
    crl_number         BIGINT NOT NULL DEFAULT 0,
    crl                BYTEA,
    crl_next_update    TEXT,
    created_at         TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    created_by_label   TEXT,
    serial             TEXT,
    revoked_at         TEXT,
    revocation_reason  TEXT,
    CHECK (status = 'pending' OR certificate IS NOT NULL)
);
CREATE UNIQUE INDEX cas_by_serial ON cas (serial);
CREATE INDEX cas_by_parent ON cas (parent, revoked_at);

CREATE TABLE profiles (
    name        TEXT PRIMARY KEY,
    ca          TEXT NOT NULL REFERENCES cas (name),
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE certificates (
    -- Hex of the DER serial; the primary key makes serials unique across all CAs.
    serial              TEXT PRIMARY KEY,
    ca                  TEXT NOT NULL REFERENCES cas (name),
    profile             TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    not_before          TEXT NOT NULL,
    not_after           TEXT NOT NULL,
    der                 BYTEA NOT NULL,
    requested_by        TEXT NOT NULL,
    requested_by_label  TEXT,
    issued_at           TEXT NOT NULL,
    key_generated       BOOLEAN NOT NULL DEFAULT FALSE,
    request_key         TEXT,
    status              TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at          TEXT,
    revocation_reason   TEXT,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    UNIQUE (profile, request_key)
);
CREATE INDEX certificates_by_device ON certificates (profile, device_id, status);
CREATE INDEX certificates_by_ca ON certificates (ca, status);

CREATE TABLE policy_changes (
    id                 TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (id),
    key_name           TEXT NOT NULL,
    requester          TEXT NOT NULL,
    requester_name     TEXT,
    requester_label    TEXT,
    reason             TEXT NOT NULL,
    base_policy        TEXT NOT NULL,
    policy             TEXT NOT NULL,
    weakens            TEXT NOT NULL,
    quorum             BIGINT NOT NULL CHECK (quorum >= 1),
    approver_subjects  TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'rejected', 'expired', 'superseded')),
    created_at         TEXT NOT NULL,
    expires_at         BIGINT NOT NULL,
    finished_at        TEXT
);
CREATE INDEX policy_changes_status ON policy_changes (status, created_at);

CREATE TABLE policy_change_approvals (
    change_id       TEXT NOT NULL REFERENCES policy_changes (id),
    approver        TEXT NOT NULL,
    approver_label  TEXT,
    decision        TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment         TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (change_id, approver)
);
