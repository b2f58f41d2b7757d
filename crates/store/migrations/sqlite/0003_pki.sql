-- Device certificate authority.

-- A key's purpose: 'sign' keys sign digests through the API; 'ca' keys sign only their
-- CA's certificates and CRLs, so nobody can obtain a raw signature from a CA key.
ALTER TABLE keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'sign' CHECK (purpose IN ('sign', 'ca'));

CREATE TABLE cas (
    name            TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL UNIQUE REFERENCES keys(id),
    -- pending: an intermediate whose CSR waits for an external root's signature.
    status          TEXT NOT NULL CHECK (status IN ('pending', 'active', 'disabled')),
    subject         TEXT NOT NULL,
    -- The CA held here that signed this one, if any.
    parent          TEXT REFERENCES cas(name),
    csr_pem         TEXT,
    certificate     BLOB,
    -- Issuer certificates above this CA, PEM, nearest first (empty for a root).
    chain_pem       TEXT NOT NULL DEFAULT '',
    not_after       TEXT,
    crl_number      INTEGER NOT NULL DEFAULT 0,
    crl             BLOB,
    crl_next_update TEXT,
    created_at      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    CHECK (status = 'pending' OR certificate IS NOT NULL)
);

CREATE TABLE profiles (
    name        TEXT PRIMARY KEY,
    ca          TEXT NOT NULL REFERENCES cas(name),
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE certificates (
    -- Hex of the DER serial; the primary key makes serials unique across all CAs.
    serial            TEXT PRIMARY KEY,
    ca                TEXT NOT NULL REFERENCES cas(name),
    profile           TEXT NOT NULL,
    device_id         TEXT NOT NULL,
    subject           TEXT NOT NULL,
    not_before        TEXT NOT NULL,
    not_after         TEXT NOT NULL,
    der               BLOB NOT NULL,
    requested_by      TEXT NOT NULL,
    issued_at         TEXT NOT NULL,
    key_generated     INTEGER NOT NULL DEFAULT 0,
    -- A client-chosen idempotency key: a retried issuance returns the same certificate.
    request_key       TEXT,
    status            TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at        TEXT,
    revocation_reason TEXT,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    UNIQUE (profile, request_key)
);

CREATE INDEX certificates_by_device ON certificates (profile, device_id, status);
CREATE INDEX certificates_by_ca ON certificates (ca, status);
