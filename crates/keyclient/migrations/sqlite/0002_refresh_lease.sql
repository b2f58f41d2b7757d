-- One replica at a time refreshes a session's tokens: the one holding this lease.
ALTER TABLE web_sessions ADD COLUMN refresh_lease_until INTEGER;
