//! Rules of erasure (DESIGN.md section 2): identity resolution, protected users, account
//! scoping, idempotence.

use std::time::Duration;

use erasure::startup::Role;
use serde_json::json;

use crate::helpers::{Api, TestEnv};

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_kind_of_user_id_resolves_and_unknown_ones_are_not_found() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let bot = &bots[0];
    env.user("u-plain", None, None).await;
    env.user("u-mail", Some("Jane.Doe@Example.com"), None).await;
    env.user("u-ent", None, Some("ent-77")).await;
    env.user("u-bare", None, None).await;
    env.channel_identity("telegram", "5550001", "u-bare").await;
    env.user("u-pair", None, None).await;
    env.channel_identity("whatsapp", "+15550002", "u-pair")
        .await;
    env.user("u-bystander", Some("bystander@example.com"), Some("ent-78"))
        .await;
    env.channel_identity("telegram", "+15550002", "u-bystander")
        .await;
    for u in [
        "u-plain",
        "u-mail",
        "u-ent",
        "u-bare",
        "u-pair",
        "u-bystander",
    ] {
        env.rows(u, bot, 5).await;
    }
    let targets = ["u-plain", "u-mail", "u-ent", "u-bare", "u-pair"];
    let before = env.checksum_outside(&targets, &[bot]).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (code, body) = api
        .erase(
            &token,
            &json!({"userIds": [
                "u-plain",
                "jane.doe@example.com",
                "ent-77",
                "5550001",
                {"channelId": "whatsapp", "channelUserId": "+15550002"},
                "ghost@example.com"
            ], "botIds": [bot]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    for u in targets {
        assert_eq!(env.count_rows(u, bot).await, 0, "{u} is erased");
    }
    assert_eq!(
        env.count_rows("u-bystander", bot).await,
        15,
        "the pair names one channel only"
    );
    assert_eq!(env.checksum_outside(&targets, &[bot]).await, before);
    let statuses: Vec<String> = env
        .user_outcomes(id)
        .await
        .into_iter()
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(
        statuses,
        [
            "SUCCESS",
            "SUCCESS",
            "SUCCESS",
            "SUCCESS",
            "SUCCESS",
            "NOT_FOUND"
        ]
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn protected_users_are_rejected_with_their_reason_and_keep_their_data() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 2).await;
    let elsewhere = env.account("acct-z", 1).await;
    for u in [
        "u-owner",
        "u-member",
        "u-botowner",
        "u-codev",
        "u-both",
        "u-normal",
    ] {
        env.user(u, None, None).await;
        env.rows(u, &bots[0], 4).await;
    }
    // Protection counts anywhere on the platform, not only in the requesting account.
    let q = |sql: &'static str, a: &str, b: &str, c: &str| {
        let pool = env.pool.clone();
        let (a, b, c) = (a.to_string(), b.to_string(), c.to_string());
        async move {
            sqlx::query(sql)
                .bind(a)
                .bind(b)
                .bind(c)
                .execute(&pool)
                .await
                .unwrap()
        }
    };
    let member =
        "INSERT INTO platform.account_members (account_id, user_id, role) VALUES ($1, $2, $3)";
    let collab =
        "INSERT INTO platform.bot_collaborators (bot_id, user_id, role) VALUES ($1, $2, $3)";
    q(member, "acct-z", "u-owner", "owner").await;
    q(member, "acct-a", "u-member", "member").await;
    q(collab, &elsewhere[0], "u-botowner", "owner").await;
    q(collab, &bots[1], "u-codev", "co_developer").await;
    q(collab, &bots[1], "u-both", "co_developer").await;
    q(member, "acct-z", "u-both", "member").await;
    let before = env.checksum_outside(&["u-normal"], &[&bots[0]]).await;

    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(&token, &json!({"userIds": ["u-owner", "u-member", "u-botowner", "u-codev", "u-both", "u-normal"], "botIds": [bots[0]]}))
        .await;
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    let outcomes = env.user_outcomes(id).await;
    let expect = [
        ("u-owner", "REJECTED", Some("account_owner")),
        ("u-member", "REJECTED", Some("account_member")),
        ("u-botowner", "REJECTED", Some("bot_owner")),
        ("u-codev", "REJECTED", Some("bot_co_developer")),
        ("u-both", "REJECTED", Some("account_member")),
        ("u-normal", "SUCCESS", None),
    ];
    for ((user, status, reason), (r, s, why)) in expect.iter().zip(&outcomes) {
        assert_eq!(
            (r.as_str(), s.as_str(), why.as_deref()),
            (*user, *status, *reason)
        );
    }
    for u in ["u-owner", "u-member", "u-botowner", "u-codev", "u-both"] {
        assert_eq!(env.count_rows(u, &bots[0]).await, 12, "{u} keeps its data");
    }
    assert_eq!(env.count_rows("u-normal", &bots[0]).await, 0);
    assert_eq!(
        env.checksum_outside(&["u-normal"], &[&bots[0]]).await,
        before
    );

    let doc = api.status_doc(&token, id).await;
    assert_eq!(doc.response[3].reason.as_deref(), Some("bot_co_developer"));
    let users_rejected: i32 = sqlx::query_scalar(
        "SELECT users_rejected FROM erasure.request_status WHERE request_id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(users_rejected, 5);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_every_user_is_rejected_ends_rejected() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.user("u-owner", None, None).await;
    sqlx::query("INSERT INTO platform.account_members (account_id, user_id, role) VALUES ('acct-a', 'u-owner', 'owner')")
        .execute(&env.pool)
        .await
        .unwrap();
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-owner"], "botIds": [bots[0]]}),
        )
        .await;
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "rejected");
    let doc = api.status_doc(&token, id).await;
    assert_eq!(doc.status, "rejected");
    assert!(doc.completed_on.is_some());
    svc.shutdown().await;
}

