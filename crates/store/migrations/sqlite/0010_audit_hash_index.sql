-- The audit log without a UNIQUE index on `hash`. No query looks a record up by its
-- hash, and the chain already makes two equal hashes impossible to verify. Hashes are
-- random, so each appended record landed on a different page of that index: most of
-- the pages a group commit wrote to the WAL were that index's (issue 19's profile).
-- SQLite cannot drop a column constraint, so the table is rebuilt; the columns keep
-- their order and every record its bytes.
CREATE TABLE audit_log_new (
    seq          INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT,
    outcome      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    mac          TEXT,
    actor_label  TEXT
);
INSERT INTO audit_log_new (seq, at, actor, action, target, outcome, detail, prev_hash, hash, mac, actor_label)
    SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash, mac, actor_label
    FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_at ON audit_log (at);
