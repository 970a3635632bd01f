//! The target catalog end to end (DESIGN.md section 9): a chat platform's own tables — a
//! chain of children under mixed-case, quoted names, a store of the reference model, and
//! analytics events in a second database, kept but anonymized — erased with exact counts,
//! idempotently, through faults; and bad catalogs refused before anything runs.

use std::{path::PathBuf, time::Duration};

use erasure::{startup::Role, store};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    helpers::{Api, PG_BASE, TestEnv},
    process::Process,
    proxy::Proxy,
};

const SETTLE: Duration = Duration::from_secs(90);

/// Per (user, bot): conversations, each with messages, each with attachments; sessions; and
/// analytics events.
const CONVERSATIONS: i64 = 2;
const MESSAGES: i64 = 3;
const ATTACHMENTS: i64 = 2;
const SESSIONS: i64 = 2;
const EVENTS: i64 = 4;

const CATALOG: &str = r#"
[databases.analytics]
url_env = "ANALYTICS_DATABASE_URL"

[[stores]]
name = "attachments"
table = "chat.attachments"
parent = { store = "messages", column = "message_id", references = "id" }

[[stores]]
name = "conversations"
table = "chat.\"Conversations\""
user_column = "UserId"
bot_column = "BotId"

[[stores]]
name = "messages"
table = "chat.\"Message Parts\""
parent = { store = "conversations", column = "conversation_id", references = "Id" }

[[stores]]
name = "sessions"
table = "platform.sessions"
user_column = "user_id"
bot_column = "bot_id"

[[stores]]
name = "analytics"
table = "public.events"
database = "analytics"
user_column = "uid"
bot_column = "bot"
action = "anonymize"
anonymize = { uid = "hmac", ip = "null", agent = "redact" }
"#;

const CHAT_SCHEMA: &str = r#"
CREATE SCHEMA chat;
CREATE TABLE chat."Conversations" (
    "Id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "UserId" text NOT NULL,
    "BotId" text NOT NULL);
CREATE INDEX ON chat."Conversations" ("UserId", "BotId");
CREATE TABLE chat."Message Parts" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES chat."Conversations" ("Id"),
    body text NOT NULL DEFAULT 'hello');
CREATE INDEX ON chat."Message Parts" (conversation_id);
CREATE TABLE chat.attachments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint NOT NULL REFERENCES chat."Message Parts" (id) ON DELETE RESTRICT,
    name text NOT NULL DEFAULT 'photo.jpg');
CREATE INDEX ON chat.attachments (message_id);
"#;

const ANALYTICS_SCHEMA: &str = r#"
CREATE TABLE public.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid text,
    bot text NOT NULL,
    ip inet,
    agent text,
    kind text NOT NULL DEFAULT 'message_sent');
CREATE INDEX ON public.events (uid, bot);
"#;

/// The chat platform: account `acct-c` with bots st-acct-c-1..3, users u-1 and u-2 with data
/// in every bot, the catalog in a file, the analytics database beside the test's own.
struct Chat {
    env: TestEnv,
    bots: Vec<String>,
    analytics: sqlx::PgPool,
    analytics_url: String,
    _catalog: tempfile::TempDir,
}

impl Chat {
    async fn new(vars: &[(&str, &str)]) -> Self {
        Self::with_catalog(CATALOG, vars).await
    }

    async fn with_catalog(catalog: &str, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("targets.toml");
        std::fs::write(&path, catalog).unwrap();
        let mut all: Vec<(&str, &str)> = vec![("ERASURE_TARGETS", path.to_str().unwrap())];
        all.extend_from_slice(vars);
        let mut env = TestEnv::with_vars(&all).await;
        // The analytics database is named after the test's own, and dropped with the fixture.
        let analytics_url = format!("{PG_BASE}/{}_an", env.db_name);
        env.vars
            .insert("ANALYTICS_DATABASE_URL".into(), analytics_url.clone());
        store::create_database_if_missing(&analytics_url)
            .await
            .unwrap();
        let analytics = store::connect(&analytics_url, 4, Duration::from_secs(30))
            .await
            .unwrap();
        sqlx::raw_sql(ANALYTICS_SCHEMA)
            .execute(&analytics)
            .await
            .unwrap();
        sqlx::raw_sql(CHAT_SCHEMA).execute(&env.pool).await.unwrap();
        let bots = env.account("acct-c", 3).await;
        for user in ["u-1", "u-2"] {
            env.user(user, None, None).await;
        }
        let chat = Self {
            env,
            bots,
            analytics,
            analytics_url,
            _catalog: dir,
        };
        for user in ["u-1", "u-2"] {
            for bot in &chat.bots {
                chat.seed(user, bot, 1).await;
            }
        }
        chat
    }

