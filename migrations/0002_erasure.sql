-- The service's own state. Request and task state machines: see src/store/mod.rs.
CREATE SCHEMA IF NOT EXISTS erasure;

CREATE TABLE erasure.requests (
    request_id                text PRIMARY KEY CHECK (request_id LIKE 'eud-%'),
    account_id                text NOT NULL,
    requested_by              text NOT NULL,
    source                    text NOT NULL CHECK (source IN ('http', 'queue')),
    client_addr               text,
    remove_data_from_all_bots boolean NOT NULL DEFAULT false,
    bot_ids                   text[] NOT NULL DEFAULT '{}',
    status                    text NOT NULL DEFAULT 'in-progress'
                              CHECK (status IN ('in-progress', 'completed', 'rejected', 'failed')),
    failure_reason            text,
    planned                   boolean NOT NULL DEFAULT false,
    -- Platform user ids to erase, fixed at planning time (read by every task of the request).
    erase_user_ids            text[] NOT NULL DEFAULT '{}',
    users_total               integer NOT NULL DEFAULT 0,
    tasks_total               integer NOT NULL DEFAULT 0,
    tasks_done                integer NOT NULL DEFAULT 0,
    idempotency_key           text,
    body_digest               text,
    requested_at              timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    completed_at              timestamptz,
    pii_redacted_at           timestamptz
);
CREATE UNIQUE INDEX requests_idempotency_idx ON erasure.requests (requested_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX requests_account_idx ON erasure.requests (account_id, created_at);
CREATE INDEX requests_status_idx ON erasure.requests (status, completed_at);

-- One row per `userIds` entry, in the order given.
CREATE TABLE erasure.request_users (
    request_id  text NOT NULL REFERENCES erasure.requests (request_id) ON DELETE CASCADE,
    position    integer NOT NULL,
    -- The identifier as given (a JSON object's canonical text for channel pairs) until the
    -- retention window passes, then 'hmac:' || hex(HMAC-SHA256(key, identifier)).
    user_ref    text NOT NULL,
    -- 'id' (a string entry) or 'channel' (a {channelId, channelUserId} entry).
    kind        text NOT NULL DEFAULT 'id' CHECK (kind IN ('id', 'channel')),
    status      text NOT NULL DEFAULT 'IN_PROGRESS'
                CHECK (status IN ('IN_PROGRESS', 'SUCCESS', 'NOT_FOUND', 'REJECTED', 'FAILED')),
    reason      text,
    resolved_user_ids text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (request_id, position)
);

-- One row per (request, bot): the unit of work replicas share.
CREATE TABLE erasure.tasks (
    request_id         text NOT NULL REFERENCES erasure.requests (request_id) ON DELETE CASCADE,
    bot_id             text NOT NULL,
    status             text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    slice              integer NOT NULL DEFAULT 0,
    rows_conversations bigint NOT NULL DEFAULT 0,
    rows_sessions      bigint NOT NULL DEFAULT 0,
    rows_analytics     bigint NOT NULL DEFAULT 0,
    failure_reason     text,
    started_at         timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    PRIMARY KEY (request_id, bot_id)
);
CREATE INDEX tasks_pending_idx ON erasure.tasks (request_id) WHERE status <> 'done';

-- Transactional outbox: rows committed with the state change that needs the message, deleted
-- once the broker confirmed the publish.
CREATE TABLE erasure.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    routing_key text NOT NULL,
    message_id  text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created_idx ON erasure.outbox (created_at);

-- Messages the service dead-lettered, with the reason: the operator's record next to the
-- broker's queue. `payload` is redacted with the rest of the request's personal data.
CREATE TABLE erasure.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  text,
    routing_key text NOT NULL,
    reason      text NOT NULL,
    payload     bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    redriven_at timestamptz
);
CREATE INDEX dead_letters_request_idx ON erasure.dead_letters (request_id);

-- Public read surface (contract, DESIGN.md section 4).
CREATE VIEW erasure.request_status AS
SELECT r.request_id,
       r.account_id,
       r.status,
       r.remove_data_from_all_bots,
       r.created_at,
       r.updated_at,
       r.completed_at,
       r.users_total,
       (SELECT count(*)::integer FROM erasure.request_users u
         WHERE u.request_id = r.request_id AND u.status = 'REJECTED') AS users_rejected,
       r.tasks_total,
       r.tasks_done,
       COALESCE((SELECT sum(t.rows_conversations + t.rows_sessions + t.rows_analytics)
                   FROM erasure.tasks t WHERE t.request_id = r.request_id), 0)::bigint AS rows_deleted,
       r.failure_reason,
       r.requested_by
  FROM erasure.requests r;

CREATE VIEW erasure.request_user_status AS
SELECT request_id, user_ref, status, reason, position
  FROM erasure.request_users;
