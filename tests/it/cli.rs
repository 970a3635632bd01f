//! The command line (DESIGN.md section 5), driven as an operator would: the real binary with
//! the test's environment.

use std::process::Output;

use tokio::process::Command;

use erasure::startup::Role;
use serde_json::Value;

use crate::helpers::TestEnv;

/// Runs the binary without blocking the runtime (the service under test shares it).
async fn erasure(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_erasure"));
    cmd.args(args).envs(&env.vars).env("ERASURE_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().await.expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test]
async fn the_walkthrough_works_from_the_command_line() {
    let env = TestEnv::new().await;
    let seeded = stdout(
        &erasure(
            &env,
            &["seed", "--users", "20", "--bots", "2", "--rows", "600"],
            &[],
        )
        .await,
    );
    assert!(seeded.contains("u-demo-1..u-demo-20"), "{seeded}");
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM platform.conversations) + (SELECT count(*) FROM platform.sessions)
              + (SELECT count(*) FROM platform.analytics_events)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, 600);

    let created = stdout(&erasure(&env, &["app", "create", "--account", "acct-demo"], &[]).await);
    assert_eq!(created.lines().count(), 1, "one JSON line: {created}");
    let app: Value = serde_json::from_str(created.trim()).unwrap();
    let (client_id, secret) = (
        app["clientId"].as_str().unwrap(),
        app["clientSecret"].as_str().unwrap(),
    );
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sealed FROM platform.api_apps WHERE client_id = $1")
            .bind(client_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored in clear"
    );

    let token = stdout(
        &erasure(
            &env,
            &["token", "--client-id", client_id, "--secret", secret],
            &[],
        )
        .await,
    );
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3);

    let svc = env.start(Role::All).await;
    let url = format!("http://{}", svc.http_addr);
    let submitted = stdout(
        &erasure(
            &env,
            &[
                "submit",
                "--url",
                &url,
                "--user",
                "u-demo-7",
                "--user",
                "channel:telegram:tg-demo-8",
                "--bot",
                "st-demo-1",
            ],
            &[("ERASURE_TOKEN", token)],
        )
        .await,
    );
    let answer: Value = serde_json::from_str(submitted.trim()).unwrap();
    let id = answer["requestId"].as_str().unwrap();
    let watched = stdout(
        &erasure(
            &env,
            &["status", id, "--url", &url, "--watch"],
            &[("ERASURE_TOKEN", token)],
        )
        .await,
    );
    let doc: Value = serde_json::from_str(&watched).unwrap();
    assert_eq!(doc["status"], "completed");
    assert_eq!(env.count_rows("u-demo-7", "st-demo-1").await, 0);
    assert_eq!(env.count_rows("u-demo-8", "st-demo-1").await, 0);
    svc.shutdown().await;
}

#[tokio::test]
async fn app_create_refuses_an_unknown_account() {
    let env = TestEnv::new().await;
    let out = erasure(&env, &["app", "create", "--account", "acct-missing"], &[]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("acct-missing does not exist"));
}

#[tokio::test]
async fn requests_list_on_a_database_without_the_schema_fails_and_creates_nothing() {
    let env = TestEnv::unmigrated().await;
    let out = erasure(&env, &["requests", "list"], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no erasure schema: `erasure migrate` applies it"),
        "{stderr}"
    );
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('erasure', 'platform')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let migrations: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((schemas, migrations), (0, None), "nothing was applied");
}

#[tokio::test]
async fn requests_list_against_a_missing_database_fails_and_creates_none() {
    let env = TestEnv::new().await;
    let missing = format!("{}_missing", env.db_name);
    let url = format!("{}/{missing}", crate::helpers::PG_BASE);
    let out = erasure(&env, &["requests", "list"], &[("DATABASE_URL", &url)]).await;
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&missing)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    if created {
        erasure::store::drop_database(&url).await.unwrap();
    }
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist: `erasure migrate` creates it"),
        "{stderr}"
    );
    assert!(!created, "a read-only command created the database");
}

#[tokio::test]
async fn cancel_and_webhook_secret_rotation_work_from_the_command_line() {
    let env = TestEnv::new().await;
    stdout(
        &erasure(
            &env,
            &["seed", "--users", "5", "--bots", "1", "--rows", "60"],
            &[],
        )
        .await,
    );
    let created = stdout(&erasure(&env, &["app", "create", "--account", "acct-demo"], &[]).await);
    let app: Value = serde_json::from_str(created.trim()).unwrap();
    let client_id = app["clientId"].as_str().unwrap();
    let first = app["webhookSecret"].as_str().unwrap();

    // Rotation prints the new secret once; both sign for the next 24 hours, the new first.
    let rotated = stdout(&erasure(&env, &["app", "rotate-webhook-secret", client_id], &[]).await);
    let rotated: Value = serde_json::from_str(rotated.trim()).unwrap();
    assert_eq!(rotated["clientId"], client_id);
    let second = rotated["webhookSecret"].as_str().unwrap();
    assert!(second.starts_with("whsec_") && second != first, "{rotated}");
    let key = env.config().keys.secret_key.bytes;
    let signing: Vec<String> = erasure::store::apps::webhook_secrets(&env.pool, client_id)
        .await
        .unwrap()
        .iter()
        .map(|sealed| String::from_utf8(erasure::secrets::open(&key, sealed).unwrap()).unwrap())
        .collect();
    assert_eq!(signing, [second, first]);
    let unknown = erasure(&env, &["app", "rotate-webhook-secret", "cs-nobody"], &[]).await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no app cs-nobody"),
        "{unknown:?}"
    );

    // Cancel: with no worker running, the request is still in progress.
    let token = stdout(
        &erasure(
            &env,
            &[
                "token",
                "--client-id",
                client_id,
                "--secret",
                app["clientSecret"].as_str().unwrap(),
            ],
            &[],
        )
        .await,
    );
    let token = token.trim();
    let intake = env.start(Role::Intake).await;
    let url = format!("http://{}", intake.http_addr);
    let (status, answer) = crate::helpers::Api::new(&intake)
        .erase(
            token,
            &serde_json::json!({"userIds": ["u-demo-2"], "botIds": ["st-demo-1"]}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["requestId"].as_str().unwrap();
    for _ in 0..2 {
        let out = stdout(
            &erasure(
                &env,
                &["cancel", id, "--url", &url],
                &[("ERASURE_TOKEN", token)],
            )
            .await,
        );
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["requestId"], id);
        assert_eq!(doc["status"], "cancelled", "twice: {doc}");
    }
    let unknown = format!("eud-{}", uuid::Uuid::new_v4());
    let out = erasure(
        &env,
        &["cancel", &unknown, "--url", &url],
        &[("ERASURE_TOKEN", token)],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    let out = erasure(
        &env,
        &["cancel", "not-an-id", "--url", &url],
        &[("ERASURE_TOKEN", token)],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("eud-"),
        "{out:?}"
    );
    assert!(
        env.count_rows("u-demo-2", "st-demo-1").await > 0,
        "a cancelled request erased nothing: no worker ran"
    );
    intake.shutdown().await;
}