    /// `times` × the standard data of `user` in `bot`.
    async fn seed(&self, user: &str, bot: &str, times: i64) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            r#"WITH c AS (INSERT INTO chat."Conversations" ("UserId", "BotId")
                          SELECT '{user}', '{bot}' FROM generate_series(1, {c}) RETURNING "Id"),
                    m AS (INSERT INTO chat."Message Parts" (conversation_id)
                          SELECT "Id" FROM c, generate_series(1, {m}) RETURNING id)
               INSERT INTO chat.attachments (message_id) SELECT id FROM m, generate_series(1, {a});
               INSERT INTO platform.sessions (bot_id, user_id)
               SELECT '{bot}', '{user}' FROM generate_series(1, {s});"#,
            c = CONVERSATIONS * times,
            m = MESSAGES,
            a = ATTACHMENTS,
            s = SESSIONS * times,
        )))
        .execute(&self.env.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO public.events (uid, bot, ip, agent)
             SELECT $1, $2, '203.0.113.7', 'Mozilla/5.0' FROM generate_series(1, $3)",
        )
        .bind(user)
        .bind(bot)
        .bind(EVENTS * times)
        .execute(&self.analytics)
        .await
        .unwrap();
    }

    fn target(&self) -> Vec<&str> {
        self.bots[..2].iter().map(String::as_str).collect()
    }

    /// Rows of `user` per store in `bots` (analytics: events still naming the user).
    async fn rows(&self, user: &str, bots: &[&str]) -> [i64; 5] {
        let bots: Vec<String> = bots.iter().map(|b| b.to_string()).collect();
        let main: (i64, i64, i64, i64) = sqlx::query_as(
            r#"SELECT (SELECT count(*) FROM chat."Conversations" WHERE "UserId" = $1 AND "BotId" = ANY($2)),
                      (SELECT count(*) FROM chat."Message Parts" m JOIN chat."Conversations" c ON c."Id" = m.conversation_id
                        WHERE c."UserId" = $1 AND c."BotId" = ANY($2)),
                      (SELECT count(*) FROM chat.attachments a JOIN chat."Message Parts" m ON m.id = a.message_id
                         JOIN chat."Conversations" c ON c."Id" = m.conversation_id
                        WHERE c."UserId" = $1 AND c."BotId" = ANY($2)),
                      (SELECT count(*) FROM platform.sessions WHERE user_id = $1 AND bot_id = ANY($2))"#,
        )
        .bind(user)
        .bind(&bots)
        .fetch_one(&self.env.pool)
        .await
        .unwrap();
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM public.events WHERE uid = $1 AND bot = ANY($2)",
        )
        .bind(user)
        .bind(&bots)
        .fetch_one(&self.analytics)
        .await
        .unwrap();
        [main.0, main.1, main.2, main.3, events]
    }

    /// What one request for u-1 in the first two bots erases, per store, `times` over.
    fn expected(times: i64) -> Value {
        let conversations = 2 * CONVERSATIONS * times;
        json!({
            "deleted": {"conversations": conversations, "messages": conversations * MESSAGES,
                        "attachments": conversations * MESSAGES * ATTACHMENTS,
                        "sessions": 2 * SESSIONS * times},
            "anonymized": {"analytics": 2 * EVENTS * times},
        })
    }

    async fn submit(&self, api: &Api, token: &str) -> String {
        let body = json!({"userIds": ["u-1"], "botIds": self.target()});
        let (code, answer) = api.erase(token, &body).await;
        assert_eq!(code, 202, "{answer}");
        answer["requestId"].as_str().unwrap().to_string()
    }

    /// The counts the status document reports.
    async fn reported(&self, api: &Api, token: &str, id: &str) -> Value {
        let (code, doc) = api.status(token, id).await;
        assert_eq!(code, 200, "{doc}");
        json!({"deleted": doc["progress"]["rowsDeleted"], "anonymized": doc["progress"]["rowsAnonymized"]})
    }

    /// u-1 is gone from the target bots (analytics kept, de-identified), nothing else changed.
    async fn assert_erased(&self) {
        assert_eq!(self.rows("u-1", &self.target()).await, [0; 5]);
        let third = [self.bots[2].as_str()];
        let untouched = [
            CONVERSATIONS,
            CONVERSATIONS * MESSAGES,
            CONVERSATIONS * MESSAGES * ATTACHMENTS,
            SESSIONS,
            EVENTS,
        ];
        assert_eq!(self.rows("u-1", &third).await, untouched, "another bot");
        for bot in &self.bots {
            assert_eq!(self.rows("u-2", &[bot]).await, untouched, "another user");
        }
        let pseudonym = hex::encode(
            {
                let key = self.env.config().keys.pii_hmac_key.bytes;
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
                mac.update(b"u-1");
                mac.finalize()
            }
            .into_bytes(),
        );
        let kept: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT uid, host(ip), agent FROM public.events WHERE bot = ANY($1) AND uid IS DISTINCT FROM 'u-2'",
        )
        .bind(self.target())
        .fetch_all(&self.analytics)
        .await
        .unwrap();
        assert_eq!(kept.len() as i64, 2 * EVENTS, "anonymized rows are kept");
        for (uid, ip, agent) in kept {
            assert_eq!(
                uid.as_deref(),
                Some(pseudonym.as_str()),
                "a stable HMAC pseudonym"
            );
            assert_eq!(ip, None);
            assert_eq!(agent.as_deref(), Some("[erased]"));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let url = self.analytics_url.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(store::drop_database(&url))
        })
        .join();
    }
}

