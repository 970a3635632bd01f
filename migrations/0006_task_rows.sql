-- Rows deleted per (request, bot, store), one row each, in place of the three counters on
-- erasure.tasks. A task message deletes from the three stores at once, one statement per store
-- on its own connection, and each statement counts its rows in the same transaction. With the
-- counters on the task's row the three would queue behind each other's row lock (and could
-- deadlock when a message works several bots); here each store's statement only ever locks
-- its own rows. (Two copies of one message running at once on two workers can still lock the
-- same rows of one store in different orders: PostgreSQL then cancels one statement, which
-- rolls back whole and is retried.)
CREATE TABLE erasure.task_rows (
    request_id text   NOT NULL,
    bot_id     text   NOT NULL,
    store      text   NOT NULL CHECK (store IN ('conversations', 'sessions', 'analytics')),
    rows       bigint NOT NULL,
    PRIMARY KEY (request_id, bot_id, store),
    FOREIGN KEY (request_id, bot_id) REFERENCES erasure.tasks (request_id, bot_id) ON DELETE CASCADE
);

INSERT INTO erasure.task_rows (request_id, bot_id, store, rows)
SELECT request_id, bot_id, 'conversations', rows_conversations FROM erasure.tasks WHERE rows_conversations > 0
UNION ALL
SELECT request_id, bot_id, 'sessions', rows_sessions FROM erasure.tasks WHERE rows_sessions > 0
UNION ALL
SELECT request_id, bot_id, 'analytics', rows_analytics FROM erasure.tasks WHERE rows_analytics > 0;

-- Each task with its rows per store: what the views and the status API read.
CREATE VIEW erasure.task_totals AS
SELECT t.request_id,
       t.bot_id,
       t.status,
       t.completed_at,
       COALESCE(sum(n.rows) FILTER (WHERE n.store = 'conversations'), 0)::bigint AS rows_conversations,
       COALESCE(sum(n.rows) FILTER (WHERE n.store = 'sessions'), 0)::bigint AS rows_sessions,
       COALESCE(sum(n.rows) FILTER (WHERE n.store = 'analytics'), 0)::bigint AS rows_analytics
  FROM erasure.tasks t
  LEFT JOIN erasure.task_rows n USING (request_id, bot_id)
 GROUP BY t.request_id, t.bot_id;

CREATE OR REPLACE VIEW erasure.request_status AS
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
       COALESCE((SELECT sum(n.rows) FROM erasure.task_rows n
                  WHERE n.request_id = r.request_id), 0)::bigint AS rows_deleted,
       r.failure_reason,
       r.requested_by
  FROM erasure.requests r;

CREATE OR REPLACE VIEW erasure.request_audit AS
SELECT r.request_id,
       r.account_id,
       r.requested_by,
       r.source,
       r.client_addr,
       r.requested_at,
       r.created_at,
       r.completed_at,
       r.status,
       r.failure_reason,
       r.remove_data_from_all_bots,
       r.bot_ids AS requested_bot_ids,
       r.users_total,
       (SELECT count(*)::integer FROM erasure.request_users u
         WHERE u.request_id = r.request_id AND u.status = 'SUCCESS') AS users_succeeded,
       (SELECT count(*)::integer FROM erasure.request_users u
         WHERE u.request_id = r.request_id AND u.status = 'NOT_FOUND') AS users_not_found,
       (SELECT count(*)::integer FROM erasure.request_users u
         WHERE u.request_id = r.request_id AND u.status = 'REJECTED') AS users_rejected,
       (SELECT count(*)::integer FROM erasure.request_users u
         WHERE u.request_id = r.request_id AND u.status = 'FAILED') AS users_failed,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                          'position', u.position,
                          'status', u.status,
                          'reason', u.reason,
                          'userRef', CASE WHEN u.user_ref LIKE 'hmac:%' THEN u.user_ref END)
                        ORDER BY u.position)
                   FROM erasure.request_users u WHERE u.request_id = r.request_id),
                '[]'::jsonb) AS user_outcomes,
       r.tasks_total,
       r.tasks_done,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                          'botId', t.bot_id,
                          'status', t.status,
                          'conversations', t.rows_conversations,
                          'sessions', t.rows_sessions,
                          'analytics', t.rows_analytics,
                          'completedAt', t.completed_at)
                        ORDER BY t.bot_id)
                   FROM erasure.task_totals t WHERE t.request_id = r.request_id),
                '[]'::jsonb) AS bots,
       COALESCE((SELECT sum(n.rows) FROM erasure.task_rows n
                  WHERE n.request_id = r.request_id AND n.store = 'conversations'), 0)::bigint AS rows_conversations,
       COALESCE((SELECT sum(n.rows) FROM erasure.task_rows n
                  WHERE n.request_id = r.request_id AND n.store = 'sessions'), 0)::bigint AS rows_sessions,
       COALESCE((SELECT sum(n.rows) FROM erasure.task_rows n
                  WHERE n.request_id = r.request_id AND n.store = 'analytics'), 0)::bigint AS rows_analytics,
       r.pii_redacted_at
  FROM erasure.requests r;

ALTER TABLE erasure.tasks
    DROP COLUMN rows_conversations,
    DROP COLUMN rows_sessions,
    DROP COLUMN rows_analytics;
