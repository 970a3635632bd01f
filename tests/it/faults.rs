//! Durability under faults (DESIGN.md section 6): each test inflicts a real fault (SIGKILL,
//! SIGTERM, a broker or database connection cut by a proxy, duplicated deliveries, poison
//! messages, a permanent failure) on a request in flight, and ends by checking the promise:
//! the request is terminal with the right status, every target row is gone, the rows
//! deleted are counted exactly once, and no other row changed.

use std::time::Duration;

use erasure::{
    contract::{ERASE_ROUTING_KEY, TASK_ROUTING_KEY},
    queue::{consumer::Outcome, delivery_number, header_str, publisher::Publisher, redrive},
    startup::Role,
    worker::{Ctx, job::Runner, task::TaskJob},
};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use serde_json::json;

use crate::{
    helpers::{AMQP_URL, Api, TestEnv, eventually, publish_raw},
    load::Load,
    process::Process,
    proxy::Proxy,
};

const USERS: [&str; 2] = ["u-1", "u-2"];
const PG_ADDR: &str = "127.0.0.1:5432";
const AMQP_ADDR: &str = "127.0.0.1:5672";

/// Small batches and slices and a rows-per-second ceiling, so that a request takes a few
/// seconds and a fault reliably lands in the middle of it.
const SLOW: &[(&str, &str)] = &[
    ("ERASURE_BATCH_SIZE", "50"),
    ("ERASURE_BATCHES_PER_SLICE", "4"),
    ("ERASURE_MAX_ROWS_PER_SECOND", "1500"),
    ("ERASURE_SHUTDOWN_GRACE_SECONDS", "1"),
    ("ERASURE_OUTBOX_POLL_MS", "200"),
];

/// Account `acct-a` with three bots, `acct-b` with one; users u-1, u-2, u-3 with `rows` rows
/// per store in every bot. The target: u-1 and u-2 in the first two bots of `acct-a`.
struct Scenario {
    env: TestEnv,
    bots: Vec<String>,
    foreign_bot: String,
    rows: i64,
    before: String,
}

impl Scenario {
    async fn new(vars: &[(&str, &str)], rows: i64) -> Self {
        let env = TestEnv::with_vars(vars).await;
        let bots = env.account("acct-a", 3).await;
        let foreign = env.account("acct-b", 1).await;
        for u in ["u-1", "u-2", "u-3"] {
            env.user_with_rows(u, bots.iter().chain(&foreign), rows)
                .await;
        }
        let target: Vec<&str> = bots[..2].iter().map(String::as_str).collect();
        let before = env.checksum_outside(&USERS, &target).await;
        Self {
            env,
            foreign_bot: foreign[0].clone(),
            bots,
            rows,
            before,
        }
    }

    fn target_bots(&self) -> Vec<&str> {
        self.bots[..2].iter().map(String::as_str).collect()
    }

    /// Rows the request must delete, per store.
    fn per_store(&self) -> i64 {
        (USERS.len() * 2) as i64 * self.rows
    }

    fn total(&self) -> i64 {
        3 * self.per_store()
    }

