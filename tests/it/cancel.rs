//! Cancellation safety of the database layer: a future dropped while it opens a transaction
//! (what a shutdown or a timeout does, and what a task slice did to the other stores' batches
//! when one failed, before they were all run to their end) must not leave its pooled connection inside that transaction, where the
//! next borrower's statements would read an old snapshot and their writes never commit
//! (launchbadge/sqlx#4393; `vendor/sqlx-postgres/PATCHED.md`).

use std::{future::Future, task::Poll, time::Duration};

use erasure::store;

use crate::helpers::TestEnv;

#[tokio::test]
async fn a_transaction_dropped_while_it_begins_leaves_no_transaction_behind() {
    let env = TestEnv::new().await;
    // One connection, so that the next borrower gets the one the dropped begin used.
    let pool = store::connect(&env.db_url, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let in_transaction = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    // Poll a begin one step at a time, and stop at the moment the server has run its BEGIN
    // (a backend idle in a transaction) while the answer is still unread: drop it there.
    let mut dropped_unread = false;
    'attempts: for _ in 0..20 {
        let mut begin = std::pin::pin!(store::begin_relaxed_snapshot(&pool));
        for _ in 0..50 {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(begin.as_mut().poll(cx).map(drop))).await;
            if polled.is_ready() {
                continue 'attempts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if in_transaction().await == 1 {
                dropped_unread = true;
                break 'attempts;
            }
        }
    }
    assert!(
        dropped_unread,
        "no begin was caught between its BEGIN and its answer"
    );
    // Outside a transaction block a savepoint is refused (25P01); inside one it is made.
    let probe = sqlx::raw_sql("SAVEPOINT probe").execute(&pool).await;
    let code = probe
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(
        code.as_deref(),
        Some("25P01"),
        "the pooled connection is still in the dropped begin's transaction: {probe:?}"
    );
    assert_eq!(in_transaction().await, 0);
}
