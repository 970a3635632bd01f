//! `erasure bench` at tiny scale: every figure is produced, and the service erased exactly the
//! rows that plain SQL erased on the identical copy. No timing is asserted.

use erasure::bench::{self, BenchArgs, Options, Scenario};

use crate::helpers::TestEnv;

#[tokio::test]
async fn the_bench_produces_every_figure_and_the_service_matches_plain_sql() {
    let env = TestEnv::new().await;
    let args = BenchArgs {
        users: 40,
        bots: 2,
        rows: 3_000,
        bulk_users: 5,
        small_requests: 6,
        small_rate: 50.0,
        small_concurrency: 4,
        big_rows: 3_000,
        scenarios: vec![
            Scenario::Bulk,
            Scenario::Small,
            Scenario::Big,
            Scenario::Replicas,
            Scenario::Ceiling,
        ],
        workers: 1,
        replicas: vec![1, 2],
        ceiling: Some(100_000),
        json: None,
        keep: false,
        database: "unused".into(),
    };
    let opts = Options {
        args,
        config: env.config(),
        database_url: env.db_url.clone(),
        queue_prefix: env.prefix.clone(),
        own_database: false,
        exe: env!("CARGO_BIN_EXE_erasure").into(),
        progress: false,
    };
    let figures = bench::run(&opts).await.expect("the bench runs");

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
    ];
    for key in expected {
        let v = figures
            .get(key)
            .unwrap_or_else(|| panic!("figure {key} is missing"));
        assert!(v.is_finite() && v >= 0.0, "figure {key} = {v}");
    }
    let floor = figures.get("bulk_rows_floor").unwrap();
    assert!(floor > 0.0, "the bulk users have rows to erase");
    assert_eq!(figures.get("bulk_rows_service"), Some(floor));
    assert_eq!(figures.get("big_rows"), Some(3_000.0));
    assert_eq!(figures.get("small_fixed_refused"), Some(0.0));
    assert_eq!(figures.get("small_max_refused"), Some(0.0));
    assert_eq!(figures.get("replicas_failed_tasks"), Some(0.0));
    assert!(figures.get("big_worker_peak_rss_mib").unwrap() > 0.0);
    assert!(figures.get("big_delete_statements").unwrap() >= 1.0);
    let json = figures.to_json();
    assert_eq!(json.as_object().unwrap().len(), figures.0.len());
}
