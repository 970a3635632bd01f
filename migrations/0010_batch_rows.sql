-- Rows erased are recorded once per batch, store and request (`erasure.batch_rows`, append-only:
-- the bots and their counts as two arrays), in the transaction that erased them, instead of one
-- upserted row per (request, bot, store): a request of 20 bots over 3 stores wrote 60 rows and
-- checked 60 foreign keys per batch; now 3. `erasure.task_rows` becomes a view with the same
-- columns, read by everything that read the table.
CREATE TABLE erasure.batch_rows (
    request_id text     NOT NULL,
    store      text     NOT NULL,
    action     text     NOT NULL CHECK (action IN ('delete', 'anonymize')),
    bot_ids    text[]   NOT NULL,
    rows       bigint[] NOT NULL CHECK (cardinality(rows) = cardinality(bot_ids)),
    counted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batch_rows_request_idx ON erasure.batch_rows (request_id);

INSERT INTO erasure.batch_rows (request_id, store, action, bot_ids, rows)
SELECT request_id, store, action, ARRAY[bot_id], ARRAY[rows] FROM erasure.task_rows;

DROP TABLE erasure.task_rows CASCADE;

CREATE VIEW erasure.task_rows AS
SELECT b.request_id, c.bot_id, b.store, min(b.action) AS action, sum(c.rows)::bigint AS rows
  FROM erasure.batch_rows b, unnest(b.bot_ids, b.rows) AS c(bot_id, rows)
 GROUP BY b.request_id, c.bot_id, b.store;

-- The views that read the table, as they were (0006, 0007).
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

CREATE VIEW erasure.request_store_rows AS
SELECT request_id, store, bot_id, action, rows
  FROM erasure.task_rows;

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
       COALESCE((SELECT sum(c.rows) FROM erasure.batch_rows b, unnest(b.bot_ids, b.rows) AS c(bot_id, rows)
                  WHERE b.request_id = r.request_id AND b.action = 'delete'), 0)::bigint AS rows_deleted,
       r.failure_reason,
       r.requested_by,
       COALESCE((SELECT sum(c.rows) FROM erasure.batch_rows b, unnest(b.bot_ids, b.rows) AS c(bot_id, rows)
                  WHERE b.request_id = r.request_id AND b.action = 'anonymize'), 0)::bigint AS rows_anonymized
  FROM erasure.requests r;
CREATE OR REPLACE VIEW erasure.request_audit AS
SELECT a.*,
       COALESCE((SELECT jsonb_object_agg(n.store, jsonb_build_object('action', n.action, 'rows', n.rows))
                   FROM (SELECT store, min(action) AS action, sum(rows) AS rows FROM erasure.task_rows
                          WHERE request_id = a.request_id GROUP BY store) n),
                '{}'::jsonb) AS rows_by_store
  FROM (SELECT r.request_id,
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
                                  'stores', (SELECT COALESCE(jsonb_object_agg(n.store, n.rows), '{}'::jsonb)
                                               FROM erasure.task_rows n
                                              WHERE n.request_id = t.request_id AND n.bot_id = t.bot_id),
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
          FROM erasure.requests r) a;

-- A task's state changes twice (its slice ends, it is done): with no index on its status,
-- and room left on its page, PostgreSQL updates it in place (HOT) without touching the
-- primary key's index. Nothing reads tasks by that partial index: every query finds them by
-- their key.
DROP INDEX erasure.tasks_pending_idx;
ALTER TABLE erasure.tasks SET (fillfactor = 80);
ALTER TABLE erasure.request_users SET (fillfactor = 80);
