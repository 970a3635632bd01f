//! The HTTP contract of the intake: answers, validation errors, and that a refused request
//! records nothing.

use erasure::startup::Role;
use serde_json::{Value, json};

use crate::helpers::{Api, TestEnv};

async fn recorded_requests(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM erasure.requests")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn bad_bodies_get_400_with_specific_errors_and_record_nothing() {
    let env =
        TestEnv::with_vars(&[("ERASURE_MAX_USER_IDS", "3"), ("ERASURE_MAX_BOT_IDS", "2")]).await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let long = "x".repeat(257);
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (json!([1, 2]), "invalid_type", None),
        (
            json!({"botIds": [bots[0]]}),
            "missing_field",
            Some("userIds"),
        ),
        (
            json!({"userIds": [], "botIds": [bots[0]]}),
            "empty_list",
            Some("userIds"),
        ),
        (
            json!({"userIds": ["a", "b", "c", "d"], "botIds": [bots[0]]}),
            "too_many",
            Some("userIds"),
        ),
        (
            json!({"userIds": ["a"], "botIds": ["st-1", "st-2", "st-3"]}),
            "too_many",
            Some("botIds"),
        ),
        (
            json!({"userIds": ["   "], "botIds": [bots[0]]}),
            "blank_id",
            Some("userIds[0]"),
        ),
        (
            json!({"userIds": [long], "botIds": [bots[0]]}),
            "id_too_long",
            Some("userIds[0]"),
        ),
        (
            json!({"userIds": ["a", "a"], "botIds": [bots[0]]}),
            "duplicate",
            Some("userIds[1]"),
        ),
        (
            json!({"userIds": ["a"], "botIds": [bots[0], bots[0]]}),
            "duplicate",
            Some("botIds[1]"),
        ),
        (json!({"userIds": ["a"]}), "empty_list", Some("botIds")),
        (
            json!({"userIds": "a", "botIds": [bots[0]]}),
            "invalid_type",
            Some("userIds"),
        ),
        (
            json!({"userIds": [{"channelId": "telegram"}], "botIds": [bots[0]]}),
            "missing_field",
            Some("userIds[0].channelUserId"),
        ),
        (
            json!({"userIds": ["a"], "botIds": [bots[0]], "RemoveDataFromAllBots": "yes"}),
            "invalid_type",
            Some("RemoveDataFromAllBots"),
        ),
    ];
    for (body, code, field) in cases {
        let (status, answer) = api.erase(&token, &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(codes(&answer), [code], "{body} → {answer}");
        assert_eq!(
            answer["errors"][0]["field"].as_str(),
            field,
            "{body} → {answer}"
        );
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Malformed JSON.
    let r = api
        .http
        .delete(format!("{}/api/public/bot/eraseUsersData", api.base))
        .header("auth", &token)
        .body("{\"userIds\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(codes(&r.json().await.unwrap()), ["invalid_json"]);
    assert_eq!(recorded_requests(&env).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn an_oversize_body_gets_413() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let padding = "p".repeat(1024 * 1024 + 1);
    let (status, body) = api
        .erase(
            &token,
            &json!({"userIds": ["a"], "botIds": [bots[0]], "pad": padding}),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(codes(&body), ["too_large"]);
    assert_eq!(recorded_requests(&env).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn post_and_bearer_are_accepted_like_delete_and_auth() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let r = api
        .http
        .post(format!("{}/api/public/bot/eraseUsersData", api.base))
        .bearer_auth(&token)
        .json(&json!({"userIds": ["u-1"], "botIds": [bots[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "exactly requestId and status: {body}"
    );
    assert_eq!(body["status"], "in-progress");
    let id = body["requestId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id.strip_prefix("eud-").unwrap()).is_ok());
    assert_eq!(recorded_requests(&env).await, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn bots_outside_the_apps_account_are_refused_by_name() {
    let env = TestEnv::new().await;
    let mine = env.account("acct-a", 1).await;
    let theirs = env.account("acct-b", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);

    let (status, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": [mine[0], theirs[0]]}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(codes(&body), ["forbidden_bot"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&theirs[0])
    );

    let (status, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": ["st-nowhere"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(codes(&body), ["unknown_bot"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("st-nowhere")
    );
    assert_eq!(recorded_requests(&env).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn tokens_are_required_and_scoped() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, unscoped) = env.app("acct-a", &["read_only"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});

    let r = api
        .http
        .delete(format!("{}/api/public/bot/eraseUsersData", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, answer) = api.erase("not.a.jwt", &body).await;
    assert_eq!(status, 401);
    assert!(!answer.to_string().contains("not.a.jwt"));
    let (status, answer) = api.erase(&unscoped, &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        !answer.to_string().contains(&unscoped),
        "error bodies never echo the token"
    );
    let (status, _) = api.status(&unscoped, "eud-1").await;
    assert_eq!(status, 403);
    assert_eq!(recorded_requests(&env).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn status_of_another_accounts_request_is_404() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.account("acct-b", 0).await;
    let (_, _, token_a) = env.app("acct-a", &["delete_users_data"]).await;
    let (_, _, token_b) = env.app("acct-b", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(&token_a, &json!({"userIds": ["u-1"], "botIds": [bots[0]]}))
        .await;
    let id = body["requestId"].as_str().unwrap();

    assert_eq!(api.status(&token_a, id).await.0, 200);
    let (status, answer) = api.status(&token_b, id).await;
    assert_eq!(status, 404);
    assert_eq!(codes(&answer), ["not_found"]);
    assert_eq!(api.status(&token_a, "eud-does-not-exist").await.0, 404);
    assert_eq!(api.status(&token_a, "not-an-id").await.0, 404);
    svc.shutdown().await;
}

#[tokio::test]
async fn the_status_document_has_the_contract_shape_while_in_progress() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    // Intake only: nothing consumes, so the request stays in progress.
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let (_, body) = api
        .erase(&token, &json!({"userIds": ["u-1", {"channel_id": "telegram", "channel_user_id": "42"}], "botIds": [bots[0]]}))
        .await;
    let id = body["requestId"].as_str().unwrap();
    let (status, doc) = api.status(&token, id).await;
    assert_eq!(status, 200);
    assert_eq!(doc["_id"], id);
    assert_eq!(doc["requestId"], id);
    assert_eq!(doc["status"], "in-progress");
    assert_eq!(doc["RemoveDataFromAllBots"], false);
    assert!(doc["completedOn"].is_null());
    let created = doc["createdOn"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == "2026-11-28T10:00:00.000Z".len(),
        "{created}"
    );
    assert!(doc["lastUpdatedOn"].is_string());
    assert_eq!(
        doc["response"],
        json!([
            {"userId": "u-1", "status": "IN_PROGRESS"},
            {"userId": {"channelId": "telegram", "channelUserId": "42"}, "status": "IN_PROGRESS"}
        ])
    );
    assert_eq!(
        doc["progress"],
        json!({"tasksTotal": 0, "tasksDone": 0, "rowsDeleted": {"conversations": 0, "sessions": 0, "analytics": 0}})
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_retried_call_with_the_same_idempotency_key_gets_the_first_answer() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});
    let (s1, a1) = api.erase_with_key(&token, "retry-1", &body).await;
    let (s2, a2) = api.erase_with_key(&token, "retry-1", &body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a1, a2);
    assert_eq!(recorded_requests(&env).await, 1);
    let (s3, a3) = api
        .erase_with_key(
            &token,
            "retry-1",
            &json!({"userIds": ["u-2"], "botIds": [bots[0]]}),
        )
        .await;
    assert_eq!(s3, 422, "{a3}");
    assert_eq!(recorded_requests(&env).await, 1);
    svc.shutdown().await;
}