#[tokio::test]
async fn remove_data_from_all_bots_erases_every_bot_of_the_account_and_no_other() {
    let env = TestEnv::new().await;
    let mine = env.account("acct-a", 3).await;
    let theirs = env.account("acct-b", 2).await;
    env.user("u-1", None, None).await;
    for b in mine.iter().chain(&theirs) {
        env.rows("u-1", b, 6).await;
    }
    let mine_refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    let before = env.checksum_outside(&["u-1"], &mine_refs).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    // botIds is ignored, even when it names another account's bot.
    let (code, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": [theirs[0]], "RemoveDataFromAllBots": true}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    for b in &mine {
        assert_eq!(env.count_rows("u-1", b).await, 0);
    }
    for b in &theirs {
        assert_eq!(
            env.count_rows("u-1", b).await,
            18,
            "another account's bot is untouched"
        );
    }
    assert_eq!(env.checksum_outside(&["u-1"], &mine_refs).await, before);
    let doc = api.status_doc(&token, id).await;
    assert!(doc.remove_data_from_all_bots);
    assert_eq!(doc.progress.tasks_total, 3);
    svc.shutdown().await;
}

#[tokio::test]
async fn erasing_the_same_user_twice_is_harmless() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.user("u-1", None, None).await;
    env.rows("u-1", &bots[0], 10).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});
    let (_, first) = api.erase(&token, &body).await;
    let (_, second) = api.erase(&token, &body).await;
    let (a, b) = (
        first["requestId"].as_str().unwrap(),
        second["requestId"].as_str().unwrap(),
    );
    assert_ne!(a, b);
    assert_eq!(env.wait_settled(a, SETTLE).await, "completed");
    assert_eq!(env.wait_settled(b, SETTLE).await, "completed");
    let total = api
        .status_doc(&token, a)
        .await
        .progress
        .rows_deleted
        .get("conversations")
        + api
            .status_doc(&token, b)
            .await
            .progress
            .rows_deleted
            .get("conversations");
    assert_eq!(total, 10, "every row is counted by exactly one request");
    assert_eq!(env.count_rows("u-1", &bots[0]).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_user_with_no_rows_in_the_bot_is_a_success_with_nothing_deleted() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.user("u-1", None, None).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(&token, &json!({"userIds": ["u-1"], "botIds": [bots[0]]}))
        .await;
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    let doc = api.status_doc(&token, id).await;
    assert_eq!(doc.response[0].status, "SUCCESS");
    assert_eq!(
        doc.progress.rows_deleted.get("conversations") + doc.progress.rows_deleted.get("sessions"),
        0
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn many_users_across_bots_are_erased_in_bounded_batches() {
    // Batches far smaller than the data force many statements and several continuations.
    let env = TestEnv::with_vars(&[
        ("ERASURE_BATCH_SIZE", "7"),
        ("ERASURE_BATCHES_PER_SLICE", "2"),
    ])
    .await;
    let bots = env.account("acct-a", 2).await;
    let users: Vec<String> = (1..=6).map(|i| format!("u-{i}")).collect();
    for u in &users {
        env.user_with_rows(u, &bots, 9).await;
    }
    let targets: Vec<&str> = users[..4].iter().map(String::as_str).collect();
    let bot_refs: Vec<&str> = bots.iter().map(String::as_str).collect();
    let before = env.checksum_outside(&targets, &bot_refs).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(&token, &json!({"userIds": targets, "botIds": bots}))
        .await;
    let id = body["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    for u in &targets {
        for b in &bots {
            assert_eq!(env.count_rows(u, b).await, 0);
        }
    }
    assert_eq!(env.checksum_outside(&targets, &bot_refs).await, before);
    let doc = api.status_doc(&token, id).await;
    assert_eq!(doc.progress.rows_deleted.get("conversations"), 4 * 2 * 9);
    let slices: i32 =
        sqlx::query_scalar("SELECT max(slice) FROM erasure.tasks WHERE request_id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        slices >= 2,
        "the work was handed over between slices ({slices})"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_user_who_becomes_protected_mid_erasure_is_rejected_and_keeps_the_rest() {
    // Slow, small slices: the rules are applied again at every slice.
    let env = TestEnv::with_vars(&[
        ("ERASURE_BATCH_SIZE", "30"),
        ("ERASURE_BATCHES_PER_SLICE", "1"),
        ("ERASURE_MAX_ROWS_PER_SECOND", "300"),
    ])
    .await;
    let bots = env.account("acct-a", 2).await;
    for u in ["u-turncoat", "u-plain"] {
        env.user(u, None, None).await;
    }
    for b in &bots {
        env.rows("u-turncoat", b, 200).await;
        env.rows("u-plain", b, 3).await;
    }
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-turncoat", "u-plain"], "botIds": bots}),
        )
        .await;
    let id = body["requestId"].as_str().unwrap();
    // Once work has begun, the user becomes a co-developer of a bot.
    env.wait_progress(id, 1).await;
    sqlx::query("INSERT INTO platform.bot_collaborators (bot_id, user_id, role) VALUES ($1, 'u-turncoat', 'co_developer')")
        .bind(&bots[1])
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    let outcomes = env.user_outcomes(id).await;
    assert_eq!(outcomes[0].1, "REJECTED");
    assert_eq!(outcomes[0].2.as_deref(), Some("bot_co_developer"));
    assert_eq!(outcomes[1].1, "SUCCESS");
    let kept: i64 =
        env.count_rows("u-turncoat", &bots[0]).await + env.count_rows("u-turncoat", &bots[1]).await;
    assert!(
        kept > 0,
        "the rest of a newly protected user's data is kept"
    );
    for b in &bots {
        assert_eq!(env.count_rows("u-plain", b).await, 0);
    }
    svc.shutdown().await;
}
