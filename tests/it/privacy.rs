//! Personal data: identifiers never reach the logs, are replaced by HMACs in the service's own
//! tables once the retention window has passed, and the audit trail proves an erasure
//! without them.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use erasure::{contract::UserEntry, intake::auth, secrets, startup::Role};
use serde_json::{Value, json};

use crate::helpers::{Api, TestEnv, publish_raw};

/// Every row of every table in schema `erasure`, as text.
async fn dump_schema(env: &TestEnv) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'erasure' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "found the service's tables: {tables:?}");
    let mut rows = Vec::new();
    for t in tables {
        let sql = format!("SELECT row_to_json(t)::text FROM erasure.\"{t}\" t");
        let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&env.pool)
            .await
            .unwrap();
        rows.extend(texts.into_iter().map(|r| (t.clone(), r)));
    }
    rows
}

/// Where `needle` occurs in the dump: as text (any case), or hex-encoded (how `row_to_json`
/// shows bytea columns such as outbox and dead-letter payloads).
fn occurrences<'a>(rows: &'a [(String, String)], needle: &str) -> Vec<&'a str> {
    let lower = needle.to_lowercase();
    let hexed = hex::encode(needle.as_bytes());
    rows.iter()
        .filter(|(_, r)| {
            let r = r.to_lowercase();
            r.contains(&lower) || r.contains(&hexed)
        })
        .map(|(t, _)| t.as_str())
        .collect()
}

/// The platform of the privacy tests: users reachable by each kind of identifier.
struct People {
    bots: Vec<String>,
    /// Entries of the erase request, as the caller sends them.
    entries: Vec<Value>,
    /// Every caller-given identifier and every platform user id they resolve to.
    identifiers: Vec<&'static str>,
}

async fn people(env: &TestEnv) -> People {
    let bots = env.account("acct-priv", 2).await;
    env.user(
        "u-privalpha-7341",
        Some("alpha.priv7341@example.com"),
        Some("ent-privalpha-7341"),
    )
    .await;
    env.user("u-privbravo-9921", None, None).await;
    env.channel_identity("chanpriv-tg", "tgpriv-555001", "u-privbravo-9921")
        .await;
    env.user(
        "u-privcharlie-4410",
        Some("charlie.priv4410@example.com"),
        None,
    )
    .await;
    sqlx::query(
        "INSERT INTO platform.bot_collaborators (bot_id, user_id, role) VALUES ($1, $2, 'co_developer')",
    )
    .bind(&bots[1])
    .bind("u-privcharlie-4410")
    .execute(&env.pool)
    .await
    .unwrap();
    env.user("u-privdelta-5151", None, Some("ent-privdelta-88"))
        .await;
    env.user("u-privecho-6060", None, None).await;
    env.channel_identity("chanpriv-wa", "wapriv-40044", "u-privecho-6060")
        .await;
    for u in [
        "u-privalpha-7341",
        "u-privbravo-9921",
        "u-privcharlie-4410",
        "u-privdelta-5151",
        "u-privecho-6060",
    ] {
        for b in &bots {
            env.rows(u, b, 4).await;
        }
    }
    People {
        entries: vec![
            json!("alpha.priv7341@example.com"),
            json!({"channelId": "chanpriv-tg", "channelUserId": "tgpriv-555001"}),
            json!("u-privcharlie-4410"),
            json!("ent-privdelta-88"),
            json!("wapriv-40044"),
            json!("nobody.priv8812@example.com"),
        ],
        identifiers: vec![
            "alpha.priv7341@example.com",
            "ent-privalpha-7341",
            "u-privalpha-7341",
            "chanpriv-tg",
            "tgpriv-555001",
            "u-privbravo-9921",
            "u-privcharlie-4410",
            "charlie.priv4410@example.com",
            "ent-privdelta-88",
            "u-privdelta-5151",
            "wapriv-40044",
            "chanpriv-wa",
            "u-privecho-6060",
            "nobody.priv8812@example.com",
        ],
        bots,
    }
}