#[tokio::test]
async fn a_five_store_catalog_erases_children_first_anonymizes_elsewhere_and_counts_exactly() {
    let chat = Chat::new(&[]).await;
    let svc = chat.env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, _, token) = chat.env.app("acct-c", &["delete_users_data"]).await;

    let id = chat.submit(&api, &token).await;
    assert_eq!(chat.env.wait_settled(&id, SETTLE).await, "completed");
    chat.assert_erased().await;
    assert_eq!(chat.reported(&api, &token, &id).await, Chat::expected(1));
    let deleted: i64 =
        sqlx::query_scalar("SELECT rows_deleted FROM erasure.request_status WHERE request_id = $1")
            .bind(&id)
            .fetch_one(&chat.env.pool)
            .await
            .unwrap();
    assert_eq!(
        deleted,
        4 + 12 + 24 + 4,
        "rows_deleted stays the total deleted"
    );
    let per_store: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT store, action, sum(rows)::bigint FROM erasure.request_store_rows
          WHERE request_id = $1 GROUP BY store, action ORDER BY store",
    )
    .bind(&id)
    .fetch_all(&chat.env.pool)
    .await
    .unwrap();
    assert_eq!(per_store[0], ("analytics".into(), "anonymize".into(), 8));
    assert_eq!(per_store.len(), 5);

    // Asked again, nothing is left to erase or anonymize, and nothing is counted twice.
    let again = chat.submit(&api, &token).await;
    assert_eq!(chat.env.wait_settled(&again, SETTLE).await, "completed");
    assert_eq!(chat.reported(&api, &token, &again).await, Chat::expected(0));
    chat.assert_erased().await;
    svc.shutdown().await;
}

