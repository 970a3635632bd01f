-- The shared pace of ERASURE_MAX_ROWS_PER_SECOND_TOTAL: one row, the earliest moment the next
-- batch of any worker may start. A worker reserves a batch by pushing it forward by
-- rows ÷ ceiling (one short UPDATE, on the database's clock), and hands back what the batch
-- did not use; so every worker, whatever its number, shares one budget.
CREATE TABLE erasure.delete_pace (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    next_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO erasure.delete_pace DEFAULT VALUES;
