-- Executions of redelivered messages under way, one row per run: the worker running it keeps
-- `seen_at` fresh and deletes the row when the run ends, however it ends. A row that is no
-- longer refreshed is a run whose worker died. The job runner counts those to tell a message
-- that kills workers (a crash loop: dead-lettered) from one the broker gave back for any other
-- reason (a lost connection, a node that died, a consumer the broker only believed alive), so
-- that losing a node never dead-letters a healthy message (src/queue/redelivery.rs).
-- Keyed by message id and a hash of the body: no personal data. First deliveries, nearly all
-- of them, write nothing.
CREATE TABLE erasure.redelivery_runs (
    run_id      uuid PRIMARY KEY,
    message_key text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX redelivery_runs_message_key ON erasure.redelivery_runs (message_key);
