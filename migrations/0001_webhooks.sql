-- Portable SQL: the same migration runs on SQLite and PostgreSQL (BIGINT and TEXT only).
-- Webhooks (PROTOCOLS.md 6): hooks, the attempts log, failures counted for auto-disable, and
-- deliveries waiting for a retry. Times are Unix milliseconds.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    disable_reason TEXT,
    created_ms BIGINT NOT NULL,
    modified_ms BIGINT NOT NULL
);
CREATE INDEX webhooks_account ON webhooks (account_id);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    hook_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX webhook_attempts_account ON webhook_attempts (account_id, created_ms);
CREATE INDEX webhook_attempts_hook ON webhook_attempts (hook_id, created_ms);

CREATE TABLE webhook_failures (
    hook_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX webhook_failures_hook ON webhook_failures (hook_id, at_ms);

CREATE TABLE webhook_jobs (
    id TEXT PRIMARY KEY,
    hook_id TEXT NOT NULL,
    hook_event TEXT NOT NULL,
    event_id TEXT,
    payload TEXT NOT NULL,
    tries BIGINT NOT NULL,
    due_ms BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL,
    claim TEXT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX webhook_jobs_due ON webhook_jobs (due_ms);
CREATE INDEX webhook_jobs_hook ON webhook_jobs (hook_id);