    /// The request as a platform producer publishes it.
    fn message(&self, request_id: &str, bots: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": 1, "requestId": request_id, "accountId": "acct-a",
            "userIds": USERS, "botIds": bots, "removeDataFromAllBots": false,
            "requestedBy": "platform-producer", "requestedAt": "2026-11-28T10:00:00Z"}))
        .unwrap()
    }

    /// Submits the request over HTTP; returns its id once answered 202.
    async fn submit(&self, api: &Api) -> String {
        let (_, _, token) = self.env.app("acct-a", &["delete_users_data"]).await;
        let (code, body) = api
            .erase(
                &token,
                &json!({"userIds": USERS, "botIds": self.target_bots()}),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        body["requestId"].as_str().unwrap().to_string()
    }

    /// Target rows still present.
    async fn remaining(&self) -> i64 {
        let mut n = 0;
        for u in USERS {
            for b in self.target_bots() {
                n += self.env.count_rows(u, b).await;
            }
        }
        n
    }

    async fn tasks_planned(&self, id: &str) -> bool {
        sqlx::query_scalar::<_, i32>(
            "SELECT tasks_total FROM erasure.request_status WHERE request_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.env.pool)
        .await
        .unwrap()
        .is_some_and(|n| n > 0)
    }

    async fn wait_planned(&self, id: &str) {
        eventually(
            Duration::from_secs(60),
            Duration::from_millis(20),
            async || self.tasks_planned(id).await.then_some(()),
            || format!("request {id} was not planned"),
        )
        .await
    }

    /// Mid-work: not settled, some target rows left, and the rows counted are exactly the
    /// rows gone (a fault never leaves a deleted batch uncounted or counted twice).
    async fn assert_mid_work(&self, id: &str) {
        assert_eq!(
            self.env.request_status(id).await.as_deref(),
            Some("in-progress"),
            "the fault landed mid-erasure"
        );
        let remaining = self.remaining().await;
        assert!(remaining > 0, "the fault landed before the last row");
        assert_eq!(self.env.rows_deleted(id).await, self.total() - remaining);
    }

    /// The promise: completed, every target row gone and counted once, nothing else touched,
    /// every user erased.
    async fn assert_erased(&self, id: &str) {
        let status = self.env.wait_settled(id, Duration::from_secs(90)).await;
        assert_eq!(status, "completed");
        assert_eq!(self.remaining().await, 0, "every target row is gone");
        assert_eq!(
            self.env.checksum_outside(&USERS, &self.target_bots()).await,
            self.before,
            "no other row changed"
        );
        let (conv, sess, anal, tasks, done): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT sum(rows_conversations)::bigint, sum(rows_sessions)::bigint,
                    sum(rows_analytics)::bigint, count(*),
                    count(*) FILTER (WHERE status = 'done')
               FROM erasure.task_totals WHERE request_id = $1",
        )
        .bind(id)
        .fetch_one(&self.env.pool)
        .await
        .unwrap();
        let n = self.per_store();
        assert_eq!((conv, sess, anal), (n, n, n), "rows deleted, counted once");
        assert_eq!((tasks, done), (2, 2), "one task per bot, each done once");
        let (total, counted): (i32, i32) = sqlx::query_as(
            "SELECT tasks_total, tasks_done FROM erasure.request_status WHERE request_id = $1",
        )
        .bind(id)
        .fetch_one(&self.env.pool)
        .await
        .unwrap();
        assert_eq!((total, counted), (2, 2), "each task counted once");
        let outcomes = self.env.user_outcomes(id).await;
        assert_eq!(outcomes.len(), USERS.len());
        for (user, status, reason) in outcomes {
            assert_eq!((status.as_str(), reason), ("SUCCESS", None), "{user}");
        }
    }
}

fn api_at(addr: std::net::SocketAddr) -> Api {
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

async fn declare_topology(env: &TestEnv) {
    let conn = erasure::queue::connect(AMQP_URL, "test-declare")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    env.topology().declare(&ch).await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

/// The next message on `queue` (a requeued one may take a moment to be available again).
async fn get_one(ch: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            ch.basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
        },
        || format!("{queue} stays empty"),
    )
    .await
}

/// Dead letters, taken off the test's queue until `enough` says the ones taken so far are
/// what the test waits for (30 s at most; `what` says what did not come); all those taken.
async fn drain_dead_until(
    env: &TestEnv,
    what: &str,
    enough: impl Fn(&[(Option<String>, Option<String>)]) -> bool,
) -> Vec<(Option<String>, Option<String>)> {
    let taken = std::cell::RefCell::new(Vec::new());
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let more = drain_dead(env).await;
            let mut dead = taken.borrow_mut();
            dead.extend(more);
            enough(&dead).then_some(())
        },
        || format!("{what}: {:?}", taken.borrow()),
    )
    .await;
    taken.into_inner()
}

