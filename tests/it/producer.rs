//! A platform service that publishes the erase message to the queue itself gets the same
//! result as an HTTP caller.

use std::time::Duration;

use erasure::{contract::ERASE_ROUTING_KEY, startup::Role};
use serde_json::json;

use crate::helpers::{TestEnv, eventually, publish_raw};

#[tokio::test]
async fn a_message_published_straight_to_the_queue_is_recorded_and_erased() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 2).await;
    env.user("u-1", Some("one@example.com"), None).await;
    env.user("u-2", None, None).await;
    env.channel_identity("telegram", "5550001", "u-2").await;
    for u in ["u-1", "u-2"] {
        for b in &bots {
            env.rows(u, b, 5).await;
        }
    }
    let before = env.checksum_outside(&["u-1", "u-2"], &[&bots[0]]).await;
    let svc = env.start(Role::Worker).await;
    let message = json!({
        "version": 1, "requestId": "eud-producer-1", "accountId": "acct-a",
        "userIds": ["one@example.com", {"channelId": "telegram", "channelUserId": "5550001"}],
        "botIds": [bots[0]], "removeDataFromAllBots": false,
        "requestedBy": "cs-platform-service", "requestedAt": "2026-11-28T10:00:00Z"
    });
    publish_raw(&env, ERASE_ROUTING_KEY, message.to_string().as_bytes()).await;
    assert_eq!(
        env.wait_settled("eud-producer-1", Duration::from_secs(30))
            .await,
        "completed"
    );
    assert_eq!(env.count_rows("u-1", &bots[0]).await, 0);
    assert_eq!(env.count_rows("u-2", &bots[0]).await, 0);
    assert_eq!(
        env.count_rows("u-1", &bots[1]).await,
        15,
        "untargeted bot kept"
    );
    assert_eq!(
        env.checksum_outside(&["u-1", "u-2"], &[&bots[0]]).await,
        before
    );
    let (source, requested_by): (String, String) = sqlx::query_as(
        "SELECT source, requested_by FROM erasure.requests WHERE request_id = 'eud-producer-1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (source.as_str(), requested_by.as_str()),
        ("queue", "cs-platform-service")
    );
    let outcomes = env.user_outcomes("eud-producer-1").await;
    assert_eq!(
        outcomes[1].0,
        r#"{"channelId":"telegram","channelUserId":"5550001"}"#
    );
    assert!(outcomes.iter().all(|(_, s, _)| s == "SUCCESS"));
    svc.shutdown().await;
}

#[tokio::test]
async fn a_producer_naming_another_accounts_bot_is_failed_and_nothing_is_erased() {
    let env = TestEnv::new().await;
    env.account("acct-a", 1).await;
    let theirs = env.account("acct-b", 1).await;
    env.user("u-1", None, None).await;
    env.rows("u-1", &theirs[0], 5).await;
    let svc = env.start(Role::Worker).await;
    let message = json!({
        "version": 1, "requestId": "eud-producer-2", "accountId": "acct-a",
        "userIds": ["u-1"], "botIds": [theirs[0]], "requestedBy": "cs-platform-service"
    });
    publish_raw(&env, ERASE_ROUTING_KEY, message.to_string().as_bytes()).await;
    assert_eq!(
        env.wait_settled("eud-producer-2", Duration::from_secs(30))
            .await,
        "failed"
    );
    assert_eq!(env.count_rows("u-1", &theirs[0]).await, 15);
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT failure_reason FROM erasure.requests WHERE request_id = 'eud-producer-2'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        reason
            .unwrap()
            .contains("not a bot of the request's account")
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_malformed_message_reusing_a_request_id_does_not_fail_that_request() {
    // Slow enough that the bad message arrives while the request is under way.
    let env = TestEnv::with_vars(&[
        ("ERASURE_BATCH_SIZE", "20"),
        ("ERASURE_BATCHES_PER_SLICE", "1"),
        ("ERASURE_MAX_ROWS_PER_SECOND", "200"),
    ])
    .await;
    let bots = env.account("acct-a", 1).await;
    env.account("acct-b", 0).await;
    env.user("u-1", None, None).await;
    env.rows("u-1", &bots[0], 200).await;
    let svc = env.start(Role::Worker).await;
    let good = json!({
        "version": 1, "requestId": "eud-shared-id", "accountId": "acct-a",
        "userIds": ["u-1"], "botIds": [bots[0]], "requestedBy": "svc-a"
    });
    publish_raw(&env, ERASE_ROUTING_KEY, good.to_string().as_bytes()).await;
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            let planned: Option<i32> = sqlx::query_scalar(
                "SELECT tasks_total FROM erasure.request_status WHERE request_id = 'eud-shared-id'",
            )
            .fetch_optional(&env.pool)
            .await
            .unwrap();
            (planned.unwrap_or(0) > 0).then_some(())
        },
        || "the request was not planned".into(),
    )
    .await;
    // Another producer, or a broken retry, sends garbage under the same id.
    for bad in [
        json!({"version": 1, "requestId": "eud-shared-id", "accountId": "acct-b", "userIds": []}),
        json!({"version": 1, "requestId": "eud-shared-id", "accountId": "acct-a", "userIds": []}),
    ] {
        publish_raw(&env, ERASE_ROUTING_KEY, bad.to_string().as_bytes()).await;
    }
    env.wait_dead_letters(2).await;
    assert_eq!(
        env.request_status("eud-shared-id").await.as_deref(),
        Some("in-progress"),
        "the request under way is not failed by someone else's garbage"
    );
    assert_eq!(
        env.wait_settled("eud-shared-id", Duration::from_secs(60))
            .await,
        "completed"
    );
    assert_eq!(env.count_rows("u-1", &bots[0]).await, 0);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM erasure.dead_letters WHERE request_id = 'eud-shared-id'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, 2,
        "the refusals are still recorded for the operator"
    );
    svc.shutdown().await;
}

