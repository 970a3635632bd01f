//! `erasure bench` at tiny scale, run as an operator runs it (the binary, `--json`): every
//! figure is produced, the service erased exactly the rows that plain SQL erased on the
//! identical copy, and the bench removed its database and its queues. No timing is asserted.

use std::path::Path;

use erasure::queue::Topology;
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{AMQP_URL, TestEnv};

#[tokio::test]
async fn the_bench_produces_every_figure_and_the_service_matches_plain_sql() {
    let env = TestEnv::new().await;
    let database = format!("{}_bench", env.db_name);
    // The bench's temporary files (figures, its processes' logs) in a folder of this test's,
    // where the logs also tell the queue prefix the bench chose.
    let dir = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("figures.json");
    let tiny = [
        ("--users", "40"),
        ("--bots", "2"),
        ("--rows", "3000"),
        ("--bulk-users", "5"),
        ("--small-requests", "6"),
        ("--small-rate", "50"),
        ("--small-concurrency", "4"),
        ("--big-rows", "3000"),
        ("--child-users", "3"),
        ("--child-others", "2"),
        ("--child-bots", "2"),
        ("--child-conversations", "2"),
        ("--scenarios", "bulk,small,big,replicas,ceiling,child"),
        ("--workers", "1"),
        ("--replicas", "1,2"),
        ("--ceiling", "100000"),
        ("--database", &database),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_erasure"))
        .arg("bench")
        .args(tiny.iter().flat_map(|(flag, value)| [flag, value]))
        .arg("--json")
        .arg(&json)
        .envs(&env.vars)
        .env("ERASURE_LOG", "warn")
        .env("TMPDIR", &dir)
        .output()
        .await
        .expect("the binary runs");
    let prefix = bench_queue_prefix(&dir);
    let figures = std::fs::read_to_string(&json);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "the bench runs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_database_dropped(&env, &database).await;
    assert_topology_deleted(&prefix).await;
    let figures: Value = serde_json::from_str(&figures.expect("the figures are written")).unwrap();
    let figures = figures.as_object().expect("one key per figure");
    let get = |key: &str| figures.get(key).and_then(Value::as_f64);

    let expected = [
        "seed_seconds",
        "bulk_users",
        "bulk_rows_floor",
        "bulk_seconds_floor",
        "bulk_rows_per_s_floor",
        "bulk_rows_service",
        "bulk_seconds_service",
        "bulk_rows_per_s_service",
        "bulk_ratio",
        "small_fixed_offered_per_s",
        "small_fixed_accepted_per_s",
        "small_fixed_refused",
        "small_fixed_completed_per_s",
        "small_fixed_p50_ms",
        "small_fixed_p99_ms",
        "small_fixed_rows",
        "small_max_accepted_per_s",
        "small_max_completed_per_s",
        "small_max_p50_ms",
        "small_max_p99_ms",
        "big_rows",
        "big_seconds",
        "big_rows_per_s",
        "big_longest_delete_ms",
        "big_delete_statements",
        "big_deletes_over_250ms",
        "big_worker_peak_rss_mib",
        "replicas_1_rows_per_s",
        "replicas_2_rows_per_s",
        "replicas_1_ratio",
        "replicas_2_ratio",
        "replicas_failed_tasks",
        "replicas_transient_retries",
        "ceiling_rows_per_s_limit",
        "ceiling_rows_per_s_achieved",
        "child_users",
        "child_rows_floor",
        "child_seconds_floor",
        "child_rows_per_s_floor",
        "child_rows_service",
        "child_seconds_service",
        "child_rows_per_s_service",
        "child_ratio",
    ];
    for key in expected {
        let v = get(key).unwrap_or_else(|| panic!("figure {key} is missing"));
        assert!(v.is_finite() && v >= 0.0, "figure {key} = {v}");
    }
    let floor = get("bulk_rows_floor").unwrap();
    assert!(floor > 0.0, "the bulk users have rows to erase");
    assert_eq!(get("bulk_rows_service"), Some(floor));
    assert_eq!(get("big_rows"), Some(3_000.0));
    assert_eq!(get("small_fixed_refused"), Some(0.0));
    assert_eq!(get("small_max_refused"), Some(0.0));
    assert_eq!(get("replicas_failed_tasks"), Some(0.0));
    assert!(get("big_worker_peak_rss_mib").unwrap() > 0.0);
    assert!(get("big_delete_statements").unwrap() >= 1.0);
    // 3 users × 2 bots × 2 conversations, each with 3 messages of 2 attachments.
    assert_eq!(get("child_rows_floor"), Some(120.0));
    assert_eq!(get("child_rows_service"), Some(120.0));
    assert!(
        figures.values().all(Value::is_number),
        "every figure is a number"
    );
}

/// The prefix the bench gave its queues, read from its processes' log names
/// (`erasure-<prefix with '.' as '-'>intake-0.log`).
fn bench_queue_prefix(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .find_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let tag = name
                .strip_prefix("erasure-")?
                .strip_suffix("-intake-0.log")?;
            Some(format!("{tag}."))
        })
        .filter(|p| p.starts_with("bench"))
        .expect("the bench logged its intake under its prefix bench<random>.")
}

async fn assert_database_dropped(env: &TestEnv, database: &str) {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    if exists {
        let url = format!("{}/{database}", crate::helpers::PG_BASE);
        erasure::store::drop_database(&url).await.unwrap();
    }
    assert!(!exists, "the bench dropped its database {database}");
}

async fn assert_topology_deleted(prefix: &str) {
    let conn = erasure::queue::connect(AMQP_URL, "test-bench-queues")
        .await
        .unwrap();
    let mut left = Vec::new();
    for (queue, _) in Topology::new(prefix, 5).queues() {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let ch = conn.create_channel().await.unwrap();
        let found = ch
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok();
        if found {
            let _ = ch
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
            left.push(queue);
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    assert!(
        left.is_empty(),
        "the bench deleted its queues: {left:?} remain"
    );
}
