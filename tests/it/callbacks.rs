//! DESIGN.md section 10: signed callbacks (a real receiver that verifies every signature),
//! their retries, 410, timeout, crash and SSRF paths; cancel with exact counts; single-use
//! tokens across two intake processes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use erasure::{
    callback::sign,
    intake::auth,
    secrets,
    startup::{Role, Running},
    store::apps,
};
use serde_json::{Value, json};

use crate::{
    helpers::{Api, TestEnv, eventually},
    process::Process,
};

/// One callback as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    id: String,
    timestamp: i64,
    signature: String,
    raw: Bytes,
    body: Value,
    verified: bool,
}

impl Received {
    /// Whether the callback's signature verifies with `webhook_secret`.
    fn signed_with(&self, webhook_secret: &str) -> bool {
        let key = sign::key_of(webhook_secret).unwrap();
        sign::verify(&key, &self.id, self.timestamp, &self.raw, &self.signature)
    }
}

/// What a path answers: its statuses in turn (the last repeated), and a delay before the
/// first answer.
#[derive(Clone, Default)]
struct Script {
    statuses: Vec<u16>,
    first_delay: Duration,
}

#[derive(Clone)]
struct Receiver {
    key: Arc<Mutex<Vec<u8>>>,
    got: Arc<Mutex<Vec<Received>>>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
}

impl Receiver {
    /// A receiver on 127.0.0.1 that verifies signatures with the key given by [`Self::verify_with`].
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self {
            key: Arc::default(),
            got: Arc::default(),
            scripts: Arc::default(),
        };
        let app = Router::new()
            .route("/{path}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    /// The app's webhook secret, which every callback must be signed with.
    fn verify_with(&self, webhook_secret: &str) {
        *self.key.lock().unwrap() = sign::key_of(webhook_secret).unwrap();
    }

    fn script(&self, path: &str, statuses: &[u16], first_delay: Duration) {
        self.scripts.lock().unwrap().insert(
            path.to_string(),
            Script {
                statuses: statuses.to_vec(),
                first_delay,
            },
        );
    }

    fn got(&self, path: &str) -> Vec<Received> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|r| r.path == path).cloned().collect()
    }

    async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(
            timeout,
            Duration::from_millis(50),
            async || Some(self.got(path)).filter(|got| got.len() >= n),
            || {
                let got = self.got(path).len();
                format!("{path}: {got} of {n} callbacks within {timeout:?}")
            },
        )
        .await
    }
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let fresh = (chrono::Utc::now().timestamp() - timestamp).abs() < 300;
    let signature = header("webhook-signature");
    let key = r.key.lock().unwrap().clone();
    let verified = fresh && sign::verify(&key, &id, timestamp, &body, &signature);
    let n = {
        let mut got = r.got.lock().unwrap();
        got.push(Received {
            path: path.clone(),
            id,
            timestamp,
            signature,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body,
            verified,
        });
        got.iter().filter(|g| g.path == path).count()
    };
    let script = r.scripts.lock().unwrap().get(&path).cloned();
    let Some(script) = script else {
        return StatusCode::OK;
    };
    if n == 1 {
        tokio::time::sleep(script.first_delay).await;
    }
    let status = script
        .statuses
        .get(n - 1)
        .or(script.statuses.last())
        .copied()
        .unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// An HS256 app with a webhook secret (and `enforce_jti`); (client id, secret, token,
/// webhook secret).
async fn app(env: &TestEnv, account: &str, enforce_jti: bool) -> (String, String, String, String) {
    let client_id = format!("cs-{}", uuid::Uuid::new_v4());
    let secret = secrets::new_client_secret();
    let key = env.config().keys.secret_key.bytes;
    let sealed = secrets::seal(&key, secret.as_bytes());
    let webhook = sign::new_secret();
    let webhook_sealed = secrets::seal(&key, webhook.as_bytes());
    apps::insert(
        &env.pool,
        &apps::NewApp {
            client_id: &client_id,
            account_id: &account.into(),
            scopes: &[auth::SCOPE.to_string()],
            algorithm: "HS256",
            secret_sealed: Some(&sealed),
            public_key_pem: None,
            webhook_secret_sealed: Some(&webhook_sealed),
            callback_url: None,
            enforce_jti,
        },
    )
    .await
    .unwrap();
    let token = auth::mint_hs256(&client_id, &secret, Some(3600)).unwrap();
    (client_id, secret, token, webhook)
}

