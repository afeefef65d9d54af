-- Failed logins counted across replicas: each `serve` adds the failures it saw (by door,
-- user and source network; user '' for the source alone) and reads the totals back once
-- a second, so guesses spread over replicas are throttled as if they hit one.
CREATE TABLE login_failures (
    door       TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    addr       TEXT NOT NULL,
    failures   BIGINT NOT NULL,
    last_ms    BIGINT NOT NULL,
    PRIMARY KEY (door, user_name, addr)
);
CREATE INDEX login_failures_recent ON login_failures (last_ms);