/// Waits until every user of `request_id` carries an HMAC instead of its identifier.
async fn wait_redacted(env: &TestEnv, request_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcomes = env.user_outcomes(request_id).await;
        if !outcomes.is_empty() && outcomes.iter().all(|(r, _, _)| r.starts_with("hmac:")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{request_id} was not redacted: {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for<F: AsyncFn() -> bool>(what: &str, f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn no_identifier_reaches_the_logs_of_a_full_run() {
    let env = TestEnv::new().await;
    let p = people(&env).await;
    let (_, _, token) = env.app("acct-priv", &[auth::SCOPE]).await;
    env.account("acct-other", 1).await;

    let log_path = std::env::temp_dir().join(format!("{}.log.jsonl", env.db_name));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_erasure"));
    cmd.arg("serve").env_clear();
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("ERASURE_LOG", "debug")
        .env("ERASURE_LOG_FORMAT", "json")
        .env("ERASURE_PII_RETENTION", "1s")
        .env("ERASURE_RETENTION_SWEEP_SECONDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The address is in the "erasure started" line (the service binds port 0).
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let found = read_log().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "erasure started")
                .then(|| v["fields"]["http"].as_str().map(str::to_string))
                .flatten()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(Instant::now() < deadline, "no start line:\n{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let api = Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };
    wait_for("readiness", async || {
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let body = json!({"userIds": p.entries, "botIds": p.bots});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = api
            .http
            .delete(format!("{}/api/public/bot/eraseUsersData", api.base))
            .header("auth", &token)
            .header("idempotency-key", "privacy-run")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        ids.push(r.json::<Value>().await.unwrap()["requestId"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    let id = ids[0].as_str().unwrap().to_string();
    // Refusals that carry identifiers: a duplicate, a foreign bot, a bad token.
    let (code, _) = api
        .erase(
            &token,
            &json!({"userIds": ["dup.priv3131@example.com", "dup.priv3131@example.com"], "botIds": p.bots}),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = api
        .erase(
            &token,
            &json!({"userIds": ["foreign.priv5252@example.com"], "botIds": ["st-acct-other-1"]}),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = api
        .erase(
            "badtoken.priv",
            &json!({"userIds": ["badtok.priv6363@example.com"]}),
        )
        .await;
    assert_eq!(code, 401);
    // Producers on the queue: a valid message, a poison one with a request id, and one that
    // is not even JSON.
    publish_raw(
        &env,
        "erase.request",
        json!({"version": 1, "requestId": "eud-privqueue-1", "accountId": "acct-priv",
               "requestedBy": "producer-x", "userIds": ["queue.priv7777@example.com"],
               "botIds": [p.bots[0]]})
        .to_string()
        .as_bytes(),
    )
    .await;
    publish_raw(
        &env,
        "erase.request",
        json!({"version": 1, "requestId": "eud-privpoison-1", "accountId": "acct-priv",
               "requestedBy": "producer-x",
               "userIds": ["poison.priv2020@example.com", "poison.priv2020@example.com"],
               "botIds": [p.bots[0]]})
        .to_string()
        .as_bytes(),
    )
    .await;
    publish_raw(
        &env,
        "erase.request",
        b"{not json garbage.priv9090@example.com",
    )
    .await;

    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    let doc = api.status_doc(&token, &id).await;
    let statuses: Vec<&str> = doc.response.iter().map(|u| u.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "SUCCESS",
            "SUCCESS",
            "REJECTED",
            "SUCCESS",
            "SUCCESS",
            "NOT_FOUND"
        ]
    );
    assert_eq!(
        env.wait_settled("eud-privqueue-1", Duration::from_secs(30))
            .await,
        "completed"
    );
    assert_eq!(
        env.wait_settled("eud-privpoison-1", Duration::from_secs(30))
            .await,
        "failed"
    );
    wait_redacted(&env, &id).await;
    wait_redacted(&env, "eud-privqueue-1").await;
    let _ = api.status(&token, &id).await;

    let pid = child.id().expect("the service is running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the service stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");

    let log = read_log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    // The capture saw the whole run, at debug level.
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"));
    for message in [
        "erase request accepted",
        "request planned",
        "request settled",
        "dead-lettered",
        "redacted identifiers past retention",
        "stopped",
    ] {
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == message),
            "the log has no {message:?} line"
        );
    }
    let lower = log.to_lowercase();
    let mut leaked = Vec::new();
    for needle in p.identifiers.iter().copied().chain([
        "dup.priv3131@example.com",
        "foreign.priv5252@example.com",
        "badtok.priv6363@example.com",
        "badtoken.priv",
        "queue.priv7777@example.com",
        "poison.priv2020@example.com",
        "garbage.priv9090@example.com",
        token.as_str(),
    ]) {
        if lower.contains(&needle.to_lowercase()) {
            leaked.push(needle.to_string());
        }
    }
    assert!(
        leaked.is_empty(),
        "identifiers in the logs ({} lines): {leaked:?}",
        lines.len()
    );
    let _ = std::fs::remove_file(&log_path);
}

#[tokio::test]
async fn identifiers_become_hmacs_everywhere_after_the_retention_window() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_PII_RETENTION", "1s"),
        ("ERASURE_RETENTION_SWEEP_SECONDS", "1"),
        (
            "ERASURE_PII_HMAC_KEY",
            "privacy-test-hmac-key-of-at-least-32-bytes",
        ),
    ])
    .await;
    let key = env.config().keys.pii_hmac_key.bytes;
    assert!(env.config().keys.pii_hmac_key.configured);
    let p = people(&env).await;
    let (_, _, token) = env.app("acct-priv", &[auth::SCOPE]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);

    let (code, b) = api
        .erase(&token, &json!({"userIds": p.entries, "botIds": p.bots}))
        .await;
    assert_eq!(code, 202, "{b}");
    let id = b["requestId"].as_str().unwrap().to_string();
    // Dead letters keep a copy of what they were given: one with a request id, one without.
    publish_raw(
        &env,
        "erase.request",
        json!({"version": 1, "requestId": "eud-privpoison-2", "accountId": "acct-priv",
               "requestedBy": "producer-x",
               "userIds": ["poison.priv2020@example.com", "poison.priv2020@example.com"],
               "botIds": [p.bots[0]]})
        .to_string()
        .as_bytes(),
    )
    .await;
    publish_raw(&env, "erase.request", b"[\"garbage.priv9090@example.com\"").await;
    wait_for("two dead letters", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM erasure.dead_letters")
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 2
    })
    .await;

    // Until the window passes, the identifiers are there: the scan below can find them.
    let before = dump_schema(&env).await;
    for needle in [
        "alpha.priv7341@example.com",
        "tgpriv-555001",
        "poison.priv2020@example.com",
        "garbage.priv9090@example.com",
    ] {
        assert!(
            !occurrences(&before, needle).is_empty(),
            "{needle} is recorded before the window passes"
        );
    }

    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    wait_redacted(&env, &id).await;
    wait_for("dead-letter payloads dropped", async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM erasure.dead_letters WHERE payload IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
            == 0
    })
    .await;

    // The status API and the public view show the HMAC of what the caller gave.
    let expected: Vec<String> = p
        .entries
        .iter()
        .map(|e| {
            let entry = match e {
                Value::String(s) => UserEntry::Id(s.clone()),
                o => UserEntry::Channel {
                    channel_id: o["channelId"].as_str().unwrap().into(),
                    channel_user_id: o["channelUserId"].as_str().unwrap().into(),
                },
            };
            secrets::pii_ref(&key, entry.user_ref().as_str())
        })
        .collect();
    let doc = api.status_doc(&token, &id).await;
    let shown: Vec<Value> = doc.response.iter().map(|u| u.user_id.clone()).collect();
    assert_eq!(shown, expected.iter().map(|h| json!(h)).collect::<Vec<_>>());
    assert_eq!(doc.response[2].status, "REJECTED", "outcomes are kept");
    assert_eq!(doc.response[5].status, "NOT_FOUND");
    let refs: Vec<String> = env
        .user_outcomes(&id)
        .await
        .into_iter()
        .map(|(r, _, _)| r)
        .collect();
    assert_eq!(refs, expected);
    let audit: Value =
        sqlx::query_scalar("SELECT user_outcomes FROM erasure.request_audit WHERE request_id = $1")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(audit[0]["userRef"], json!(expected[0]));

    let after = dump_schema(&env).await;
    let mut left = Vec::new();
    for needle in p.identifiers.iter().chain(&[
        "poison.priv2020@example.com",
        "garbage.priv9090@example.com",
    ]) {
        let tables = occurrences(&after, needle);
        if !tables.is_empty() {
            left.push(format!("{needle} in {tables:?}"));
        }
    }
    assert!(left.is_empty(), "identifiers left: {left:?}");
    svc.shutdown().await;
}

#[tokio::test]
async fn the_audit_view_records_who_when_where_and_what_without_personal_data() {
    let env = TestEnv::new().await;
    let p = people(&env).await;
    let (client_id, _, token) = env.app("acct-priv", &[auth::SCOPE]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let sent_at = chrono::Utc::now();
    let (code, b) = api
        .erase(&token, &json!({"userIds": p.entries, "botIds": p.bots}))
        .await;
    assert_eq!(code, 202, "{b}");
    let id = b["requestId"].as_str().unwrap().to_string();
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );

    let row: Value = sqlx::query_scalar(
        "SELECT row_to_json(a) FROM erasure.request_audit a WHERE request_id = $1",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(row["requested_by"], json!(client_id));
    assert_eq!(row["account_id"], "acct-priv");
    assert_eq!(row["source"], "http");
    assert_eq!(row["client_addr"], "127.0.0.1");
    let requested_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(row["requested_at"].clone()).unwrap();
    assert!(requested_at >= sent_at - chrono::Duration::seconds(5));
    assert!(!row["completed_at"].is_null());
    assert_eq!(row["status"], "completed");
    assert_eq!(
        (
            &row["users_total"],
            &row["users_succeeded"],
            &row["users_rejected"],
            &row["users_not_found"],
            &row["users_failed"],
        ),
        (&json!(6), &json!(4), &json!(1), &json!(1), &json!(0))
    );
    let outcomes: Vec<(i64, String, Option<String>)> = row["user_outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(u["userRef"].is_null(), "no reference before the window");
            (
                u["position"].as_i64().unwrap(),
                u["status"].as_str().unwrap().to_string(),
                u["reason"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        outcomes[2],
        (2, "REJECTED".into(), Some("bot_co_developer".into()))
    );
    assert_eq!(outcomes[5].1, "NOT_FOUND");
    // Four erased users with 4 rows per store in each of the two bots.
    let bots = row["bots"].as_array().unwrap();
    assert_eq!(bots.len(), 2);
    for (bot, name) in bots.iter().zip(&p.bots) {
        assert_eq!(bot["botId"], json!(name));
        assert_eq!(bot["status"], "done");
        for store in ["conversations", "sessions", "analytics"] {
            assert_eq!(bot[store], 16, "{store} in {name}");
        }
    }
    assert_eq!(row["rows_conversations"], 32);
    assert_eq!(row["rows_sessions"], 32);
    assert_eq!(row["rows_analytics"], 32);

    // The identifiers are still in the service's tables, but not in the audit view.
    let text = row.to_string().to_lowercase();
    let schema = dump_schema(&env).await;
    for needle in &p.identifiers {
        assert!(
            !text.contains(&needle.to_lowercase()),
            "{needle} in the audit view"
        );
    }
    assert!(!occurrences(&schema, "alpha.priv7341@example.com").is_empty());
    svc.shutdown().await;
}
