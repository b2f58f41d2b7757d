-- A change that weakens a key's approval policy (fewer approvals, wider approvers, a
-- longer TTL), proposed by a key-admin: it waits for the quorum of the policy in force
-- when it was proposed, and is applied by the vote that completes it, only if that
-- policy is still in force (otherwise it is superseded).
CREATE TABLE policy_changes (
    id                 TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (id),
    key_name           TEXT NOT NULL,
    requester          TEXT NOT NULL,
    requester_name     TEXT,
    reason             TEXT NOT NULL,
    base_policy        TEXT NOT NULL,
    policy             TEXT NOT NULL,
    weakens            TEXT NOT NULL,
    quorum             INTEGER NOT NULL CHECK (quorum >= 1),
    approver_subjects  TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'rejected', 'expired', 'superseded')),
    created_at         TEXT NOT NULL,
    expires_at         INTEGER NOT NULL,
    finished_at        TEXT
);
CREATE INDEX policy_changes_status ON policy_changes (status, created_at);

CREATE TABLE policy_change_approvals (
    change_id   TEXT NOT NULL REFERENCES policy_changes (id),
    approver    TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment     TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (change_id, approver)
);
