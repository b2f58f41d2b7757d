-- Subjects match principals by rules over the validated token; every non-NULL rule
-- must match. Grants give a subject a role on keys (or profiles) whose name matches
-- a pattern.
CREATE TABLE subjects (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL DEFAULT '',
    issuer       TEXT,
    tenant_id    TEXT,
    object_id    TEXT,
    app_id       TEXT,
    app_role     TEXT,
    group_id     TEXT,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL
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

-- A key's approval policy: 0 approvals means signing is immediate.
ALTER TABLE keys ADD COLUMN approvals_required INTEGER NOT NULL DEFAULT 0 CHECK (approvals_required >= 0);
ALTER TABLE keys ADD COLUMN approval_ttl_secs INTEGER NOT NULL DEFAULT 86400 CHECK (approval_ttl_secs > 0);
-- JSON array of subject names allowed to approve; empty means any approver of the key.
ALTER TABLE keys ADD COLUMN approver_subjects TEXT NOT NULL DEFAULT '[]';

CREATE TABLE signing_requests (
    id                 TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (id),
    key_name           TEXT NOT NULL,
    algorithm          TEXT NOT NULL,
    digest             TEXT NOT NULL,
    requester          TEXT NOT NULL,
    requester_name     TEXT,
    reason             TEXT NOT NULL,
    metadata           TEXT NOT NULL,
    quorum             INTEGER NOT NULL CHECK (quorum >= 1),
    approver_subjects  TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'signed', 'rejected', 'cancelled', 'expired')),
    signature          BLOB,
    created_at         TEXT NOT NULL,
    expires_at         INTEGER NOT NULL,
    finished_at        TEXT,
    -- A signature exists exactly when the request is signed.
    CHECK ((status = 'signed') = (signature IS NOT NULL))
);
CREATE INDEX signing_requests_status ON signing_requests (status, created_at);

-- One row per approver and request: the primary key makes one approver count once.
CREATE TABLE approvals (
    request_id  TEXT NOT NULL REFERENCES signing_requests (id),
    approver    TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment     TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
