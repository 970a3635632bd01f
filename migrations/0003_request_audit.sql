-- Audit trail (public read surface): who asked, when, from where, what happened to each user
-- and how many rows each bot lost, per store. It carries no caller-given identifier: a user
-- appears by position in the request, and by the HMAC that replaced the identifier once the
-- retention window has passed (`user_ref` is NULL before then), so the erasure can be proven
-- later by anyone holding the identifier and the HMAC key.
CREATE VIEW erasure.request_audit AS
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
                   FROM erasure.tasks t WHERE t.request_id = r.request_id),
                '[]'::jsonb) AS bots,
       COALESCE((SELECT sum(t.rows_conversations) FROM erasure.tasks t
                  WHERE t.request_id = r.request_id), 0)::bigint AS rows_conversations,
       COALESCE((SELECT sum(t.rows_sessions) FROM erasure.tasks t
                  WHERE t.request_id = r.request_id), 0)::bigint AS rows_sessions,
       COALESCE((SELECT sum(t.rows_analytics) FROM erasure.tasks t
                  WHERE t.request_id = r.request_id), 0)::bigint AS rows_analytics,
       r.pii_redacted_at
  FROM erasure.requests r;
