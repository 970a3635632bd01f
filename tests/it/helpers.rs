#![allow(dead_code)] // shared by every test module; each uses a part
//! Test harness: every test gets its own database and its own queue-name prefix on the real
//! PostgreSQL and RabbitMQ, and both are removed when the test's `TestEnv` is dropped (also
//! when the test panics), so tests run in parallel and leave nothing behind.

use std::{collections::BTreeMap, time::Duration};

use erasure::{
    client::{Call, Client},
    config::Config,
    contract::StatusDocument,
    queue::{Brokers, Topology},
    secrets,
    startup::{self, Role, Running},
    store::{self, apps},
};
use serde_json::Value;
use sqlx::PgPool;

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Polls `check` every `every` until it yields a value and returns it; when `within` has
/// passed first, fails the test with what `failure` says at that moment (a process's log,
/// say). Every wait of the suite goes through here.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
    failure: impl FnOnce() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{}", failure());
        }
        tokio::time::sleep(every).await;
    }
}

pub struct TestEnv {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub pool: PgPool,
    /// Extra settings for services this test starts (on top of the test defaults).
    pub vars: BTreeMap<String, String>,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_vars(&[]).await
    }

    /// A fresh database (migrated) and prefix; `vars` override service settings.
    pub async fn with_vars(vars: &[(&str, &str)]) -> Self {
        Self::create(vars, true).await
    }

    /// A fresh database with nothing applied: no `platform` or `erasure` schema.
    pub async fn unmigrated() -> Self {
        Self::create(&[], false).await
    }

    async fn create(vars: &[(&str, &str)], migrated: bool) -> Self {
        erasure::client::install_tls();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("erasure_test_{}", &id[..16]);
        let db_url = format!("{PG_BASE}/{db_name}");
        let prefix = format!("t{}.", &id[..12]);
        let pool = if migrated {
            store::connect_and_migrate(&db_url, 8, Duration::from_secs(30)).await
        } else {
            store::create_database_if_missing(&db_url).await.unwrap();
            store::connect(&db_url, 8, Duration::from_secs(30)).await
        }
        .expect("test database");
        let mut all = BTreeMap::new();
        for (k, v) in [
            ("DATABASE_URL", db_url.as_str()),
            ("AMQP_URL", AMQP_URL),
            ("ERASURE_QUEUE_PREFIX", prefix.as_str()),
            ("ERASURE_HTTP_ADDR", "127.0.0.1:0"),
            ("ERASURE_OUTBOX_POLL_MS", "200"),
            ("ERASURE_RATE_LIMIT_PER_APP", "0"),
            ("ERASURE_DB_MAX_CONNECTIONS", "8"),
            ("ERASURE_SHUTDOWN_GRACE_SECONDS", "5"),
        ] {
            all.insert(k.to_string(), v.to_string());
        }
        for (k, v) in vars {
            all.insert(k.to_string(), v.to_string());
        }
        Self {
            db_name,
            db_url,
            prefix,
            pool,
            vars: all,
        }
    }

    pub fn config(&self) -> Config {
        Config::from_map(&self.vars).expect("test configuration")
    }

    pub fn topology(&self) -> Topology {
        Topology::from_settings(&self.config().queue)
    }

    /// The broker (or the nodes of the cluster) this test's services use.
    pub fn brokers(&self) -> Brokers {
        Brokers::from(&self.config().queue.amqp_url)
    }

    /// Starts the service in this process.
    pub async fn start(&self, role: Role) -> Running {
        startup::start(self.config(), role)
            .await
            .expect("service starts")
    }

    /// Creates an account with `bots` bots named `st-{account}-{i}`.
    pub async fn account(&self, account: &str, bots: usize) -> Vec<String> {
        sqlx::query("INSERT INTO platform.accounts (id, name) VALUES ($1, $1)")
            .bind(account)
            .execute(&self.pool)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 1..=bots {
            let id = format!("st-{account}-{i}");
            sqlx::query("INSERT INTO platform.bots (id, account_id) VALUES ($1, $2)")
                .bind(&id)
                .bind(account)
                .execute(&self.pool)
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    /// Creates a platform user.
    pub async fn user(&self, id: &str, email: Option<&str>, enterprise_id: Option<&str>) {
        sqlx::query("INSERT INTO platform.users (id, email, enterprise_id) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(email)
            .bind(enterprise_id)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn channel_identity(&self, channel: &str, channel_user_id: &str, user: &str) {
        sqlx::query("INSERT INTO platform.channel_identities (channel_id, channel_user_id, user_id) VALUES ($1, $2, $3)")
            .bind(channel)
            .bind(channel_user_id)
            .bind(user)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Inserts `n` rows of `user` in `bot` into each of the three stores.
    pub async fn rows(&self, user: &str, bot: &str, n: i64) {
        for table in ["conversations", "sessions", "analytics_events"] {
            let sql = format!(
                "INSERT INTO platform.{table} (bot_id, user_id) SELECT $1, $2 FROM generate_series(1, $3)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(bot)
                .bind(user)
                .bind(n)
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }

    /// A platform user `user` (no email, no enterprise id) with `n` rows in each of `bots`,
    /// in each of the three stores.
    pub async fn user_with_rows<B: AsRef<str>>(
        &self,
        user: &str,
        bots: impl IntoIterator<Item = B>,
        n: i64,
    ) {
        self.user(user, None, None).await;
        for bot in bots {
            self.rows(user, bot.as_ref(), n).await;
        }
    }

    /// Makes the platform refuse every delete of a conversation (a trigger raising an error
    /// that quotes the row's user, which must reach no log, reason or callback): the tasks
    /// that erase conversations fail for good until [`Self::allow_deletes`].
    pub async fn refuse_deletes(&self) {
        sqlx::raw_sql(
            "CREATE FUNCTION platform.refuse() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'refusing to delete a row of %', OLD.user_id; END $$;
             CREATE TRIGGER refuse BEFORE DELETE ON platform.conversations
               FOR EACH ROW EXECUTE FUNCTION platform.refuse();",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Undoes [`Self::refuse_deletes`]: the operator fixed the cause.
    pub async fn allow_deletes(&self) {
        sqlx::raw_sql("DROP TRIGGER refuse ON platform.conversations")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Rows of `user` in `bot` across the three stores.
    pub async fn count_rows(&self, user: &str, bot: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM platform.conversations WHERE user_id = $1 AND bot_id = $2)
                  + (SELECT count(*) FROM platform.sessions WHERE user_id = $1 AND bot_id = $2)
                  + (SELECT count(*) FROM platform.analytics_events WHERE user_id = $1 AND bot_id = $2)",
        )
        .bind(user)
        .bind(bot)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// A checksum of every platform row NOT belonging to the given (user, bot) targets:
    /// equal before and after an erasure proves nothing else was touched.
    pub async fn checksum_outside(&self, users: &[&str], bots: &[&str]) -> String {
        let users: Vec<String> = users.iter().map(|s| s.to_string()).collect();
        let bots: Vec<String> = bots.iter().map(|s| s.to_string()).collect();
        sqlx::query_scalar(
            "SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
                SELECT 'c' || id || bot_id || user_id AS x FROM platform.conversations
                 WHERE NOT (user_id = ANY($1) AND bot_id = ANY($2))
                UNION ALL SELECT 's' || id || bot_id || user_id FROM platform.sessions
                 WHERE NOT (user_id = ANY($1) AND bot_id = ANY($2))
                UNION ALL SELECT 'a' || id || bot_id || user_id FROM platform.analytics_events
                 WHERE NOT (user_id = ANY($1) AND bot_id = ANY($2))
                UNION ALL SELECT 'u' || id || coalesce(email, '') FROM platform.users
                UNION ALL SELECT 'm' || account_id || user_id || role FROM platform.account_members
                UNION ALL SELECT 'b' || bot_id || user_id || role FROM platform.bot_collaborators
                UNION ALL SELECT 'i' || channel_id || channel_user_id || user_id FROM platform.channel_identities
             ) t",
        )
        .bind(&users)
        .bind(&bots)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Registers an HS256 app with `scopes`; returns (client id, secret, token).
    pub async fn app(&self, account: &str, scopes: &[&str]) -> (String, String, String) {
        let client_id = format!("cs-{}", uuid::Uuid::new_v4());
        let secret = secrets::new_client_secret();
        let sealed = secrets::seal(&self.config().keys.secret_key.bytes, secret.as_bytes());
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        // Every app has a webhook secret, as `erasure app create` gives it.
        let webhook = erasure::callback::sign::new_secret();
        let webhook = secrets::seal(&self.config().keys.secret_key.bytes, webhook.as_bytes());
        apps::insert(
            &self.pool,
            &apps::NewApp {
                client_id: &client_id,
                account_id: &account.into(),
                scopes: &scopes,
                algorithm: "HS256",
                secret_sealed: Some(&sealed),
                public_key_pem: None,
                webhook_secret_sealed: Some(&webhook),
                callback_url: None,
                enforce_jti: false,
            },
        )
        .await
        .unwrap();
        let token = erasure::intake::auth::mint_hs256(&client_id, &secret, Some(3600)).unwrap();
        (client_id, secret, token)
    }

    /// Request status straight from the database (the public view).
    pub async fn request_status(&self, request_id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM erasure.request_status WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the request leaves `in-progress`; returns its final status.
    pub async fn wait_settled(&self, request_id: &str, timeout: Duration) -> String {
        eventually(
            timeout,
            Duration::from_millis(50),
            async || {
                self.request_status(request_id)
                    .await
                    .filter(|s| s != "in-progress")
            },
            || format!("request {request_id} did not settle within {timeout:?}"),
        )
        .await
    }

    /// Rows the request has deleted so far (the public view; 0 before it exists).
    /// Messages committed to the outbox and not yet published.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM erasure.outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn rows_deleted(&self, request_id: &str) -> i64 {
        sqlx::query_scalar("SELECT rows_deleted FROM erasure.request_status WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// Waits until the request has deleted at least `rows` rows.
    pub async fn wait_progress(&self, request_id: &str, rows: i64) {
        eventually(
            Duration::from_secs(60),
            Duration::from_millis(20),
            async || (self.rows_deleted(request_id).await >= rows).then_some(()),
            || format!("request {request_id} did not reach {rows} rows deleted"),
        )
        .await
    }

    /// The per-user outcomes from the public view, in order: (user_ref, status, reason).
    pub async fn user_outcomes(&self, request_id: &str) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as(
            "SELECT user_ref, status, reason FROM erasure.request_user_status WHERE request_id = $1 ORDER BY position",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Waits (up to 30 s) until this test's dead-letter queue holds at least `n` messages.
    pub async fn wait_dead_letters(&self, n: u32) {
        let dead = self.topology().dead_queue();
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || (self.queue_depth(&dead).await >= n).then_some(()),
            || format!("{n} messages were not dead-lettered"),
        )
        .await
    }

    /// Depth of one of this test's queues.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let (conn, _) = self.brokers().connect(0, "test").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
        q.message_count()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_url = self.db_url.clone();
        let topology = Topology::new(&self.prefix, 5);
        let brokers = self.brokers();
        // Async cleanup from Drop: a separate thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = store::drop_database(&db_url).await;
                if let Ok((conn, _)) = brokers.connect(0, "test-cleanup").await {
                    if let Ok(ch) = conn.create_channel().await {
                        for (q, _) in topology.queues() {
                            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                        }
                        let _ = ch
                            .exchange_delete(
                                topology.exchange().as_str().into(),
                                Default::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
            })
        })
        .join();
    }
}

/// The intake's API as tests call it: [`erasure::client`], answering the status code and the
/// JSON body (`Null` when the body is not JSON) whatever the status.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(running: &Running) -> Self {
        Self {
            base: format!("http://{}", running.http_addr),
            http: {
                erasure::client::install_tls();
                reqwest::Client::new()
            },
        }
    }

    fn client(&self) -> Client {
        Client::with_http(&self.base, self.http.clone())
    }

    /// `DELETE /api/public/bot/eraseUsersData` with a token in the `auth` header.
    pub async fn erase(&self, token: &str, body: &Value) -> (u16, Value) {
        answer(self.client().erase(token, body)).await
    }

    /// The same call with an `Idempotency-Key`.
    pub async fn erase_with_key(&self, token: &str, key: &str, body: &Value) -> (u16, Value) {
        answer(self.client().erase(token, body).idempotency_key(key)).await
    }

    pub async fn status(&self, token: &str, request_id: &str) -> (u16, Value) {
        answer(self.client().status(token, request_id)).await
    }

    pub async fn status_doc(&self, token: &str, request_id: &str) -> StatusDocument {
        self.client()
            .status(token, request_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("status of {request_id}: {e}"))
    }
}

async fn answer<T>(call: Call<T>) -> (u16, Value) {
    let reply = call.reply().await.expect("the intake answers");
    (reply.status(), reply.json())
}

/// Publishes a raw message to this test's `erasure` exchange, as a platform producer would.
pub async fn publish_raw(env: &TestEnv, routing_key: &str, payload: &[u8]) {
    let publisher =
        erasure::queue::publisher::Publisher::new(env.brokers(), "test-producer", env.topology());
    publisher
        .publish(
            routing_key,
            "test",
            payload,
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    publisher.close().await;
}