/// Takes every message off the test's dead-letter queue: (reason header, request id header).
async fn drain_dead(env: &TestEnv) -> Vec<(Option<String>, Option<String>)> {
    let conn = erasure::queue::connect(AMQP_URL, "test-dead")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            env.topology().dead_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
    {
        let props = &m.delivery.properties;
        out.push((
            header_str(props, "x-erasure-reason"),
            header_str(props, "x-erasure-request-id"),
        ));
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_again_and_again_mid_erasure_completes_it_exactly_once_restarted() {
    let s = Scenario::new(SLOW, 600).await;
    let intake = s.env.start(Role::Intake).await;
    let id = s.submit(&Api::new(&intake)).await;

    // Kill points: as soon as the request is planned, then a quarter and half-way through.
    for percent in [0, 25, 55] {
        let worker = Process::spawn(&s.env, "worker", SLOW).await;
        if percent == 0 {
            s.wait_planned(&id).await;
        } else {
            s.env.wait_progress(&id, s.total() * percent / 100).await;
        }
        worker.kill().await;
        s.assert_mid_work(&id).await;
    }
    let _worker = Process::spawn(&s.env, "worker", SLOW).await;
    s.assert_erased(&id).await;
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_it_erases_at_planning_leaves_the_rest_to_the_task_message() {
    // Few rows: the request is small enough to be erased by the delivery that plans it.
    let s = Scenario::new(
        &[
            ("ERASURE_SHUTDOWN_GRACE_SECONDS", "1"),
            ("ERASURE_OUTBOX_POLL_MS", "200"),
        ],
        5,
    )
    .await;
    // The conversations' delete holds the planning delivery long enough to kill it there.
    sqlx::raw_sql(
        "CREATE FUNCTION platform.slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
         CREATE TRIGGER slow BEFORE DELETE ON platform.conversations
           FOR EACH STATEMENT EXECUTE FUNCTION platform.slow();",
    )
    .execute(&s.env.pool)
    .await
    .unwrap();
    let intake = s.env.start(Role::Intake).await;
    let id = s.submit(&Api::new(&intake)).await;
    let worker = Process::spawn(&s.env, "worker", &[]).await;
    s.wait_planned(&id).await;
    // Planned, its task message in the outbox, unpublished: the delivery is erasing.
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasure.outbox WHERE message_id LIKE $1 || '/%'")
            .bind(&id)
            .fetch_one(&s.env.pool)
            .await
            .unwrap();
    assert_eq!(waiting, 1, "the task message waits in the outbox");
    worker.kill().await;
    sqlx::raw_sql("DROP TRIGGER slow ON platform.conversations")
        .execute(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(
        s.env.request_status(&id).await.as_deref(),
        Some("in-progress")
    );
    assert!(s.remaining().await > 0, "the kill landed before the end");
    // The relay publishes the task message; a new worker finishes, counting each row once.
    let _worker = Process::spawn(&s.env, "worker", &[]).await;
    s.assert_erased(&id).await;
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_cut_mid_erasure_and_restored_completes_it() {
    let s = Scenario::new(SLOW, 500).await;
    let proxy = Proxy::start(AMQP_ADDR).await;
    let amqp = proxy.rewrite(AMQP_URL, AMQP_ADDR);
    let worker = Process::spawn(&s.env, "worker", &[("AMQP_URL", amqp.as_str())]).await;
    let intake = s.env.start(Role::Intake).await;
    let id = s.submit(&Api::new(&intake)).await;

    s.env.wait_progress(&id, s.total() / 4).await;
    let before_cut = proxy.connections();
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.assert_mid_work(&id).await;
    proxy.restore();

    s.assert_erased(&id).await;
    assert!(
        proxy.connections() > before_cut,
        "the worker reconnected to the broker"
    );
    assert!(
        worker.logged("consumer lost its connection") > 0,
        "the worker saw the cut:\n{}",
        worker.log_text()
    );
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_connection_cut_mid_erasure_and_restored_completes_it() {
    let s = Scenario::new(SLOW, 500).await;
    let proxy = Proxy::start(PG_ADDR).await;
    let db = proxy.rewrite(&s.env.db_url, PG_ADDR);
    let worker = Process::spawn(&s.env, "worker", &[("DATABASE_URL", db.as_str())]).await;
    let intake = s.env.start(Role::Intake).await;
    let id = s.submit(&Api::new(&intake)).await;

    s.env.wait_progress(&id, s.total() / 4).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.assert_mid_work(&id).await;
    proxy.restore();

    s.assert_erased(&id).await;
    assert!(
        worker.logged("transient database error") > 0,
        "the worker saw the cut:\n{}",
        worker.log_text()
    );
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_that_dies_between_commit_and_publish_loses_nothing() {
    let s = Scenario::new(SLOW, 100).await;
    // The intake's broker is unreachable from the start: it commits and answers 202, but
    // cannot publish; then it dies.
    let proxy = Proxy::start(AMQP_ADDR).await;
    proxy.cut();
    let amqp = proxy.rewrite(AMQP_URL, AMQP_ADDR);
    let intake = Process::spawn(&s.env, "intake", &[("AMQP_URL", amqp.as_str())]).await;
    let id = s.submit(&api_at(intake.http)).await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.outbox")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(pending, 1, "the request waits in the outbox");
    intake.kill().await;
    declare_topology(&s.env).await;
    assert_eq!(
        s.env.queue_depth(&s.env.topology().requests_queue()).await,
        0,
        "nothing reached the broker"
    );
    assert_eq!(
        s.env.request_status(&id).await.as_deref(),
        Some("in-progress")
    );

    // Any process's relay publishes what the dead intake committed.
    let _worker = Process::spawn(&s.env, "worker", SLOW).await;
    s.assert_erased(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_to_two_workers_is_counted_once() {
    // Slices of 300 rows at 200 rows/s: the first slices are still running when their
    // copies arrive. Worker A holds no more than its two tasks, so the copies go to B.
    let vars = [
        ("ERASURE_PREFETCH", "2"),
        ("ERASURE_WORKER_CONCURRENCY", "2"),
        ("ERASURE_BATCH_SIZE", "25"),
        ("ERASURE_BATCHES_PER_SLICE", "12"),
        ("ERASURE_MAX_ROWS_PER_SECOND", "200"),
        ("ERASURE_LOG", "info,erasure=debug"),
    ];
    let s = Scenario::new(&vars, 150).await;
    let id = format!("eud-{}", uuid::Uuid::new_v4());
    let message = s.message(&id, &s.target_bots());
    publish_raw(&s.env, ERASE_ROUTING_KEY, &message).await;
    publish_raw(&s.env, ERASE_ROUTING_KEY, &message).await;
    let a = Process::spawn(&s.env, "worker", &[]).await;
    s.env.wait_progress(&id, 1).await;
    let b = Process::spawn(&s.env, "worker", &[]).await;
    publish_raw(&s.env, ERASE_ROUTING_KEY, &message).await;
    for bot in s.target_bots() {
        for slice in [0, 1] {
            let task = json!({"version": 1, "requestId": id, "botId": bot, "slice": slice});
            publish_raw(&s.env, TASK_ROUTING_KEY, task.to_string().as_bytes()).await;
        }
    }
    s.assert_erased(&id).await;

    let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.requests")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(requests, 1, "the duplicate requests planned nothing more");
    assert!(
        drain_dead(&s.env).await.is_empty(),
        "no duplicate was dead-lettered"
    );
    // The same task ran on both workers at once: A was deleting before B existed, and B's
    // copy of slice 0 still found rows of that task to delete.
    let slice0 = |p: &Process| -> Vec<String> {
        p.events("slice worked")
            .into_iter()
            .filter(|e| e["span"]["slice"] == 0 && e["fields"]["rows"].as_u64() > Some(0))
            .flat_map(|e| {
                let bots = e["fields"]["bots"].as_str().unwrap().to_string();
                bots.split(',').map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    };
    // A slice's event is logged when it ends, and A's (paced, over both bots) may still be
    // running when the request completes: B's copies finished the rows.
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let (on_a, on_b) = (slice0(&a), slice0(&b));
            on_b.iter().any(|bot| on_a.contains(bot)).then_some(())
        },
        || {
            format!(
                "a task's first slice deleted rows on both workers: {:?} {:?}",
                slice0(&a),
                slice0(&b)
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_a_reason_and_the_next_one_is_processed() {
    let s = Scenario::new(&[("ERASURE_MAX_BODY_BYTES", "4096")], 20).await;
    let worker = s.env.start(Role::Worker).await;
    let bots = s.target_bots();
    let id = |tag: &str| format!("eud-poison-{tag}-{}", uuid::Uuid::new_v4().simple());
    let wrong_version = id("version");
    let missing = id("missing");
    let foreign = id("foreign");
    let oversize = id("oversize");
    let mut v2: serde_json::Value =
        serde_json::from_slice(&s.message(&wrong_version, &bots)).unwrap();
    v2["version"] = json!(2);
    let mut no_account: serde_json::Value =
        serde_json::from_slice(&s.message(&missing, &bots)).unwrap();
    no_account.as_object_mut().unwrap().remove("accountId");
    let mut huge: serde_json::Value = serde_json::from_slice(&s.message(&oversize, &bots)).unwrap();
    huge["padding"] = json!("x".repeat(8192));
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (ERASE_ROUTING_KEY, b"{not json".to_vec()),
        (ERASE_ROUTING_KEY, v2.to_string().into_bytes()),
        (ERASE_ROUTING_KEY, huge.to_string().into_bytes()),
        (ERASE_ROUTING_KEY, no_account.to_string().into_bytes()),
        (ERASE_ROUTING_KEY, s.message("req-not-eud-1", &bots)),
        (
            ERASE_ROUTING_KEY,
            s.message(&foreign, &[bots[0], s.foreign_bot.as_str()]),
        ),
        (TASK_ROUTING_KEY, b"\x00\x01 binary".to_vec()),
    ];
    for (key, payload) in &poison {
        publish_raw(&s.env, key, payload).await;
    }
    let valid = format!("eud-{}", uuid::Uuid::new_v4());
    publish_raw(&s.env, ERASE_ROUTING_KEY, &s.message(&valid, &bots)).await;
    s.assert_erased(&valid).await;

    // Every poison message is in the dead-letter queue with its reason.
    let dead = drain_dead_until(&s.env, "not every poison message was dead-lettered", |d| {
        d.len() >= poison.len()
    })
    .await;
    assert_eq!(dead.len(), poison.len(), "{dead:?}");
    for (reason, _) in &dead {
        assert!(reason.as_deref().is_some_and(|r| !r.is_empty()), "{dead:?}");
    }
    // Where they carry a usable request id, the request is recorded as failed, with a reason
    // that names no user.
    for rid in [&wrong_version, &missing, &foreign, &oversize] {
        assert!(
            dead.iter().any(|(_, r)| r.as_deref() == Some(rid.as_str())),
            "{rid} is dead-lettered under its id: {dead:?}"
        );
        let (status, reason): (String, Option<String>) = sqlx::query_as(
            "SELECT status, failure_reason FROM erasure.request_status WHERE request_id = $1",
        )
        .bind(rid)
        .fetch_one(&s.env.pool)
        .await
        .unwrap_or_else(|e| panic!("{rid} is recorded: {e}"));
        assert_eq!(status, "failed", "{rid}");
        let reason = reason.unwrap_or_default();
        assert!(
            !reason.is_empty() && !reason.contains("u-1"),
            "{rid}: {reason}"
        );
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.dead_letters")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, poison.len() as i64);
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM erasure.requests WHERE request_id NOT LIKE 'eud-%'",
    )
    .fetch_one(&s.env.pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "an id that breaks the rules is never recorded");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_task_fails_without_pii_and_completes_after_redrive() {
    let s = Scenario::new(&[("ERASURE_BATCH_SIZE", "50")], 120).await;
    s.env.refuse_deletes().await;
    let worker = s.env.start(Role::Worker).await;
    let id = format!("eud-{}", uuid::Uuid::new_v4());
    publish_raw(&s.env, ERASE_ROUTING_KEY, &s.message(&id, &s.target_bots())).await;

    assert_eq!(
        s.env.wait_settled(&id, Duration::from_secs(60)).await,
        "failed"
    );
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT failure_reason FROM erasure.request_status WHERE request_id = $1",
    )
    .bind(&id)
    .fetch_one(&s.env.pool)
    .await
    .unwrap();
    let reason = reason.expect("a failed request says why");
    assert!(!reason.contains("u-"), "the reason names no user: {reason}");
    for (user, status, why) in s.env.user_outcomes(&id).await {
        assert_eq!(status, "FAILED", "{user}");
        let why = why.expect("a failed user says why");
        assert!(!why.contains("u-"), "{why}");
    }
    // The task message (one for both bots: they share their statements) is dead-lettered,
    // and both tasks are marked failed.
    s.env.wait_dead_letters(1).await;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM erasure.tasks WHERE request_id = $1 AND status = 'failed'",
    )
    .bind(&id)
    .fetch_one(&s.env.pool)
    .await
    .unwrap();
    assert_eq!(failed, 2, "both tasks of the message failed");

    // The operator fixes the cause and redrives: the request resumes and completes.
    s.env.allow_deletes().await;
    let moved = redrive::redrive(&s.env.pool, AMQP_URL, &s.env.topology(), 100)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    s.assert_erased(&id).await;
    assert_eq!(s.env.queue_depth(&s.env.topology().dead_queue()).await, 0);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_erasure_exits_cleanly_and_a_restart_finishes_the_work() {
    let s = Scenario::new(SLOW, 500).await;
    let intake = s.env.start(Role::Intake).await;
    let id = s.submit(&Api::new(&intake)).await;

    // First with short slices, which finish within the grace period.
    let worker = Process::spawn(&s.env, "worker", SLOW).await;
    s.env.wait_progress(&id, s.total() / 5).await;
    let (status, text) = worker.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}:\n{text}");
    assert!(
        text.contains("\"stopped\""),
        "it shut down in order:\n{text}"
    );
    s.assert_mid_work(&id).await;

    // Then with slices far longer than the grace period: they are handed back.
    let long = [("ERASURE_BATCHES_PER_SLICE", "100000")];
    let worker = Process::spawn(&s.env, "worker", &long).await;
    s.env.wait_progress(&id, s.total() / 3).await;
    let (status, text) = worker.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}:\n{text}");
    assert!(
        text.contains("grace period over: handing in-flight work back"),
        "{text}"
    );
    s.assert_mid_work(&id).await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.outbox")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    let queued = s.env.queue_depth(&s.env.topology().tasks_queue()).await;
    // The request's one message (both bots) continues as two halves, one bot each.
    assert_eq!(
        queued as i64 + outbox,
        2,
        "the unfinished message left its continuation behind, split in two"
    );

    let _worker = Process::spawn(&s.env, "worker", SLOW).await;
    s.assert_erased(&id).await;
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_put_back_after_a_transient_failure_does_not_count_a_delivery() {
    let env = TestEnv::new().await;
    declare_topology(&env).await;
    let queue = env.topology().tasks_queue();
    let payload = br#"{"version":1,"requestId":"eud-transient","botId":"st-1","slice":0}"#;
    publish_raw(&env, TASK_ROUTING_KEY, payload).await;
    let conn = erasure::queue::connect(AMQP_URL, "test-get").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Two deliveries handed back with a plain requeue: the broker counts both.
    for _ in 0..2 {
        let m = get_one(&ch, &queue).await;
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let m = get_one(&ch, &queue).await;
    assert_eq!(delivery_number(&m.delivery.properties), 3);

    // What the runner does when the database stays away past the retry budget.
    let publisher = std::sync::Arc::new(Publisher::new(AMQP_URL, "test-retry", env.topology()));
    let ctx = std::sync::Arc::new(Ctx::built_in(env.pool.clone(), env.config()));
    let runner = Runner::new(TaskJob, ctx, publisher.clone());
    let outcome = runner.hand_back("eud-transient/st-1/0", payload).await;
    assert_eq!(outcome, Outcome::Ack);
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    let again = get_one(&ch, &queue).await;
    assert_eq!(again.delivery.data, payload);
    assert_eq!(
        delivery_number(&again.delivery.properties),
        1,
        "the wait did not count towards x-delivery-limit"
    );
    again
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    publisher.close().await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_worker_again_and_again_is_dead_lettered() {
    // One slice for the whole request, so that every worker gets the same task message; two
    // deliveries that end with the worker gone make a crash loop.
    let mut vars = SLOW.to_vec();
    vars.extend([
        ("ERASURE_BATCHES_PER_SLICE", "100000"),
        ("ERASURE_MAX_DELIVERIES", "2"),
    ]);
    let s = Scenario::new(&vars, 600).await;
    let id = format!("eud-{}", uuid::Uuid::new_v4());
    publish_raw(&s.env, ERASE_ROUTING_KEY, &s.message(&id, &s.target_bots())).await;

    // The task message kills two workers in turn (a SIGKILL while it runs stands for a crash
    // it causes).
    let mut deleted = 0;
    for _ in 0..2 {
        let worker = Process::spawn(&s.env, "worker", &[]).await;
        s.env.wait_progress(&id, deleted + 1).await;
        worker.kill().await;
        s.assert_mid_work(&id).await;
        deleted = s.env.rows_deleted(&id).await;
    }
    // The third worker dead-letters it without working it.
    let _worker = Process::spawn(&s.env, "worker", &[]).await;
    assert_eq!(
        s.env.wait_settled(&id, Duration::from_secs(60)).await,
        "failed"
    );
    // (Twice if the killed planner left its task message to be published again.)
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM erasure.dead_letters WHERE request_id = $1 AND routing_key = $2",
    )
    .bind(&id)
    .bind(TASK_ROUTING_KEY)
    .fetch_all(&s.env.pool)
    .await
    .unwrap();
    assert!(
        !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| r.starts_with("delivered 3 times without being settled")),
        "{reasons:?}"
    );
    assert_eq!(s.env.rows_deleted(&id).await, deleted, "not worked again");
    // Recorded first, then published to the dead-letter queue.
    drain_dead_until(
        &s.env,
        "the task message is not in the dead-letter queue",
        |d| {
            d.iter().any(|(why, rid)| {
                why.as_deref()
                    .is_some_and(|w| w.starts_with("delivered 3 times without being settled"))
                    && rid.as_deref() == Some(id.as_str())
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_lost_again_and_again_never_dead_letter_a_healthy_message() {
    // One task at a time and eight prefetched: the seven waiting are given back at every cut
    // and prefetched again after it, their x-delivery-count growing past
    // ERASURE_MAX_DELIVERIES (2), which the old count of deliveries dead-lettered.
    let vars = [
        ("ERASURE_BATCH_SIZE", "20"),
        ("ERASURE_BATCHES_PER_SLICE", "2"),
        ("ERASURE_MAX_ROWS_PER_SECOND", "200"),
        ("ERASURE_BOTS_PER_MESSAGE", "1"),
        ("ERASURE_WORKER_CONCURRENCY", "1"),
        ("ERASURE_PREFETCH", "8"),
        ("ERASURE_MAX_DELIVERIES", "2"),
        ("ERASURE_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let load = std::sync::Arc::new(Load::new(&vars, 16, 20).await);
    let proxy = Proxy::start(AMQP_ADDR).await;
    let amqp = proxy.rewrite(AMQP_URL, AMQP_ADDR);
    let worker = Process::spawn(&load.env, "worker", &[("AMQP_URL", amqp.as_str())]).await;
    let intake = load.env.start(Role::Intake).await;
    let submitted = load
        .stream(Api::new(&intake), Duration::from_millis(0))
        .end()
        .await;

    // Cut until a message came back as often as the limit allows crashes: the worker
    // republishes it (resetting the broker's count) rather than dead-letter it.
    let republished = "redelivered without crashes; republishing it";
    let mut cuts = 0;
    while worker.logged(republished) == 0 {
        assert!(cuts < 12, "no message was held across two cuts");
        load.wait_mid_erasure().await;
        let attached = worker.logged("consuming");
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        cuts += 1;
        // Both consumers back, and some work done, before the next cut.
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(20),
            async || (worker.logged("consuming") >= attached + 2).then_some(()),
            || worker.log_text(),
        )
        .await;
    }
    load.assert_erased(&submitted).await;
    intake.shutdown().await;
}
