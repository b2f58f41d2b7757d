-- Keyed audit chain (docs/audit.md). Each record and the head carry an HMAC-SHA256
-- under a key derived from the KEK, so rewriting or truncating the log needs the KEK.
-- NULL in audit_log.mac: a record written before this migration (hash-linked only,
-- covered by the sealed head through the links; `influxion audit reseal` MACs it).
-- The head is sealed by the first open after this migration and must stay sealed.
-- Deliberately not idempotent: re-running it on a migrated file fails.
ALTER TABLE audit_log ADD COLUMN mac TEXT;
ALTER TABLE audit_head ADD COLUMN mac TEXT;
