-- The target catalog (DESIGN.md section 9): stores are named by the catalog, not fixed to the
-- reference model's three, and a store is either deleted or anonymized.
ALTER TABLE erasure.task_rows DROP CONSTRAINT task_rows_store_check;
ALTER TABLE erasure.task_rows
    ADD COLUMN action text NOT NULL DEFAULT 'delete' CHECK (action IN ('delete', 'anonymize'));

-- Batches of stores in another database count their rows in that database's ledger; each is
-- forwarded here once, under its batch id.
CREATE TABLE erasure.forwarded_batches (
    batch_id     uuid PRIMARY KEY,
    database     text NOT NULL,
    forwarded_at timestamptz NOT NULL DEFAULT now()
);

-- Public read surface: what each request erased, per store and bot.
CREATE VIEW erasure.request_store_rows AS
SELECT request_id, store, bot_id, action, rows
  FROM erasure.task_rows;

-- rows_deleted stays the total deleted (anonymized rows are kept, so not counted in it).
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
                  WHERE n.request_id = r.request_id AND n.action = 'delete'), 0)::bigint AS rows_deleted,
       r.failure_reason,
       r.requested_by,
       COALESCE((SELECT sum(n.rows) FROM erasure.task_rows n
                  WHERE n.request_id = r.request_id AND n.action = 'anonymize'), 0)::bigint AS rows_anonymized
  FROM erasure.requests r;

-- The audit trail gains every store of the catalog: rows per store and action, per bot.
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
