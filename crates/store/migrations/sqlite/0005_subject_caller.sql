-- Which kind of token a subject matches: app-only ('app'), delegated ('user') or both.
-- Until now every subject matched both, so a subject written for a CI application
-- (app_id or app_role alone) also matched people signing in through that app or
-- assigned that role. Such rows become 'app'; subjects naming a person or group keep
-- matching any caller.
ALTER TABLE subjects ADD COLUMN caller TEXT NOT NULL DEFAULT 'any' CHECK (caller IN ('app', 'user', 'any'));
UPDATE subjects SET caller = 'app'
 WHERE COALESCE(object_id, '') = ''
   AND COALESCE(group_id, '') = ''
   AND (COALESCE(app_id, '') <> '' OR COALESCE(app_role, '') <> '');
