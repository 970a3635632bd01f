-- Issue 14 (DESIGN.md section 10): signed callbacks, cancel, single-use tokens.

-- Cancel: a request can end `cancelled`, its unsettled users `CANCELLED`, its unfinished
-- tasks `cancelled` (they never run again).
ALTER TABLE erasure.requests DROP CONSTRAINT requests_status_check;
ALTER TABLE erasure.requests ADD CONSTRAINT requests_status_check
    CHECK (status IN ('in-progress', 'completed', 'rejected', 'failed', 'cancelled'));
ALTER TABLE erasure.request_users DROP CONSTRAINT request_users_status_check;
ALTER TABLE erasure.request_users ADD CONSTRAINT request_users_status_check
    CHECK (status IN ('IN_PROGRESS', 'SUCCESS', 'NOT_FOUND', 'REJECTED', 'FAILED', 'CANCELLED'));
ALTER TABLE erasure.tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE erasure.tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'done', 'failed', 'cancelled'));

-- Callbacks: where a request's settling is told (the body's `callbackUrl`, or the app's
-- default), and the app that signs it.
ALTER TABLE erasure.requests ADD COLUMN callback_url text;

-- Per app: its default callback URL, its Standard Webhooks secret (sealed like the client
-- secret; the previous one keeps signing until `webhook_previous_until`), and whether its
-- tokens are single-use.
ALTER TABLE platform.api_apps
    ADD COLUMN callback_url text,
    ADD COLUMN webhook_secret_sealed bytea,
    ADD COLUMN webhook_previous_sealed bytea,
    ADD COLUMN webhook_previous_until timestamptz,
    ADD COLUMN enforce_jti boolean NOT NULL DEFAULT false;

-- One row per event to deliver: inserted by the arrow that settles the request, in its
-- transaction (a transactional outbox of callbacks). `body` is fixed at the first attempt,
-- so every retry sends the same bytes under the same `webhook_id`.
CREATE TABLE erasure.callbacks (
    webhook_id   text PRIMARY KEY,
    request_id   text NOT NULL REFERENCES erasure.requests (request_id) ON DELETE CASCADE,
    client_id    text,
    url          text NOT NULL,
    event        text NOT NULL,
    event_at     timestamptz NOT NULL DEFAULT now(),
    body         bytea,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'delivered', 'failed', 'gone')),
    attempts     integer NOT NULL DEFAULT 0,
    last_status  integer,
    next_at      timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callbacks_due_idx ON erasure.callbacks (next_at) WHERE state = 'pending';
CREATE INDEX callbacks_request_idx ON erasure.callbacks (request_id);

-- Single-use tokens: the `jti`s an enforcing app used, shared by every intake replica,
-- forgotten after their `exp` (the retention job deletes them).
CREATE TABLE erasure.used_jtis (
    client_id  text NOT NULL,
    jti        text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX used_jtis_expires_idx ON erasure.used_jtis (expires_at);
