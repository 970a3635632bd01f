//! The end-to-end path: intake → queue → workers → database.

use std::time::Duration;

use erasure::startup::Role;
use serde_json::json;

use crate::helpers::{Api, TestEnv};

#[tokio::test]
async fn an_erase_request_deletes_every_target_row_and_nothing_else() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 3).await;
    let other = env.account("acct-b", 1).await;
    for u in ["u-1", "u-2", "u-3"] {
        env.user_with_rows(u, bots.iter().chain(&other), 7).await;
    }
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let before = env
        .checksum_outside(&["u-1", "u-2"], &[&bots[0], &bots[1]])
        .await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);

    let (code, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1", "u-2"], "botIds": [bots[0], bots[1]]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "in-progress");
    let id = body["requestId"].as_str().unwrap().to_string();
    assert!(id.starts_with("eud-"));

    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    for u in ["u-1", "u-2"] {
        for b in &bots[..2] {
            assert_eq!(env.count_rows(u, b).await, 0, "{u} in {b} is erased");
        }
        assert_eq!(
            env.count_rows(u, &bots[2]).await,
            21,
            "{u} in an untargeted bot is kept"
        );
    }
    assert_eq!(
        env.checksum_outside(&["u-1", "u-2"], &[&bots[0], &bots[1]])
            .await,
        before
    );

    let doc = api.status_doc(&token, &id).await;
    assert_eq!(doc.status, "completed");
    assert_eq!(doc.id, id);
    assert_eq!(doc.progress.tasks_total, 2);
    assert_eq!(doc.progress.tasks_done, 2);
    assert_eq!(doc.progress.rows_deleted.get("conversations"), 28);
    assert_eq!(doc.progress.rows_deleted.get("sessions"), 28);
    assert_eq!(doc.progress.rows_deleted.get("analytics"), 28);
    assert!(doc.completed_on.is_some());
    assert!(doc.response.iter().all(|u| u.status == "SUCCESS"));
    svc.shutdown().await;
}

#[tokio::test]
async fn a_request_over_many_bots_continues_in_halves_and_counts_every_bot_exactly() {
    // Batches of 4 rows, one per store and delivery: every message needs many slices, and
    // each continuation splits its bots in two.
    let env = TestEnv::with_vars(&[
        ("ERASURE_BATCH_SIZE", "4"),
        ("ERASURE_BATCHES_PER_SLICE", "1"),
    ])
    .await;
    let bots = env.account("acct-a", 5).await;
    let other = env.account("acct-b", 1).await;
    // Bot i holds 3·i rows per user and store (the first none), so that a count landing on
    // the wrong bot shows.
    for u in ["u-1", "u-2", "u-3"] {
        env.user(u, None, None).await;
        for (i, b) in bots.iter().enumerate() {
            env.rows(u, b, 3 * i as i64).await;
        }
        env.rows(u, &other[0], 5).await;
    }
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let bot_refs: Vec<&str> = bots.iter().map(String::as_str).collect();
    let before = env.checksum_outside(&["u-1", "u-2"], &bot_refs).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);

    let (code, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1", "u-2"], "RemoveDataFromAllBots": true}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["requestId"].as_str().unwrap().to_string();
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(60)).await,
        "completed"
    );
    for u in ["u-1", "u-2"] {
        for b in &bots {
            assert_eq!(env.count_rows(u, b).await, 0, "{u} in {b} is erased");
        }
    }
    assert_eq!(
        env.checksum_outside(&["u-1", "u-2"], &bot_refs).await,
        before
    );

    let per_bot: Vec<(String, String, i64, i64, i64, i32)> = sqlx::query_as(
        "SELECT t.bot_id, t.status, t.rows_conversations, t.rows_sessions, t.rows_analytics, k.slice
           FROM erasure.task_totals t JOIN erasure.tasks k USING (request_id, bot_id)
          WHERE t.request_id = $1 ORDER BY t.bot_id",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_bot.len(), 5, "one task per bot");
    for (i, b) in bots.iter().enumerate() {
        let (_, status, c, s, a, _) = per_bot.iter().find(|r| &r.0 == b).unwrap();
        let n = 2 * 3 * i as i64;
        assert_eq!(status, "done", "{b}");
        assert_eq!(
            (*c, *s, *a),
            (n, n, n),
            "{b}: each row counted once, on its bot"
        );
    }
    assert!(
        per_bot.iter().any(|r| r.5 >= 3),
        "the work took several slices: {per_bot:?}"
    );
    let doc = api.status_doc(&token, &id).await;
    assert_eq!((doc.progress.tasks_total, doc.progress.tasks_done), (5, 5));
    assert_eq!(doc.progress.rows_deleted.get("conversations"), 60);
    svc.shutdown().await;
}
