-- Who did something, for people to read: beside each stable identity, the label taken
-- from the validated token (and the matched subjects) at the time of the action, as
-- JSON text {kind, name, username, subject} (influxion_core::Actor). NULL where nothing
-- was known; old rows show the identity. Labels are display text only: no rule reads
-- them. An audit record's label is part of its hash; records written before this
-- migration have none, and their hashes are unchanged.
ALTER TABLE audit_log ADD COLUMN actor_label TEXT;
ALTER TABLE signing_requests ADD COLUMN requester_label TEXT;
ALTER TABLE policy_changes ADD COLUMN requester_label TEXT;
ALTER TABLE approvals ADD COLUMN approver_label TEXT;
ALTER TABLE policy_change_approvals ADD COLUMN approver_label TEXT;
ALTER TABLE certificates ADD COLUMN requested_by_label TEXT;
ALTER TABLE keys ADD COLUMN created_by_label TEXT;
ALTER TABLE subjects ADD COLUMN created_by_label TEXT;
ALTER TABLE cas ADD COLUMN created_by_label TEXT;

-- What a requester was called before: the token's display name (or client id).
UPDATE signing_requests SET requester_label = json_object('name', requester_name)
    WHERE requester_name IS NOT NULL;
UPDATE policy_changes SET requester_label = json_object('name', requester_name)
    WHERE requester_name IS NOT NULL;

-- The audit log's filters (`GET /v1/audit?action=…&outcome=…`) and time windows.
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_at ON audit_log (at);
