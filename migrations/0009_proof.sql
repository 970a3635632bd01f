-- Proof of erasure (DESIGN.md section 12): each settled request's verification and the part
-- of its receipt that is fixed once. The arrows are src/store/proofs.rs, the job that runs
-- them src/verify.rs.

-- When the request's proof was sealed: its verification recorded (a completed request) and
-- its receipt's subjects hashed (every state that has a receipt). The retention job redacts
-- a request only once this is set, since verifying needs the users' ids and hashing needs
-- the entries as given.
ALTER TABLE erasure.requests ADD COLUMN proved_at timestamptz;

-- What the verification job looks for, due first: settled requests not proved yet that still
-- hold their identifiers (failed ones, which have no receipt, stay in it too: they are few).
CREATE INDEX requests_unproved_idx ON erasure.requests (completed_at)
    WHERE proved_at IS NULL AND completed_at IS NOT NULL AND pii_redacted_at IS NULL;

CREATE TABLE erasure.proofs (
    request_id     text PRIMARY KEY REFERENCES erasure.requests (request_id) ON DELETE CASCADE,
    -- The verifier working on it, until when: one that dies loses its claim when the lease
    -- runs out, and the next one resumes.
    lease_id       uuid,
    leased_until   timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    -- Rows erasure.task_rows held per store when verification began ({store: n}), taken once:
    -- what the verification adds to them is late, however many verifiers it took.
    baseline       jsonb,
    verified_at    timestamptz,
    -- Rows erased by the verification, per store ({store: n}).
    late_rows      jsonb,
    -- A verification is recorded only when it counted nothing left.
    remaining_rows bigint CHECK (remaining_rows = 0),
    -- The receipt's fixed part: its salt, one {hash, outcome} per userIds entry (salted
    -- SHA-256 of the entry as given: no identifier), and the catalog's digest.
    salt           text,
    subjects       jsonb,
    catalog_digest text,
    CHECK ((verified_at IS NULL) = (late_rows IS NULL) AND (verified_at IS NULL) = (remaining_rows IS NULL)),
    CHECK ((salt IS NULL) = (subjects IS NULL) AND (salt IS NULL) = (catalog_digest IS NULL))
);
