-- Intermediate CAs are certificates their parent issued: record the serial and the
-- revocation of each CA's own certificate, so the parent's CRL can list it.

-- Hex of the DER serial of the CA's certificate (NULL until it has one; rows made
-- before this migration get theirs when first needed).
ALTER TABLE cas ADD COLUMN serial TEXT;
ALTER TABLE cas ADD COLUMN revoked_at TEXT;
ALTER TABLE cas ADD COLUMN revocation_reason TEXT;

CREATE UNIQUE INDEX cas_by_serial ON cas (serial);
CREATE INDEX cas_by_parent ON cas (parent, revoked_at);