/// A test environment whose callbacks may reach `addr` (allow-listed), retrying after 1 s.
async fn env_for(addr: SocketAddr, extra: &[(&str, &str)]) -> TestEnv {
    let allow = addr.to_string();
    let mut vars = vec![
        ("ERASURE_CALLBACK_ALLOW_HOSTS", allow.as_str()),
        ("ERASURE_CALLBACK_SCHEDULE", "1,1"),
    ];
    vars.extend_from_slice(extra);
    TestEnv::with_vars(&vars).await
}

/// A user with `rows` rows per store in the account's first bot; returns the bot.
async fn seeded(env: &TestEnv, account: &str, user: &str, rows: i64) -> String {
    let bots = env.account(account, 1).await;
    env.user(user, None, None).await;
    env.rows(user, &bots[0], rows).await;
    bots[0].clone()
}

/// What most tests start with: a receiver, an environment whose callbacks may reach it, a
/// user with `rows` rows per store in a bot of `account`, and an app whose webhook secret the
/// receiver verifies with.
struct Told {
    receiver: Receiver,
    addr: SocketAddr,
    env: TestEnv,
    bot: String,
    client_id: String,
    token: String,
    secret: String,
}

async fn told(account: &str, user: &str, rows: i64) -> Told {
    let (receiver, addr) = Receiver::start().await;
    let env = env_for(addr, &[]).await;
    let bot = seeded(&env, account, user, rows).await;
    let (client_id, _, token, secret) = app(&env, account, false).await;
    receiver.verify_with(&secret);
    Told {
        receiver,
        addr,
        env,
        bot,
        client_id,
        token,
        secret,
    }
}

async fn erase(api: &Api, token: &str, user: &str, bot: &str, url: Option<&str>) -> String {
    let mut body = json!({"userIds": [user], "botIds": [bot]});
    if let Some(url) = url {
        body["callbackUrl"] = url.into();
    }
    let (status, answer) = api.erase(token, &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["requestId"].as_str().unwrap().to_string()
}

/// The request's `callback` object, once its state is `state`.
async fn wait_callback(api: &Api, token: &str, id: &str, state: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            let (_, doc) = api.status(token, id).await;
            (doc["callback"]["state"] == state).then(|| doc["callback"].clone())
        },
        || format!("callback of {id} is not {state}"),
    )
    .await
}

