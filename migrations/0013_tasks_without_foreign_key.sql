-- A task's foreign key to its request is checked for every task inserted: a lock of the
-- request's row (FOR KEY SHARE) and a WAL record each, 20 per one-user request of an account
-- of 20 bots. Tasks are inserted only by the plan arrow, in the transaction that holds that
-- very row FOR UPDATE (src/store/planning.rs), so the check only re-proved what the lock
-- already guarantees; dropping it took 0.4-0.6 ms of PostgreSQL's CPU off each such request
-- (docs/benchmark.md, round 6). Nothing in the service deletes a request (retention scrubs
-- identifiers, it keeps the row); should an operator delete one, its tasks go with it, as
-- the constraint's ON DELETE CASCADE did.
ALTER TABLE erasure.tasks DROP CONSTRAINT tasks_request_id_fkey;

CREATE FUNCTION erasure.delete_request_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM erasure.tasks t USING gone g WHERE t.request_id = g.request_id;
    RETURN NULL;
END $$;

CREATE TRIGGER requests_delete_tasks AFTER DELETE ON erasure.requests
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION erasure.delete_request_tasks();
