//! The verification job (src/verify.rs, DESIGN.md section 12): rows written for an erased user
//! after the last batch are found, erased and counted as late; nothing is left when it
//! records; a due verification survives the death of the process that would have run it, and
//! one that dies mid-way is resumed and still counts exactly.

use std::{sync::Arc, time::Duration};

use erasure::{
    config::Config,
    startup::Role,
    verify::{Proved, Verifier},
    worker::Ctx,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{Api, TestEnv, eventually},
    process::Process,
};

/// A verifier over the test's database with its settings and `vars` on top.
fn verifier(env: &TestEnv, vars: &[(&str, &str)]) -> Verifier {
    let mut all = env.vars.clone();
    for (k, v) in vars {
        all.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_map(&all).expect("verifier settings");
    Verifier::new(Arc::new(Ctx::built_in(env.pool.clone(), config)))
}

/// The platform of these tests: `u-late-1` is erased from the first bot; `u-late-2` and the
/// second bot are never part of the request.
async fn platform(env: &TestEnv) -> (Vec<String>, String) {
    let bots = env.account("acct-late", 2).await;
    for u in ["u-late-1", "u-late-2"] {
        env.user_with_rows(u, &bots, 5).await;
    }
    let (_, _, token) = env.app("acct-late", &["delete_users_data"]).await;
    (bots, token)
}

/// Submits the request and waits until it completes.
async fn erase_late_1(env: &TestEnv, api: &Api, token: &str, bot: &str) -> String {
    let (code, body) = api
        .erase(token, &json!({"userIds": ["u-late-1"], "botIds": [bot]}))
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["requestId"].as_str().unwrap().to_string();
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    id
}

/// The verification's row, as the database has it.
async fn proof(env: &TestEnv, id: &str) -> Value {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT to_jsonb(p) FROM erasure.proofs p WHERE request_id = $1), 'null')",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Rows erased by the verification so far: what `erasure.task_rows` gained over the baseline.
async fn erased_since_baseline(env: &TestEnv, id: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT ((SELECT sum(rows) FROM erasure.task_rows WHERE request_id = $1)
               - (SELECT sum(value::bigint) FROM erasure.proofs, jsonb_each_text(baseline)
                   WHERE request_id = $1))::bigint",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rows_written_after_the_last_batch_are_erased_and_counted_as_late() {
    // The service's own job would verify in an hour: this test runs the job's step itself.
    let env = TestEnv::with_vars(&[("ERASURE_VERIFY_AFTER", "3600")]).await;
    let (bots, token) = platform(&env).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let id = erase_late_1(&env, &api, &token, &bots[0]).await;
    assert!(api.status_doc(&token, &id).await.verification.is_none());
    let ahead = verifier(&env, &[]);
    assert_eq!(
        ahead.step(&CancellationToken::new()).await.unwrap(),
        Proved::Idle,
        "not due before ERASURE_VERIFY_AFTER"
    );

    // The platform writes for the erased user again, in the erased bot and elsewhere.
    env.rows("u-late-1", &bots[0], 4).await;
    let untouched = env.checksum_outside(&["u-late-1"], &[&bots[0]]).await;
    let now = verifier(&env, &[("ERASURE_VERIFY_AFTER", "0")]);
    let Proved::Verified { request_id, late } = now.step(&CancellationToken::new()).await.unwrap()
    else {
        panic!("the request is verified")
    };
    assert_eq!(request_id, id.as_str());
    assert_eq!(
        late.0,
        [
            ("conversations".to_string(), 4),
            ("sessions".to_string(), 4),
            ("analytics".to_string(), 4)
        ]
    );
    assert_eq!(env.count_rows("u-late-1", &bots[0]).await, 0);
    assert_eq!(
        env.count_rows("u-late-1", &bots[1]).await,
        15,
        "another bot"
    );
    assert_eq!(
        env.count_rows("u-late-2", &bots[0]).await,
        15,
        "another user"
    );
    assert_eq!(
        env.checksum_outside(&["u-late-1"], &[&bots[0]]).await,
        untouched
    );

    let (_, doc) = api.status(&token, &id).await;
    assert_eq!(
        doc["verification"]["lateRows"],
        json!({"conversations": 4, "sessions": 4, "analytics": 4})
    );
    assert_eq!(doc["verification"]["remainingRows"], 0);
    assert!(doc["verification"]["verifiedOn"].is_string());
    assert_eq!(
        doc["progress"]["rowsDeleted"]["conversations"], 9,
        "rows deleted count the late ones too"
    );
    assert_eq!(
        now.step(&CancellationToken::new()).await.unwrap(),
        Proved::Idle,
        "a request is verified once"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", svc.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let late_total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("erasure_late_rows_total{store=\"conversations\"} "))
        .expect("erasure_late_rows_total is exported")
        .parse()
        .unwrap();
    assert!(late_total >= 4.0, "{late_total}");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_request_with_nothing_late_is_verified_with_zero_late_rows_by_the_service() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_VERIFY_AFTER", "0"),
        ("ERASURE_VERIFY_SWEEP_SECONDS", "1"),
    ])
    .await;
    let (bots, token) = platform(&env).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let id = erase_late_1(&env, &api, &token, &bots[0]).await;
    let verification = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || api.status_doc(&token, &id).await.verification,
        || "not verified".into(),
    )
    .await;
    assert_eq!(verification.remaining_rows, 0);
    assert_eq!(verification.late_rows.total(), 0);
    assert_eq!(verification.late_rows.0.len(), 3, "every store is named");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_verifier_that_dies_mid_way_is_resumed_and_the_late_count_stays_exact() {
    let env = TestEnv::with_vars(&[("ERASURE_VERIFY_AFTER", "3600")]).await;
    let (bots, token) = platform(&env).await;
    let svc = env.start(Role::All).await;
    let id = erase_late_1(&env, &Api::new(&svc), &token, &bots[0]).await;
    svc.shutdown().await;
    env.rows("u-late-1", &bots[0], 200).await;

    // 600 late rows at 300 rows/s take two seconds at least: time to stop it half-way.
    let slow = verifier(
        &env,
        &[
            ("ERASURE_VERIFY_AFTER", "0"),
            ("ERASURE_MAX_ROWS_PER_SECOND", "300"),
        ],
    );
    let first = tokio::spawn(async move { slow.step(&CancellationToken::new()).await });
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || (erased_since_baseline(&env, &id).await.unwrap_or(0) > 0).then_some(()),
        || "no late row erased".into(),
    )
    .await;
    // What a crash does: the work stops wherever it is; its lease stays behind.
    first.abort();
    let _ = first.await;
    let erased = erased_since_baseline(&env, &id).await.unwrap();
    assert!((1..600).contains(&erased), "stopped half-way: {erased}");
    assert!(proof(&env, &id).await["verified_at"].is_null());

    let next = verifier(&env, &[("ERASURE_VERIFY_AFTER", "0")]);
    assert_eq!(
        next.step(&CancellationToken::new()).await.unwrap(),
        Proved::Idle,
        "the dead verifier's lease still holds"
    );
    // The lease runs out (here at once rather than in a minute).
    sqlx::query("UPDATE erasure.proofs SET leased_until = now() WHERE request_id = $1")
        .bind(&id)
        .execute(&env.pool)
        .await
        .unwrap();
    let Proved::Verified { late, .. } = next.step(&CancellationToken::new()).await.unwrap() else {
        panic!("resumed and verified")
    };
    assert_eq!(late.total(), 600, "each late row counted once: {late:?}");
    assert_eq!(env.count_rows("u-late-1", &bots[0]).await, 0);
    assert_eq!(proof(&env, &id).await["attempts"], 2);
}