#[tokio::test]
async fn a_settled_request_is_told_once_signed_and_without_identifiers() {
    let Told {
        receiver,
        addr,
        env,
        bot,
        client_id,
        token,
        secret,
    } = told("acct-cb", "u-cb-1", 5).await;
    let svc: Running = env.start(Role::All).await;
    let api = Api::new(&svc);
    let url = format!("http://{addr}/done");
    let id = erase(&api, &token, "u-cb-1", &bot, Some(&url)).await;
    let got = receiver.wait_for("done", 1, Duration::from_secs(30)).await;
    assert!(got[0].verified, "the signature verifies: {got:?}");
    let body = &got[0].body;
    assert_eq!(body["type"], "erasure.request.completed");
    assert_eq!(body["data"]["requestId"], id.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["usersTotal"], 1);
    assert_eq!(body["data"]["usersErased"], 1);
    assert_eq!(body["data"]["rowsDeleted"]["conversations"], 5);
    assert!(
        !body.to_string().contains("u-cb-1"),
        "no user identifier: {body}"
    );
    assert!(got[0].id.starts_with("msg_"));
    let callback = wait_callback(&api, &token, &id, "delivered").await;
    assert_eq!(
        callback,
        json!({"state": "delivered", "attempts": 1, "lastStatus": 200})
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.got("done").len(), 1, "delivered once");
    let listed = erasure::store::requests::list(&env.pool, None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed[0].callback.as_deref(),
        Some("delivered"),
        "erasure requests list"
    );

    // A request without a callback has no `callback` object; a rotation signs twice.
    let bare = erase(&api, &token, "u-cb-1", &bot, None).await;
    env.wait_settled(&bare, Duration::from_secs(30)).await;
    let (_, doc) = api.status(&token, &bare).await;
    assert!(doc.get("callback").is_none(), "{doc}");
    let rotated = sign::new_secret();
    let sealed = secrets::seal(&env.config().keys.secret_key.bytes, rotated.as_bytes());
    assert!(
        apps::rotate_webhook_secret(&env.pool, &client_id, &sealed)
            .await
            .unwrap()
    );
    let again = erase(&api, &token, "u-cb-1", &bot, Some(&url)).await;
    let got = receiver.wait_for("done", 2, Duration::from_secs(30)).await;
    assert_eq!(got[1].body["data"]["requestId"], again.as_str());
    assert!(got[1].signed_with(&rotated), "the new secret signs");
    assert!(
        got[1].signed_with(&secret),
        "the previous one too, for 24 hours"
    );
    assert_eq!(got[1].signature.split(' ').count(), 2);
    assert!(!got[0].signed_with(&rotated));
    svc.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_on_schedule_410_stops_and_the_schedule_ends() {
    let Told {
        receiver,
        addr,
        env,
        bot,
        token,
        ..
    } = told("acct-retry", "u-r-1", 3).await;
    receiver.script("flaky", &[500, 200], Duration::ZERO);
    receiver.script("gone", &[410], Duration::ZERO);
    receiver.script("down", &[503], Duration::ZERO);
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let flaky = erase(
        &api,
        &token,
        "u-r-1",
        &bot,
        Some(&format!("http://{addr}/flaky")),
    )
    .await;
    let gone = erase(
        &api,
        &token,
        "u-r-1",
        &bot,
        Some(&format!("http://{addr}/gone")),
    )
    .await;
    let down = erase(
        &api,
        &token,
        "u-r-1",
        &bot,
        Some(&format!("http://{addr}/down")),
    )
    .await;

    let c = wait_callback(&api, &token, &flaky, "delivered").await;
    assert_eq!(
        c,
        json!({"state": "delivered", "attempts": 2, "lastStatus": 200})
    );
    let got = receiver.got("flaky");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id, "one webhook-id across retries");
    assert_eq!(got[0].body, got[1].body, "the same body on every retry");
    assert!(got.iter().all(|r| r.verified));

    let c = wait_callback(&api, &token, &gone, "gone").await;
    assert_eq!(
        c,
        json!({"state": "gone", "attempts": 1, "lastStatus": 410})
    );

    // Schedule `1,1`: the first attempt and two retries, then `failed`.
    let c = wait_callback(&api, &token, &down, "failed").await;
    assert_eq!(
        c,
        json!({"state": "failed", "attempts": 3, "lastStatus": 503})
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.got("gone").len(), 1, "410 stops at once");
    assert_eq!(receiver.got("down").len(), 3, "nothing after the schedule");
    let metrics = reqwest::get(format!("http://{}/metrics", svc.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("erasure_callbacks_total{outcome=\"gone\"} 1"),
        "{metrics}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried() {
    let Told {
        receiver,
        addr,
        env,
        bot,
        token,
        ..
    } = told("acct-slow", "u-s-1", 2).await;
    receiver.script("slow", &[200], Duration::from_secs(20));
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let id = erase(
        &api,
        &token,
        "u-s-1",
        &bot,
        Some(&format!("http://{addr}/slow")),
    )
    .await;
    let started = tokio::time::Instant::now();
    let c = wait_callback(&api, &token, &id, "delivered").await;
    assert_eq!(
        c,
        json!({"state": "delivered", "attempts": 2, "lastStatus": 200})
    );
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "the first attempt waited for its 15 s timeout"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_worker_killed_before_delivering_delivers_after_restart() {
    let Told {
        receiver,
        addr,
        env,
        bot,
        token,
        ..
    } = told("acct-crash", "u-k-1", 2).await;
    // The first attempt hangs: the worker is killed in the middle of it, nothing delivered.
    receiver.script("crash", &[200], Duration::from_secs(60));
    let intake = env.start(Role::Intake).await;
    let api = Api::new(&intake);
    let worker = Process::spawn(&env, "worker", &[]).await;
    let id = erase(
        &api,
        &token,
        "u-k-1",
        &bot,
        Some(&format!("http://{addr}/crash")),
    )
    .await;
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    receiver.wait_for("crash", 1, Duration::from_secs(30)).await;
    worker.kill().await;
    let (_, doc) = api.status(&token, &id).await;
    assert_eq!(doc["callback"]["state"], "pending", "{doc}");
    let _restarted = Process::spawn(&env, "worker", &[]).await;
    let c = wait_callback(&api, &token, &id, "delivered").await;
    assert_eq!(c["attempts"], 2);
    let got = receiver.got("crash");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id);
    assert!(got[1].verified);
    intake.shutdown().await;
}

/// Counts TCP connections accepted on a port, answering nothing.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn callbacks_cannot_reach_private_addresses() {
    let (trap, accepted) = counting_listener().await;
    let env = TestEnv::with_vars(&[("ERASURE_CALLBACK_SCHEDULE", "1,1")]).await;
    let bot = seeded(&env, "acct-ssrf", "u-x-1", 2).await;
    let (_, _, token, _) = app(&env, "acct-ssrf", false).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let long = format!("https://example.com/{}", "a".repeat(2100));
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        &format!("https://{trap}/x"),
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.1/x",
        "https://[::ffff:127.0.0.1]/x",
        "ftp://example.com/x",
        "not a url",
        long.as_str(),
    ] {
        let body = json!({"userIds": ["u-x-1"], "botIds": [bot], "callbackUrl": url});
        let (status, answer) = api.erase(&token, &body).await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(answer["errors"][0]["code"], "invalid_callback_url", "{url}");
        assert_eq!(answer["errors"][0]["field"], "callbackUrl");
    }
    let (status, answer) = api
        .erase(
            &token,
            &json!({"userIds": ["u-x-1"], "botIds": [bot], "callbackUrl": 7}),
        )
        .await;
    assert_eq!(
        (status, &answer["errors"][0]["code"]),
        (400, &json!("invalid_callback_url"))
    );

    // A name that resolves to loopback passes the intake (no lookup there) but is never
    // connected to: the resolver drops every loopback address.
    let url = format!("https://localhost:{}/x", trap.port());
    let id = erase(&api, &token, "u-x-1", &bot, Some(&url)).await;
    let c = wait_callback(&api, &token, &id, "failed").await;
    assert_eq!(
        c,
        json!({"state": "failed", "attempts": 1, "lastStatus": null})
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "never connected");
    svc.shutdown().await;
}

