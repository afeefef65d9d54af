-- Just-in-time access: requests for a role (optionally on one target), their approvals,
-- and the time-boxed grant an approved request becomes (`grant_until_ms`).
CREATE TABLE access_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name TEXT NOT NULL,
    role_name TEXT NOT NULL,
    target TEXT,
    reason TEXT NOT NULL,
    ttl_secs INTEGER NOT NULL,
    -- pending, approved, denied, cancelled, expired, revoked, ended
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    pending_until_ms INTEGER NOT NULL,
    approvals_required INTEGER NOT NULL,
    decided_by TEXT,
    decided_ms INTEGER,
    decision_reason TEXT,
    grant_until_ms INTEGER,
    -- 1 once `request.grant_expiring` was written for its grant.
    expiring_noted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX access_requests_state ON access_requests (state, user_name);

CREATE TABLE request_approvals (
    request_id INTEGER NOT NULL REFERENCES access_requests (id),
    reviewer TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);