/// Publishes one-user erase requests of `users` straight to the queue, `apart` from each
/// other, and answers how many transactions completed them (requests settled together share
/// their `completed_at`, the transaction's time).
async fn burst(env: &TestEnv, tag: &str, apart: Duration) -> usize {
    let bots = env.account("acct-burst", 2).await;
    let users: Vec<String> = (1..=3).map(|i| format!("u-{tag}-{i}")).collect();
    for u in &users {
        env.user_with_rows(u, &bots, 4).await;
    }
    let svc = env.start(Role::Worker).await;
    // Consuming before the first is published: the spacing is the broker's, not a backlog's.
    let ready = format!("http://{}/readyz", svc.http_addr);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            let r = reqwest::get(&ready).await.ok()?;
            r.status().is_success().then_some(())
        },
        || "the worker did not get ready".into(),
    )
    .await;
    let ids: Vec<String> = (1..=3).map(|i| format!("eud-{tag}-{i}")).collect();
    for (i, (id, user)) in ids.iter().zip(&users).enumerate() {
        if i > 0 {
            tokio::time::sleep(apart).await;
        }
        let message = json!({
            "version": 1, "requestId": id, "accountId": "acct-burst",
            "userIds": [user], "botIds": [], "removeDataFromAllBots": true,
            "requestedBy": "cs-platform-service", "requestedAt": "2026-11-28T10:00:00Z"
        });
        publish_raw(env, ERASE_ROUTING_KEY, message.to_string().as_bytes()).await;
    }
    for id in &ids {
        assert_eq!(
            env.wait_settled(id, Duration::from_secs(30)).await,
            "completed"
        );
    }
    for u in &users {
        for b in &bots {
            assert_eq!(env.count_rows(u, b).await, 0, "{u}'s rows in {b}");
        }
    }
    svc.shutdown().await;
    sqlx::query_scalar::<_, i64>(
        "SELECT count(DISTINCT completed_at) FROM erasure.requests WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&env.pool)
    .await
    .unwrap() as usize
}

#[tokio::test]
async fn requests_that_keep_arriving_are_planned_and_erased_together() {
    // Each arrives well within the pause of the one before, and all within the wait.
    let env = TestEnv::with_vars(&[
        ("ERASURE_COALESCE_WAIT_MS", "4000"),
        ("ERASURE_COALESCE_PAUSE_MS", "2000"),
    ])
    .await;
    assert_eq!(
        burst(&env, "together", Duration::from_millis(300)).await,
        1,
        "one group"
    );
}

#[tokio::test]
async fn without_a_wait_requests_arriving_apart_are_worked_as_they_come() {
    let env = TestEnv::with_vars(&[("ERASURE_COALESCE_WAIT_MS", "0")]).await;
    assert_eq!(
        burst(&env, "apart", Duration::from_millis(300)).await,
        3,
        "one group each"
    );
}

#[tokio::test]
async fn the_wait_for_more_requests_ends_at_its_most() {
    // The pause never elapses between arrivals, the wait does: the burst is split.
    let env = TestEnv::with_vars(&[
        ("ERASURE_COALESCE_WAIT_MS", "400"),
        ("ERASURE_COALESCE_PAUSE_MS", "3000"),
    ])
    .await;
    assert!(burst(&env, "most", Duration::from_millis(700)).await >= 2);
}