#[tokio::test]
async fn cancel_mid_erasure_stops_every_batch_and_keeps_counts_exact() {
    let (receiver, addr) = Receiver::start().await;
    let env = env_for(
        addr,
        &[
            ("ERASURE_BATCH_SIZE", "100"),
            ("ERASURE_BATCHES_PER_SLICE", "5"),
            ("ERASURE_MAX_ROWS_PER_SECOND", "1500"),
        ],
    )
    .await;
    let seeded_rows = 3000;
    let bot = seeded(&env, "acct-cancel", "u-c-1", seeded_rows).await;
    env.account("acct-other", 0).await;
    let (_, _, token, secret) = app(&env, "acct-cancel", false).await;
    let (_, _, other_token, _) = app(&env, "acct-other", false).await;
    receiver.verify_with(&secret);
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let id = erase(
        &api,
        &token,
        "u-c-1",
        &bot,
        Some(&format!("http://{addr}/cancel")),
    )
    .await;
    env.wait_progress(&id, 300).await;

    let (status, other) = api.status(&other_token, &id).await;
    assert_eq!(status, 404, "{other}");
    let cancel = |t: &str| {
        let t = t.to_string();
        let c = erasure::client::Client::with_http(&api.base, api.http.clone());
        let id = id.clone();
        async move {
            let reply = c.cancel(&t, &id).reply().await.unwrap();
            (reply.status(), reply.json())
        }
    };
    assert_eq!(
        cancel(&other_token).await.0,
        404,
        "another account's request"
    );
    let (status, doc) = cancel(&token).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["status"], "cancelled");
    assert_eq!(doc["response"][0]["status"], "CANCELLED");
    assert!(doc["completedOn"].is_string());
    let counted = env.rows_deleted(&id).await;
    let left = env.count_rows("u-c-1", &bot).await;
    assert_eq!(
        counted + left,
        3 * seeded_rows,
        "rows erased + rows remaining = seeded"
    );
    assert!(left > 0, "cancelled mid-erasure ({counted} erased)");

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.count_rows("u-c-1", &bot).await,
        left,
        "no batch after the cancel"
    );
    assert_eq!(env.rows_deleted(&id).await, counted);
    let (status, again) = cancel(&token).await;
    assert_eq!(
        (status, &again["status"]),
        (200, &json!("cancelled")),
        "twice: 200"
    );
    let rows: i64 = again["progress"]["rowsDeleted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(rows, counted);
    let tasks: Vec<String> =
        sqlx::query_scalar("SELECT status FROM erasure.tasks WHERE request_id = $1")
            .bind(&id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(tasks, ["cancelled"]);

    let got = receiver
        .wait_for("cancel", 1, Duration::from_secs(30))
        .await;
    assert!(got[0].verified);
    assert_eq!(got[0].body["type"], "erasure.request.cancelled");
    assert_eq!(got[0].body["data"]["usersErased"], 0);

    assert_only_in_progress_is_cancelled(&env, &api, &token, &bot).await;
    svc.shutdown().await;
}

/// A settled request cannot be cancelled (409); an unknown one is 404.
async fn assert_only_in_progress_is_cancelled(env: &TestEnv, api: &Api, token: &str, bot: &str) {
    let done = erase(api, token, "u-c-1", bot, None).await;
    env.wait_settled(&done, Duration::from_secs(60)).await;
    let c = erasure::client::Client::with_http(&api.base, api.http.clone());
    let unknown = c.cancel(token, "eud-nope").reply().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let settled = c.cancel(token, &done).reply().await.unwrap();
    assert_eq!(settled.status(), 409);
    assert_eq!(settled.json()["errors"][0]["code"], "already_settled");
}

fn single_use(client_id: &str, secret: &str, claims: Value) -> String {
    let mut all = json!({"appId": client_id});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    auth::sign_hs256(&all, secret).unwrap()
}

#[tokio::test]
async fn a_single_use_token_is_refused_the_second_time_on_any_intake() {
    let env = TestEnv::new().await;
    let bot = seeded(&env, "acct-jti", "u-j-1", 1).await;
    let (client_id, secret, _, _) = app(&env, "acct-jti", true).await;
    let (_, _, reusable, _) = app(&env, "acct-jti", false).await;
    let a = Process::spawn(&env, "intake", &[]).await;
    let b = Process::spawn(&env, "intake", &[]).await;
    let client = |p: &Process| erasure::client::Client::new(&format!("http://{}", p.http));
    let body = json!({"userIds": ["u-j-1"], "botIds": [bot]});
    let call = |p: &Process, token: String| {
        let c = client(p);
        let body = body.clone();
        async move {
            let reply = c.erase(&token, &body).reply().await.unwrap();
            (reply.status(), reply.json()["errors"][0]["code"].clone())
        }
    };

    let token = auth::mint_single_use(&client_id, &secret, 600).unwrap();
    assert_eq!(call(&a, token.clone()).await.0, 202);
    assert_eq!(
        call(&b, token.clone()).await,
        (401, json!("token_replayed"))
    );
    assert_eq!(
        call(&a, token.clone()).await,
        (401, json!("token_replayed"))
    );
    let fresh = auth::mint_single_use(&client_id, &secret, 600).unwrap();
    assert_eq!(call(&b, fresh).await.0, 202, "a new jti is accepted");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.used_jtis")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);

    let now = chrono::Utc::now().timestamp();
    for claims in [
        json!({"iat": now, "exp": now + 60}),
        json!({"jti": "a", "exp": now + 60}),
        json!({"jti": "b", "iat": now}),
        json!({"jti": "c", "iat": now, "exp": now + 3601}),
        json!({"jti": "x".repeat(129), "iat": now, "exp": now + 60}),
        json!({"jti": 7, "iat": now, "exp": now + 60}),
    ] {
        let token = single_use(&client_id, &secret, claims.clone());
        assert_eq!(
            call(&a, token).await,
            (401, json!("jti_required")),
            "{claims}"
        );
    }
    // An app without --enforce-jti reuses its token.
    for p in [&a, &b] {
        assert_eq!(call(p, reusable.clone()).await.0, 202);
    }
    // Forgotten after exp: an expired entry is swept by the retention job's helper.
    sqlx::query("UPDATE erasure.used_jtis SET expires_at = now() - interval '1 s'")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        erasure::store::jtis::forget_expired(&env.pool)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn a_request_rejected_at_planning_is_told_too() {
    let (receiver, addr) = Receiver::start().await;
    let env = env_for(addr, &[]).await;
    let bot = seeded(&env, "acct-rej", "u-owner", 4).await;
    sqlx::query(
        "INSERT INTO platform.account_members (account_id, user_id, role)
         VALUES ('acct-rej', 'u-owner', 'owner')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (_, _, token, secret) = app(&env, "acct-rej", false).await;
    receiver.verify_with(&secret);
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let url = format!("http://{addr}/rejected");
    let id = erase(&api, &token, "u-owner", &bot, Some(&url)).await;
    let got = receiver
        .wait_for("rejected", 1, Duration::from_secs(30))
        .await;
    assert!(got[0].verified, "{got:?}");
    let body = &got[0].body;
    assert_eq!(body["type"], "erasure.request.rejected");
    assert_eq!(body["data"]["requestId"], id.as_str());
    assert_eq!(body["data"]["usersRejected"], 1);
    assert_eq!(body["data"]["usersErased"], 0);
    assert!(!body.to_string().contains("u-owner"), "{body}");
    assert_eq!(env.count_rows("u-owner", &bot).await, 12, "nothing erased");
    wait_callback(&api, &token, &id, "delivered").await;
    svc.shutdown().await;
}

#[tokio::test]
async fn a_failed_request_is_told_and_told_again_when_redriven_it_completes() {
    let Told {
        receiver,
        addr,
        env,
        bot,
        token,
        ..
    } = told("acct-cbf", "u-cbf-1", 3).await;
    // The platform refuses the deletes: the task fails for good and the request with it.
    env.refuse_deletes().await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let url = format!("http://{addr}/told");
    let id = erase(&api, &token, "u-cbf-1", &bot, Some(&url)).await;
    let got = receiver.wait_for("told", 1, Duration::from_secs(60)).await;
    assert!(got[0].verified, "{got:?}");
    let body = &got[0].body;
    assert_eq!(body["type"], "erasure.request.failed", "{body}");
    assert_eq!(body["data"]["requestId"], id.as_str());
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["usersTotal"], 1);
    assert_eq!(body["data"]["usersErased"], 0);
    assert!(!body.to_string().contains("u-cbf-1"), "{body}");
    wait_callback(&api, &token, &id, "delivered").await;

    // Fixed and redriven, it settles again: a second event, with its own webhook id.
    env.allow_deletes().await;
    env.wait_dead_letters(1).await;
    let moved = erasure::queue::redrive::redrive(&env.pool, env.brokers(), &env.topology(), 10)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let got = receiver.wait_for("told", 2, Duration::from_secs(60)).await;
    assert!(got[1].verified, "{got:?}");
    let body = &got[1].body;
    assert_eq!(body["type"], "erasure.request.completed", "{body}");
    assert_eq!(body["data"]["usersErased"], 1, "{body}");
    assert_eq!(body["data"]["rowsDeleted"]["conversations"], 3, "{body}");
    assert_ne!(got[0].id, got[1].id, "one webhook id per event");
    assert_eq!(env.count_rows("u-cbf-1", &bot).await, 0);
    svc.shutdown().await;
}
