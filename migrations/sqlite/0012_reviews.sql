-- Periodic access reviews. A role grant's age and last use are what reviewers weigh:
-- user_roles learns when each grant was made (NULL: before this was kept), sessions the
-- roles that allowed them.
ALTER TABLE user_roles ADD COLUMN granted_ms INTEGER;
ALTER TABLE sessions ADD COLUMN roles TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_by_user ON sessions (user_name, started_ms);

CREATE TABLE review_campaigns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    -- `all`, `role=NAME` or `target-label=KEY=VALUE`
    scope       TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    due_ms      INTEGER NOT NULL,
    -- what happens to items undecided at the due date: `revoke` or `report`
    on_due      TEXT NOT NULL CHECK (on_due IN ('revoke', 'report')),
    closed_ms   INTEGER
) STRICT;

CREATE TABLE review_items (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  INTEGER NOT NULL REFERENCES review_campaigns (id),
    user_name    TEXT NOT NULL,
    role_name    TEXT NOT NULL,
    granted_ms   INTEGER,
    last_used_ms INTEGER,
    stale        INTEGER NOT NULL,
    -- NULL while open; `certified`, `revoked`, `revoked_at_due`, `unreviewed`
    decision     TEXT,
    reviewer     TEXT,
    decided_ms   INTEGER,
    reason       TEXT
) STRICT;
CREATE INDEX review_items_by_campaign ON review_items (campaign_id);
