-- Sign-ins in progress live in a sealed cookie, not here. A completed one is recorded
-- until its cookie would have expired, so its callback cannot be replayed.
DELETE FROM web_sessions WHERE kind = 'login';
CREATE TABLE completed_logins (
    id_hash TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