#[tokio::test]
async fn a_due_verification_survives_sigkill_before_and_during_its_run() {
    let env = TestEnv::new().await;
    let (bots, token) = platform(&env).await;
    let fast = [
        ("ERASURE_VERIFY_AFTER", "0"),
        ("ERASURE_VERIFY_SWEEP_SECONDS", "1"),
    ];

    // The first process completes the request and would verify it in an hour; it dies.
    let first = Process::spawn(&env, "all", &[("ERASURE_VERIFY_AFTER", "3600")]).await;
    let api = Api {
        base: format!("http://{}", first.http),
        http: reqwest::Client::new(),
    };
    let id = erase_late_1(&env, &api, &token, &bots[0]).await;
    env.rows("u-late-1", &bots[0], 400).await;
    first.kill().await;

    // The next one finds it due in the database and starts on it, slowly (1,200 late rows at
    // 300 rows/s); it dies mid-way.
    let second = Process::spawn(
        &env,
        "all",
        &[fast[0], fast[1], ("ERASURE_MAX_ROWS_PER_SECOND", "300")],
    )
    .await;
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || (erased_since_baseline(&env, &id).await.unwrap_or(0) > 0).then_some(()),
        || {
            format!(
                "the second process did not start verifying:\n{}",
                second.log_text()
            )
        },
    )
    .await;
    second.kill().await;
    let erased = erased_since_baseline(&env, &id).await.unwrap();
    assert!((1..1200).contains(&erased), "killed mid-way: {erased}");
    assert!(proof(&env, &id).await["verified_at"].is_null());

    // The dead process's lease runs out (here at once), and a third process finishes.
    sqlx::query("UPDATE erasure.proofs SET leased_until = now() WHERE request_id = $1")
        .bind(&id)
        .execute(&env.pool)
        .await
        .unwrap();
    let third = Process::spawn(&env, "all", &fast).await;
    let api = Api {
        base: format!("http://{}", third.http),
        http: reqwest::Client::new(),
    };
    let doc = eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            let (_, doc) = api.status(&token, &id).await;
            doc["verification"].is_object().then_some(doc)
        },
        || format!("not verified:\n{}", third.log_text()),
    )
    .await;
    assert_eq!(
        doc["verification"]["lateRows"],
        json!({"conversations": 400, "sessions": 400, "analytics": 400})
    );
    assert_eq!(doc["verification"]["remainingRows"], 0);
    assert_eq!(env.count_rows("u-late-1", &bots[0]).await, 0);
    assert!(proof(&env, &id).await["attempts"].as_i64().unwrap() >= 2);
    third.kill().await;
}
