//! Who may call the intake and what it accepts: authentication, authorization within an
//! account, input limits and hostile identifiers, replays, and the per-app rate limit.

use std::time::Duration;

use erasure::{
    intake::auth,
    startup::{Role, Running},
    store::apps,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::helpers::{Api, TestEnv};

/// A key pair made for these tests only (`openssl genrsa 2048`); it protects nothing.
const PRIVATE_PEM: &str = include_str!("../fixtures/rs256-test-private.pem");
const PUBLIC_PEM: &str = include_str!("../fixtures/rs256-test-public.pem");

fn erase_url(api: &Api) -> String {
    format!("{}/api/public/bot/eraseUsersData", api.base)
}

/// An erase call with arbitrary headers; returns the status and the raw body text.
async fn erase_with(api: &Api, headers: &[(&str, HeaderValue)], body: &Value) -> (u16, String) {
    let mut req = api.http.delete(erase_url(api)).json(body);
    for (name, value) in headers {
        req = req.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.clone(),
        );
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Headers to send.
type Headers<'a> = Vec<(&'a str, HeaderValue)>;

fn text(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

/// Signs `claims` with `alg` and `key`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret).unwrap(),
        claims,
    )
}

fn rs256(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(PRIVATE_PEM.as_bytes()).unwrap(),
        claims,
    )
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn later() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

/// Registers an RS256 app with the fixture public key; returns its client id.
async fn rs256_app(env: &TestEnv, account: &str) -> String {
    let client_id = format!("cs-rs-{}", uuid::Uuid::new_v4());
    apps::insert(
        &env.pool,
        &apps::NewApp {
            client_id: &client_id,
            account_id: &account.into(),
            scopes: &[auth::SCOPE.to_string()],
            algorithm: "RS256",
            secret_sealed: None,
            public_key_pem: Some(PUBLIC_PEM),
            webhook_secret_sealed: None,
            callback_url: None,
            enforce_jti: false,
        },
    )
    .await
    .unwrap();
    client_id
}

async fn requests_recorded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM erasure.requests")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn start_intake(env: &TestEnv) -> (Running, Api) {
    let svc = env.start(Role::Intake).await;
    let api = Api::new(&svc);
    (svc, api)
}

