//! Migrations that move data, run on data written under the schema before them.

use std::path::Path;

use serde_json::Value;

use crate::helpers::TestEnv;

async fn apply(env: &TestEnv, file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(file);
    let sql = std::fs::read_to_string(&path).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{file}: {e}"));
}

type Read = (i64, Value, i64, i64, i64);

async fn read(env: &TestEnv) -> Read {
    sqlx::query_as(
        "SELECT s.rows_deleted, a.bots, a.rows_conversations, a.rows_sessions, a.rows_analytics
           FROM erasure.request_status s JOIN erasure.request_audit a USING (request_id)
          WHERE request_id = 'eud-before-0006'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migration_0006_keeps_every_count_the_task_counters_held() {
    // A database as a deployment before 0006 has it: the counters on erasure.tasks.
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "DROP SCHEMA erasure CASCADE; DROP SCHEMA platform CASCADE; DROP TABLE _sqlx_migrations",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for file in [
        "0001_platform.sql",
        "0002_erasure.sql",
        "0003_request_audit.sql",
        "0005_delete_pace.sql",
    ] {
        apply(&env, file).await;
    }
    sqlx::raw_sql(
        "INSERT INTO erasure.requests (request_id, account_id, requested_by, source, status, tasks_total, tasks_done)
         VALUES ('eud-before-0006', 'acct-a', 'app-1', 'http', 'completed', 3, 3);
         INSERT INTO erasure.tasks (request_id, bot_id, status, rows_conversations, rows_sessions, rows_analytics)
         VALUES ('eud-before-0006', 'b-1', 'done', 5, 0, 7),
                ('eud-before-0006', 'b-2', 'done', 0, 2, 0),
                ('eud-before-0006', 'b-3', 'done', 0, 0, 0);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let before = read(&env).await;
    assert_eq!(before.0, 14);

    apply(&env, "0006_task_rows.sql").await;

    assert_eq!(read(&env).await, before, "the views read the same counts");
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT bot_id, store, rows FROM erasure.task_rows ORDER BY bot_id, store")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("b-1".to_string(), "analytics".to_string(), 7),
            ("b-1".to_string(), "conversations".to_string(), 5),
            ("b-2".to_string(), "sessions".to_string(), 2),
        ],
        "one row per non-zero counter"
    );
    let old_columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns
          WHERE table_schema = 'erasure' AND table_name = 'tasks' AND column_name LIKE 'rows_%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(old_columns, 0, "one place holds the counts");
}

#[tokio::test]
async fn a_deleted_request_takes_its_tasks_with_it_as_the_dropped_foreign_key_did() {
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "INSERT INTO erasure.requests (request_id, account_id, requested_by, source)
         VALUES ('eud-kept', 'acct', 'test', 'queue'), ('eud-gone', 'acct', 'test', 'queue');
         INSERT INTO erasure.tasks (request_id, bot_id)
         VALUES ('eud-kept', 'b-1'), ('eud-gone', 'b-1'), ('eud-gone', 'b-2');
         DELETE FROM erasure.requests WHERE request_id = 'eud-gone';",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let left: Vec<String> = sqlx::query_scalar("SELECT request_id FROM erasure.tasks")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, ["eud-kept"]);
}