#[tokio::test]
async fn a_platform_with_other_names_maps_its_identity_tables_onto_platform_with_views() {
    let env = TestEnv::new().await;
    // The platform keeps its people in crm."People" and its bots elsewhere: the service's
    // reference tables give way to views of the same names over them.
    sqlx::raw_sql(
        r#"CREATE SCHEMA crm;
           CREATE TABLE crm."People" (person_id text PRIMARY KEY, mail text, ext_ref text);
           CREATE TABLE crm.handles (network text, handle text, person_id text);
           CREATE TABLE crm.staff (org text, person_id text, is_owner boolean);
           INSERT INTO crm."People" VALUES ('p-7', 'Seven@Example.com', 'x-7'), ('p-8', NULL, NULL);
           INSERT INTO crm.handles VALUES ('telegram', '777', 'p-7');
           INSERT INTO crm.staff VALUES ('acct-v', 'p-8', false);
           DROP TABLE platform.channel_identities, platform.account_members, platform.bot_collaborators, platform.users CASCADE;
           CREATE VIEW platform.users AS SELECT person_id AS id, mail AS email, ext_ref AS enterprise_id FROM crm."People";
           CREATE VIEW platform.channel_identities AS SELECT network AS channel_id, handle AS channel_user_id, person_id AS user_id FROM crm.handles;
           CREATE VIEW platform.account_members AS SELECT org AS account_id, person_id AS user_id,
                  CASE WHEN is_owner THEN 'owner' ELSE 'member' END AS role FROM crm.staff;
           CREATE VIEW platform.bot_collaborators AS SELECT NULL::text AS bot_id, NULL::text AS user_id, NULL::text AS role WHERE false;"#,
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let bots = env.account("acct-v", 1).await;
    for user in ["p-7", "p-8"] {
        sqlx::query("INSERT INTO platform.conversations (bot_id, user_id) SELECT $1, $2 FROM generate_series(1, 3)")
            .bind(&bots[0])
            .bind(user)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let (_, _, token) = env.app("acct-v", &["delete_users_data"]).await;
    let body = json!({"userIds": ["seven@example.com", {"channelId": "telegram", "channelUserId": "777"}, "p-8"],
                      "botIds": bots});
    let (code, answer) = api.erase(&token, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["requestId"].as_str().unwrap();
    assert_eq!(env.wait_settled(id, SETTLE).await, "completed");
    let outcomes: Vec<(String, Option<String>)> = env
        .user_outcomes(id)
        .await
        .into_iter()
        .map(|(_, s, r)| (s, r))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("SUCCESS".into(), None),
            ("SUCCESS".into(), None),
            ("REJECTED".into(), Some("account_member".into()))
        ]
    );
    assert_eq!(env.count_rows("p-7", &bots[0]).await, 0);
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM platform.conversations WHERE user_id = 'p-8'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(kept, 3, "the member is protected through the view");
    svc.shutdown().await;
}

/// `erasure targets check` with this test's settings.
async fn targets_check(env: &TestEnv, json: bool) -> (bool, String, String) {
    let mut args = vec!["targets", "check"];
    if json {
        args.push("--json");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_erasure"))
        .args(&args)
        .env_clear()
        .envs(&env.vars)
        .env("ERASURE_LOG", "error")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn targets_check_accepts_the_catalog_and_names_an_index_to_create() {
    let chat = Chat::new(&[]).await;
    let (ok, stdout, stderr) = targets_check(&chat.env, false).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("ok (catalog digest "), "{stdout}");
    sqlx::raw_sql("DROP INDEX chat.attachments_message_id_idx")
        .execute(&chat.env.pool)
        .await
        .unwrap();
    let (ok, stdout, _) = targets_check(&chat.env, true).await;
    assert!(ok, "a missing index is a warning, not an error: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["warnings"][0]["store"], "attachments");
    assert_eq!(
        report["warnings"][0]["createIndex"],
        "CREATE INDEX CONCURRENTLY ON \"chat\".\"attachments\" (\"message_id\");"
    );
    assert_eq!(report["digest"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_catalog_that_does_not_match_its_tables_stops_the_process_naming_store_and_field() {
    let broken = CATALOG.replace("ip = \"null\"", "ip_addr = \"null\"");
    let chat = Chat::with_catalog(&broken, &[]).await;
    let (ok, stdout, stderr) = targets_check(&chat.env, false).await;
    assert!(!ok);
    assert!(
        stdout.contains(
            "store \"analytics\": anonymize.ip_addr: column ip_addr not found in public.events"
        ),
        "{stdout}"
    );
    assert!(stderr.contains("cannot be used"), "{stderr}");
    let error = erasure::startup::start(chat.env.config(), Role::Worker)
        .await
        .err()
        .expect("a worker refuses to start");
    let text = format!("{error:#}");
    assert!(text.contains("targets.toml"), "names the file: {text}");
    assert!(
        text.contains("store \"analytics\": anonymize.ip_addr"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hostile_name_is_refused_before_anything_runs() {
    let hostile = CATALOG.replace(
        "table = \"platform.sessions\"",
        "table = \"sessions; DROP TABLE users; --\"",
    );
    let chat = Chat::with_catalog(&hostile, &[]).await;
    let (ok, stdout, _) = targets_check(&chat.env, false).await;
    assert!(!ok);
    assert!(
        stdout.contains(
            "store \"sessions\": table: \"sessions; DROP TABLE users; --\" is not a name"
        ),
        "{stdout}"
    );
    let error = erasure::startup::start(chat.env.config(), Role::All)
        .await
        .err()
        .expect("the service refuses to start");
    assert!(format!("{error:#}").contains("is not a name"), "{error:#}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM platform.users")
        .fetch_one(&chat.env.pool)
        .await
        .unwrap();
    assert_eq!(users, 2, "platform.users is still there");
}

/// Small batches under a ceiling, so that a fault lands mid-erasure.
const SLOW: &[(&str, &str)] = &[
    ("ERASURE_BATCH_SIZE", "4"),
    ("ERASURE_BATCHES_PER_SLICE", "3"),
    ("ERASURE_MAX_ROWS_PER_SECOND", "400"),
    ("ERASURE_SHUTDOWN_GRACE_SECONDS", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_in_a_child_store_and_in_the_second_database_counts_exactly() {
    const TIMES: i64 = 6;
    let chat = Chat::new(SLOW).await;
    for bot in chat.target() {
        chat.seed("u-1", bot, TIMES - 1).await;
    }
    let intake = chat.env.start(Role::Intake).await;
    let api = Api::new(&intake);
    let (_, _, token) = chat.env.app("acct-c", &["delete_users_data"]).await;
    let id = chat.submit(&api, &token).await;
    // Killed twice: once while the children of the first conversations go, once later.
    for progress in [10, 120] {
        let worker = Process::spawn(&chat.env, "worker", &[]).await;
        chat.env.wait_progress(&id, progress).await;
        worker.kill().await;
    }
    let anonymized: i64 = sqlx::query_scalar(
        "SELECT rows_anonymized FROM erasure.request_status WHERE request_id = $1",
    )
    .bind(&id)
    .fetch_one(&chat.env.pool)
    .await
    .unwrap();
    assert!(
        anonymized < 2 * EVENTS * TIMES,
        "the kill landed mid-anonymization too"
    );
    let _worker = Process::spawn(&chat.env, "worker", &[]).await;
    assert_eq!(chat.env.wait_settled(&id, SETTLE).await, "completed");
    chat.assert_erased_times(TIMES).await;
    assert_eq!(
        chat.reported(&api, &token, &id).await,
        Chat::expected(TIMES)
    );
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_database_that_is_down_fails_the_task_with_a_reason_and_redrive_completes_it() {
    let chat = Chat::new(&[]).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let through_proxy = proxy.rewrite(&chat.analytics_url, "127.0.0.1:5432");
    let worker_vars = [
        ("ANALYTICS_DATABASE_URL", through_proxy.as_str()),
        ("ERASURE_DB_RETRY_SECONDS", "1"),
        ("ERASURE_MAX_HANDBACKS", "2"),
    ];
    let worker = Process::spawn(&chat.env, "worker", &worker_vars).await;
    proxy.cut();
    let intake = chat.env.start(Role::Intake).await;
    let api = Api::new(&intake);
    let (_, _, token) = chat.env.app("acct-c", &["delete_users_data"]).await;
    let id = chat.submit(&api, &token).await;
    assert_eq!(chat.env.wait_settled(&id, SETTLE).await, "failed");
    let reason: String = sqlx::query_scalar(
        "SELECT failure_reason FROM erasure.request_status WHERE request_id = $1",
    )
    .bind(&id)
    .fetch_one(&chat.env.pool)
    .await
    .unwrap();
    assert!(reason.contains("database analytics"), "{reason}");
    assert!(
        !reason.contains("u-1"),
        "no identifier in the reason: {reason}"
    );

    proxy.restore();
    let moved = erasure::queue::redrive::redrive(
        &chat.env.pool,
        crate::helpers::AMQP_URL,
        &chat.env.topology(),
        100,
    )
    .await
    .unwrap();
    assert!(moved >= 1);
    assert_eq!(chat.env.wait_settled(&id, SETTLE).await, "completed");
    chat.assert_erased().await;
    assert_eq!(chat.reported(&api, &token, &id).await, Chat::expected(1));
    drop(worker);
    intake.shutdown().await;
}

impl Chat {
    /// [`Chat::assert_erased`] for data seeded `times` over in the target bots.
    async fn assert_erased_times(&self, times: i64) {
        assert_eq!(self.rows("u-1", &self.target()).await, [0; 5]);
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM public.events WHERE bot = ANY($1) AND uid IS DISTINCT FROM 'u-2'",
        )
        .bind(self.target())
        .fetch_one(&self.analytics)
        .await
        .unwrap();
        assert_eq!(left, 2 * EVENTS * times, "anonymized rows are kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_task_run_twice_at_once_counts_every_row_of_every_store_once() {
    use erasure::{
        contract::TaskMessage,
        erase::Targets,
        worker::{Ctx, job::Step, plan, task},
    };
    let chat = Chat::new(&[("ERASURE_BATCH_SIZE", "3")]).await;
    // Four times the standard data in each target bot, for several batches of 3.
    for bot in chat.target() {
        chat.seed("u-1", bot, 3).await;
    }
    let config = chat.env.config();
    let targets = Targets::connect(&config, chat.env.pool.clone())
        .await
        .unwrap();
    let ctx = Ctx::new(config, std::sync::Arc::new(targets));
    let msg = erasure::contract::EraseMessage {
        request_id: erasure::domain::RequestId::generate(),
        account_id: "acct-c".into(),
        request: erasure::contract::EraseRequest {
            user_ids: vec![erasure::contract::UserEntry::Id("u-1".into())],
            bot_ids: chat.target().into_iter().map(Into::into).collect(),
            remove_data_from_all_bots: false,
            callback_url: None,
        },
        requested_by: "catalog-test".into(),
        requested_at: None,
    };
    let Step::Planned { messages } = plan::plan(&ctx, &msg).await.unwrap() else {
        panic!("planned")
    };
    let task: TaskMessage = serde_json::from_slice(&messages[0].payload).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (a, b) = tokio::join!(task::run(&ctx, &task, &stop), task::run(&ctx, &task, &stop));
    a.unwrap();
    b.unwrap();
    // Whatever the two copies left (each works one slice), later slices finish.
    let mut rounds = 0;
    while chat
        .env
        .request_status(msg.request_id.as_str())
        .await
        .as_deref()
        == Some("in-progress")
    {
        for m in messages_of(&chat.env, &msg.request_id).await {
            let _ = task::run(&ctx, &m, &stop).await.unwrap();
        }
        rounds += 1;
        assert!(rounds < 100, "the request completes");
    }
    chat.assert_erased_times(4).await;
    let counted: Vec<(String, i64)> = sqlx::query_as(
        "SELECT store, sum(rows)::bigint FROM erasure.request_store_rows WHERE request_id = $1
          GROUP BY store ORDER BY store",
    )
    .bind(msg.request_id.as_str())
    .fetch_all(&chat.env.pool)
    .await
    .unwrap();
    let expected = Chat::expected(4);
    for (store, rows) in counted {
        let want = expected["deleted"][&store]
            .as_i64()
            .or(expected["anonymized"][&store].as_i64())
            .unwrap();
        assert_eq!(rows, want, "{store} counted once");
    }
}

/// The task messages of a request waiting in the outbox (what the runner would publish).
async fn messages_of(
    env: &TestEnv,
    id: &erasure::domain::RequestId,
) -> Vec<erasure::contract::TaskMessage> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM erasure.outbox WHERE message_id LIKE $1 || '/%' RETURNING payload",
    )
    .bind(id.as_str())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    payloads
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect()
}