#[tokio::test]
async fn hs256_and_rs256_tokens_are_accepted_in_either_header() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (hs_id, hs_secret, _) = env.app("acct-a", &[auth::SCOPE]).await;
    let rs_id = rs256_app(&env, "acct-a").await;
    let (svc, api) = start_intake(&env).await;
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});

    let hs = hs256(
        hs_secret.as_bytes(),
        &json!({"appId": hs_id, "exp": later()}),
    );
    let rs = rs256(&json!({"appId": rs_id, "sub": "anything", "exp": later()}));
    // Tokens without `exp` are valid: the contract enforces it only where present.
    let rs_no_exp = rs256(&json!({"appId": rs_id}));
    for token in [&hs, &rs, &rs_no_exp] {
        let (code, b) = erase_with(&api, &[("auth", text(token))], &body).await;
        assert_eq!(code, 202, "auth header: {b}");
        let (code, b) = erase_with(
            &api,
            &[("authorization", text(&format!("Bearer {token}")))],
            &body,
        )
        .await;
        assert_eq!(code, 202, "Authorization: Bearer: {b}");
    }
    assert_eq!(requests_recorded(&env).await, 6);
    let requested_by: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT requested_by FROM erasure.requests ORDER BY requested_by",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut expected = vec![hs_id, rs_id];
    expected.sort();
    assert_eq!(requested_by, expected);
    svc.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_never_echoed() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (hs_id, hs_secret, _) = env.app("acct-a", &[auth::SCOPE]).await;
    let rs_id = rs256_app(&env, "acct-a").await;
    let (svc, api) = start_intake(&env).await;
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});
    let secret = hs_secret.as_bytes();

    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"appId": hs_id}))
    );
    let none_upper = format!(
        "{}.{}.",
        b64(&json!({"alg": "None", "typ": "JWT"})),
        b64(&json!({"appId": hs_id}))
    );
    // An HS256 token keyed with the RS256 app's public key, which anyone can read.
    let confused = hs256(
        PUBLIC_PEM.as_bytes(),
        &json!({"appId": rs_id, "exp": later()}),
    );
    let expired = hs256(
        secret,
        &json!({"appId": hs_id, "exp": chrono::Utc::now().timestamp() - 3600}),
    );
    let not_yet = hs256(
        secret,
        &json!({"appId": hs_id, "nbf": later(), "exp": later() + 60}),
    );
    let unknown_app = hs256(secret, &json!({"appId": "cs-nobody", "exp": later()}));
    let no_app_id = hs256(secret, &json!({"sub": hs_id, "exp": later()}));
    let numeric_app_id = hs256(secret, &json!({"appId": 42, "exp": later()}));
    let wrong_secret = hs256(b"not-the-secret", &json!({"appId": hs_id, "exp": later()}));
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(secret).unwrap(),
        &json!({"appId": hs_id, "exp": later()}),
    );
    // An RS256 token presented for the HS256 app.
    let rs_for_hs = rs256(&json!({"appId": hs_id, "exp": later()}));
    let valid = hs256(secret, &json!({"appId": hs_id, "exp": later()}));
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
        parts[1] = b64(&json!({"appId": rs_id, "exp": later()}));
        parts.join(".")
    };
    let oversize = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "HS256"})),
        "A".repeat(9 * 1024),
        "sig"
    );

    let cases: Vec<(&str, Headers, String)> = vec![
        ("no header", vec![], String::new()),
        ("empty auth", vec![("auth", text(""))], String::new()),
        ("alg none", vec![("auth", text(&none))], none.clone()),
        (
            "alg None",
            vec![("auth", text(&none_upper))],
            none_upper.clone(),
        ),
        (
            "algorithm confusion",
            vec![("auth", text(&confused))],
            confused.clone(),
        ),
        ("expired", vec![("auth", text(&expired))], expired.clone()),
        (
            "not yet valid",
            vec![("auth", text(&not_yet))],
            not_yet.clone(),
        ),
        (
            "unknown app",
            vec![("auth", text(&unknown_app))],
            unknown_app.clone(),
        ),
        (
            "no appId",
            vec![("auth", text(&no_app_id))],
            no_app_id.clone(),
        ),
        (
            "numeric appId",
            vec![("auth", text(&numeric_app_id))],
            numeric_app_id.clone(),
        ),
        (
            "wrong secret",
            vec![("auth", text(&wrong_secret))],
            wrong_secret.clone(),
        ),
        ("HS512", vec![("auth", text(&hs512))], hs512.clone()),
        (
            "RS256 for an HS256 app",
            vec![("auth", text(&rs_for_hs))],
            rs_for_hs.clone(),
        ),
        (
            "tampered claims",
            vec![("auth", text(&tampered))],
            tampered.clone(),
        ),
        (
            "oversize",
            vec![("auth", text(&oversize))],
            oversize.clone(),
        ),
        (
            "garbage",
            vec![("auth", text("garbage-token-zz9"))],
            "garbage-token-zz9".into(),
        ),
        (
            "three garbage parts",
            vec![("auth", text("gar.bage.zz9"))],
            "gar.bage.zz9".into(),
        ),
        (
            "not UTF-8",
            vec![(
                "auth",
                HeaderValue::from_bytes(b"\xff\xfe.tok\xe9n.zz9").unwrap(),
            )],
            "zz9".into(),
        ),
        (
            "Basic scheme",
            vec![("authorization", text(&format!("Basic {valid}")))],
            valid.clone(),
        ),
        (
            "Bearer without a token",
            vec![("authorization", text("Bearer"))],
            String::new(),
        ),
    ];
    for (name, headers, token) in &cases {
        let (code, b) = erase_with(&api, headers, &body).await;
        assert_eq!(code, 401, "{name}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{name}: {b}"));
        assert_eq!(v["errors"][0]["code"], "unauthorized", "{name}: {b}");
        if !token.is_empty() {
            assert!(
                !b.contains(token.as_str()),
                "{name}: the body echoes the token"
            );
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(
                    !b.contains(part),
                    "{name}: the body echoes part of the token"
                );
            }
        }
        // The status endpoint authenticates the same way.
        let mut req = api.http.get(format!("{}/status/eud-x", erase_url(&api)));
        for (n, v) in headers {
            req = req.header(*n, v.clone());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{name} on status");
    }
    assert_eq!(requests_recorded(&env).await, 0, "nothing was recorded");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_disabled_app_is_refused_from_then_on() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (client_id, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});
    assert_eq!(api.erase(&token, &body).await.0, 202);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_erasure"))
        .args(["app", "disable", &client_id])
        .env("DATABASE_URL", &env.db_url)
        .env("ERASURE_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, b) = api.erase(&token, &body).await;
    assert_eq!(code, 401, "{b}");
    assert!(!b.to_string().contains(&token));
    assert_eq!(api.status(&token, "eud-anything").await.0, 401);
    assert_eq!(requests_recorded(&env).await, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn without_the_scope_erase_and_status_are_forbidden() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, scoped) = env.app("acct-a", &[auth::SCOPE]).await;
    let (_, _, unscoped) = env.app("acct-a", &["read_analytics"]).await;
    let (svc, api) = start_intake(&env).await;
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});
    let (code, accepted) = api.erase(&scoped, &body).await;
    assert_eq!(code, 202);
    let id = accepted["requestId"].as_str().unwrap();

    let (code, b) = api.erase(&unscoped, &body).await;
    assert_eq!(code, 403, "{b}");
    assert_eq!(b["errors"][0]["code"], "forbidden");
    assert!(b.to_string().contains("delete_users_data"));
    let (code, b) = api.status(&unscoped, id).await;
    assert_eq!(code, 403, "{b}");
    assert_eq!(requests_recorded(&env).await, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn bots_outside_the_apps_account_are_refused_naming_them() {
    let env = TestEnv::new().await;
    let mine = env.account("acct-a", 1).await;
    let theirs = env.account("acct-b", 1).await;
    let (_, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;

    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": [mine[0], theirs[0]]}),
        )
        .await;
    assert_eq!(code, 403, "{b}");
    assert_eq!(b["errors"][0]["code"], "forbidden_bot");
    assert_eq!(b["errors"][0]["field"], "botIds[1]");
    assert!(
        b["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&theirs[0])
    );
    assert_eq!(b["errors"].as_array().unwrap().len(), 1, "{b}");

    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": ["st-nowhere", mine[0]]}),
        )
        .await;
    assert_eq!(code, 400, "{b}");
    assert_eq!(b["errors"][0]["code"], "unknown_bot");
    assert_eq!(b["errors"][0]["field"], "botIds[0]");
    assert!(
        b["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("st-nowhere")
    );

    assert_eq!(requests_recorded(&env).await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn remove_from_all_bots_never_crosses_accounts() {
    let env = TestEnv::new().await;
    let mine = env.account("acct-a", 2).await;
    let theirs = env.account("acct-b", 2).await;
    env.user("u-shared", None, None).await;
    for b in mine.iter().chain(&theirs) {
        env.rows("u-shared", b, 5).await;
    }
    let (_, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);

    // botIds is ignored when erasing from every bot, even when it names another account's bot.
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-shared"], "botIds": [theirs[0]], "RemoveDataFromAllBots": true}),
        )
        .await;
    assert_eq!(code, 202, "{b}");
    let id = b["requestId"].as_str().unwrap();
    assert_eq!(
        env.wait_settled(id, Duration::from_secs(30)).await,
        "completed"
    );
    for bot in &mine {
        assert_eq!(env.count_rows("u-shared", bot).await, 0);
    }
    for bot in &theirs {
        assert_eq!(env.count_rows("u-shared", bot).await, 15, "{bot} is kept");
    }
    let task_bots: Vec<String> =
        sqlx::query_scalar("SELECT bot_id FROM erasure.tasks WHERE request_id = $1 ORDER BY 1")
            .bind(id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(task_bots, mine);
    svc.shutdown().await;
}

#[tokio::test]
async fn another_accounts_request_answers_404_like_a_missing_one() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.account("acct-b", 1).await;
    let (_, _, mine) = env.app("acct-a", &[auth::SCOPE]).await;
    let (_, _, theirs) = env.app("acct-b", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;
    let (_, b) = api
        .erase(&mine, &json!({"userIds": ["u-1"], "botIds": [bots[0]]}))
        .await;
    let id = b["requestId"].as_str().unwrap();

    assert_eq!(api.status(&mine, id).await.0, 200);
    let (code, foreign) = api.status(&theirs, id).await;
    assert_eq!(code, 404);
    let (code, missing) = api
        .status(&theirs, &format!("eud-{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(code, 404);
    assert_eq!(
        foreign, missing,
        "the answer does not confirm the id exists"
    );
    let (code, _) = api.status(&mine, "not-an-id'--").await;
    assert_eq!(code, 404);
    svc.shutdown().await;
}

#[tokio::test]
async fn input_limits_are_configurable_and_enforced() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_MAX_USER_IDS", "3"),
        ("ERASURE_MAX_BOT_IDS", "2"),
        ("ERASURE_MAX_ID_BYTES", "16"),
        ("ERASURE_MAX_BODY_BYTES", "600"),
    ])
    .await;
    let bots = env.account("acct-a", 3).await;
    let (_, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;
    let code_of = |b: &Value| b["errors"][0]["code"].as_str().unwrap_or("").to_string();

    let ok = api
        .erase(
            &token,
            &json!({"userIds": ["a", "b", "cccccccccccccccc"], "botIds": [bots[0], bots[1]]}),
        )
        .await;
    assert_eq!(ok.0, 202, "{}", ok.1);
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["a", "b", "c", "d"], "botIds": [bots[0]]}),
        )
        .await;
    assert_eq!((code, code_of(&b).as_str()), (400, "too_many"), "{b}");
    assert!(b.to_string().contains("at most 3"));
    let (code, b) = api
        .erase(&token, &json!({"userIds": ["a"], "botIds": bots}))
        .await;
    assert_eq!((code, code_of(&b).as_str()), (400, "too_many"), "{b}");
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["ddddddddddddddddd"], "botIds": [bots[0]]}),
        )
        .await;
    assert_eq!((code, code_of(&b).as_str()), (400, "id_too_long"), "{b}");
    assert_eq!(b["errors"][0]["field"], "userIds[0]");
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["a"], "botIds": [bots[0]], "padding": "x".repeat(600)}),
        )
        .await;
    assert_eq!((code, code_of(&b).as_str()), (413, "too_large"), "{b}");
    assert_eq!(requests_recorded(&env).await, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_refused_and_unknown_fields_ignored() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    let (_, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;

    for (body, field) in [
        (
            json!({"userIds": ["u-1", "u-2", "u-1"], "botIds": [bots[0]]}),
            "userIds[2]",
        ),
        (
            json!({"userIds": [{"channelId": "tg", "channelUserId": "5"},
                               {"channel_id": "tg", "channel_user_id": "5"}], "botIds": [bots[0]]}),
            "userIds[1]",
        ),
        (
            json!({"userIds": ["u-1"], "botIds": [bots[0], bots[0]]}),
            "botIds[1]",
        ),
    ] {
        let (code, b) = api.erase(&token, &body).await;
        assert_eq!(code, 400, "{b}");
        assert_eq!(b["errors"][0]["code"], "duplicate");
        assert_eq!(b["errors"][0]["field"], field);
    }
    assert_eq!(requests_recorded(&env).await, 0);

    // Documented decision: fields this service does not read are ignored, at the top level and
    // inside channel entries, since platform clients send more than erasure needs.
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1", {"channelId": "tg", "channelUserId": "5", "note": 1}],
                    "botIds": [bots[0]], "clientTrace": {"x": [1, 2]}, "dryRun": true}),
        )
        .await;
    assert_eq!(code, 202, "{b}");
    // A field it reads is strict even when an unknown one is present.
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": [bots[0]], "RemoveDataFromAllBots": "false", "dryRun": true}),
        )
        .await;
    assert_eq!(code, 400, "{b}");
    assert_eq!(b["errors"][0]["field"], "RemoveDataFromAllBots");
    // Two spellings of one field that disagree are refused, not resolved by preference.
    let (code, b) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1"], "botIds": [bots[0]],
                    "RemoveDataFromAllBots": false, "removeDataFromAllBots": true}),
        )
        .await;
    assert_eq!(code, 400, "{b}");
    assert_eq!(b["errors"][0]["code"], "conflicting_fields");
    assert_eq!(requests_recorded(&env).await, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn hostile_identifiers_are_refused_or_handled_as_plain_data() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 1).await;
    env.user("u-1", Some("jane@example.com"), None).await;
    env.user("u-2", None, Some("ent-2")).await;
    for u in ["u-1", "u-2"] {
        env.rows(u, &bots[0], 3).await;
    }
    let (_, _, token) = env.app("acct-a", &[auth::SCOPE]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let before = env.checksum_outside(&[], &[]).await;

    let refused: Vec<(&[u8], &str)> = vec![
        (
            br#"{"userIds":["a\u0000b"],"botIds":["st-acct-a-1"]}"#,
            "invalid_characters",
        ),
        (
            br#"{"userIds":["\u001b[31mred"],"botIds":["st-acct-a-1"]}"#,
            "invalid_characters",
        ),
        (
            br#"{"userIds":["line\nbreak"],"botIds":["st-acct-a-1"]}"#,
            "invalid_characters",
        ),
        (
            br#"{"userIds":["u-1"],"botIds":["st-\u0000"]}"#,
            "invalid_characters",
        ),
        (
            br#"{"userIds":["\ud800"],"botIds":["st-acct-a-1"]}"#,
            "invalid_json",
        ),
        (
            b"{\"userIds\":[\"\xff\xfe\"],\"botIds\":[\"st-acct-a-1\"]}",
            "invalid_json",
        ),
        (
            br#"{"userIds":["   "],"botIds":["st-acct-a-1"]}"#,
            "blank_id",
        ),
    ];
    for (body, code) in &refused {
        let r = api
            .http
            .delete(erase_url(&api))
            .header("auth", &token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            400,
            "{}",
            String::from_utf8_lossy(body)
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], *code, "{v}");
    }
    // 300 bytes of emoji: over the 256-byte limit although only 75 characters.
    let long = "😀".repeat(75);
    let (code, b) = api
        .erase(&token, &json!({"userIds": [long], "botIds": [bots[0]]}))
        .await;
    assert_eq!(code, 400);
    assert_eq!(b["errors"][0]["code"], "id_too_long");
    assert_eq!(requests_recorded(&env).await, 0);

    // Accepted as data: they match no user, nothing else changes, and they come back intact.
    let hostile = vec![
        "x'); DELETE FROM platform.conversations; --".to_string(),
        "' OR '1'='1".to_string(),
        "%".to_string(),
        "_".to_string(),
        "u-%".to_string(),
        "\\".to_string(),
        "\"}, {\"channelId\": \"tg\"".to_string(),
        "JANE@EXAMPLE.COM'--".to_string(),
        "ü".repeat(128),
        "\u{202e}moc.elpmaxe@enaj".to_string(),
        "𝔲-𝟣".to_string(),
    ];
    let mut entries: Vec<Value> = hostile.iter().map(|s| json!(s)).collect();
    entries
        .push(json!({"channelId": "tg'; DROP TABLE erasure.requests; --", "channelUserId": "%"}));
    let (code, b) = api
        .erase(&token, &json!({"userIds": entries, "botIds": [bots[0]]}))
        .await;
    assert_eq!(code, 202, "{b}");
    let id = b["requestId"].as_str().unwrap();
    assert_eq!(
        env.wait_settled(id, Duration::from_secs(30)).await,
        "completed"
    );
    let doc = api.status_doc(&token, id).await;
    assert_eq!(doc.response.len(), entries.len());
    for (outcome, given) in doc.response.iter().zip(&entries) {
        assert_eq!(
            &outcome.user_id, given,
            "the identifier comes back byte for byte"
        );
        assert_eq!(outcome.status, "NOT_FOUND", "{given} matched nobody");
    }
    assert_eq!(doc.progress.rows_deleted.get("conversations"), 0);
    assert_eq!(
        env.checksum_outside(&[], &[]).await,
        before,
        "nothing changed"
    );
    assert_eq!(env.count_rows("u-1", &bots[0]).await, 9);
    assert_eq!(env.count_rows("u-2", &bots[0]).await, 9);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_retried_call_with_the_same_idempotency_key_returns_the_first_answer() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 2).await;
    let (app_a, _, token_a) = env.app("acct-a", &[auth::SCOPE]).await;
    let (app_b, _, token_b) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;
    let body = json!({"userIds": ["u-1"], "botIds": [bots[0]]});

    let (code, first) = api.erase_with_key(&token_a, "retry-1", &body).await;
    assert_eq!(code, 202);
    for _ in 0..3 {
        let (code, again) = api.erase_with_key(&token_a, "retry-1", &body).await;
        assert_eq!(code, 202);
        assert_eq!(again, first);
    }
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasure.requests WHERE requested_by = $1")
            .bind(&app_a)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1, "a replay records nothing");

    let other = json!({"userIds": ["u-1"], "botIds": [bots[1]]});
    let (code, b) = api.erase_with_key(&token_a, "retry-1", &other).await;
    assert_eq!(code, 422, "{b}");
    assert_eq!(b["errors"][0]["code"], "idempotency_key_reused");

    // Keys are per app: another app's identical key starts its own request.
    let (code, b_first) = api.erase_with_key(&token_b, "retry-1", &body).await;
    assert_eq!(code, 202);
    assert_ne!(b_first["requestId"], first["requestId"]);
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT requested_by, request_id FROM erasure.requests WHERE idempotency_key = 'retry-1' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter()
            .any(|(by, id)| *by == app_a && *id == first["requestId"])
    );
    assert!(
        ids.iter()
            .any(|(by, id)| *by == app_b && *id == b_first["requestId"])
    );

    let (code, b) = api
        .erase_with_key(&token_a, "bad key with spaces", &body)
        .await;
    assert_eq!(code, 400, "{b}");
    assert_eq!(requests_recorded(&env).await, 2);
    svc.shutdown().await;
}

#[tokio::test]
async fn an_app_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_RATE_LIMIT_PER_APP", "1"),
        ("ERASURE_RATE_LIMIT_BURST", "2"),
    ])
    .await;
    env.account("acct-a", 1).await;
    let (_, _, noisy) = env.app("acct-a", &[auth::SCOPE]).await;
    let (_, _, quiet) = env.app("acct-a", &[auth::SCOPE]).await;
    let (svc, api) = start_intake(&env).await;
    let url = format!("{}/status/eud-none", erase_url(&api));

    let mut limited = None;
    for _ in 0..20 {
        let r = api
            .http
            .get(&url)
            .header("auth", &noisy)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status().as_u16(), 404);
    }
    let r = limited.expect("20 calls at once exceed 1 per second with a burst of 2");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "rate_limited");

    let r = api
        .http
        .get(&url)
        .header("auth", &quiet)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "another app keeps its own allowance"
    );
    svc.shutdown().await;
}
