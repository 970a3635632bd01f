#![allow(dead_code)] // shared by faults.rs and cluster.rs; each uses a part
//! A stream of erase requests, for the tests that inflict a fault under load
//! (`tests/it/cluster.rs`, `tests/it/faults.rs`). Users `u-1`…`u-N` each have `rows` rows per
//! store in every bot; request *i* erases `u-i` from the first two bots of `acct-a`, so every
//! request's counts are known exactly. The end state is checked the way `faults.rs`'s
//! `Scenario` checks one request: every request completed, its rows gone and counted once per
//! store, each task counted once, and every other row unchanged (checksum); plus nothing
//! dead-lettered, in the database or in the broker.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Api, TestEnv, eventually};

/// One request's counts, from the public view and the task totals.
#[derive(sqlx::FromRow)]
struct RequestCounts {
    request_id: String,
    status: String,
    conv: i64,
    sess: i64,
    anal: i64,
    tasks: i64,
    done: i64,
    tasks_total: i32,
    tasks_done: i32,
}

pub struct Load {
    pub env: TestEnv,
    /// The bots of `acct-a`; requests erase from the first two.
    pub bots: Vec<String>,
    /// Users `u-1`..=`u-{users}` may be requested; `u-0` never is.
    pub users: usize,
    pub rows: i64,
    /// Checksum of every row outside the requests' possible targets.
    before: String,
    token: String,
}

/// Requests submitted by a [`Stream`], in order, and the answers that were not 202.
#[derive(Default)]
pub struct Submitted {
    pub ids: Vec<String>,
    pub refused: Vec<(u16, serde_json::Value)>,
}

/// Requests submitted one after another until stopped (or every user is requested).
pub struct Stream {
    pub submitted: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<Submitted>,
}

impl Stream {
    /// Submitted so far (answered, 202 or not).
    pub fn count(&self) -> usize {
        self.submitted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were submitted.
    pub async fn wait_for(&self, n: usize) {
        eventually(
            Duration::from_secs(120),
            Duration::from_millis(20),
            async || (self.count() >= n).then_some(()),
            || format!("only {} requests were submitted", self.count()),
        )
        .await
    }

    /// Stops submitting; returns what was submitted.
    pub async fn finish(self) -> Submitted {
        self.stop.cancel();
        self.task.await.expect("the stream task ends")
    }

    /// Waits until every user was requested; returns what was submitted.
    pub async fn end(self) -> Submitted {
        self.task.await.expect("the stream task ends")
    }
}

impl Load {
    /// A platform of `users` (+ `u-0`) users with `rows` rows per store in each of `acct-a`'s
    /// three bots and `acct-b`'s one, and an app of `acct-a`.
    pub async fn new(vars: &[(&str, &str)], users: usize, rows: i64) -> Self {
        let env = TestEnv::with_vars(vars).await;
        let bots = env.account("acct-a", 3).await;
        let foreign = env.account("acct-b", 1).await;
        let every_bot: Vec<&str> = bots.iter().chain(&foreign).map(String::as_str).collect();
        sqlx::query(
            "INSERT INTO platform.users (id) SELECT 'u-' || i FROM generate_series(0, $1) i",
        )
        .bind(users as i32)
        .execute(&env.pool)
        .await
        .unwrap();
        for table in ["conversations", "sessions", "analytics_events"] {
            let sql = format!(
                "INSERT INTO platform.{table} (bot_id, user_id)
                 SELECT b, 'u-' || i FROM unnest($1::text[]) b, generate_series(0, $2) i,
                        generate_series(1, $3)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&every_bot)
                .bind(users as i32)
                .bind(rows)
                .execute(&env.pool)
                .await
                .unwrap();
        }
        let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
        let mut load = Self {
            env,
            bots,
            users,
            rows,
            before: String::new(),
            token,
        };
        load.before = load.checksum_outside().await;
        load
    }

    /// Checksum of every platform row outside the requests' possible targets.
    async fn checksum_outside(&self) -> String {
        let names = self.user_names(self.users);
        let users: Vec<&str> = names.iter().map(String::as_str).collect();
        self.env.checksum_outside(&users, &self.target_bots()).await
    }

    pub fn target_bots(&self) -> Vec<&str> {
        self.bots[..2].iter().map(String::as_str).collect()
    }

    fn user_names(&self, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("u-{i}")).collect()
    }

    /// Submits the request erasing user `u-i`.
    pub async fn submit(&self, api: &Api, i: usize) -> Result<String, (u16, serde_json::Value)> {
        let body = json!({"userIds": [format!("u-{i}")], "botIds": self.target_bots()});
        match api.erase(&self.token, &body).await {
            (202, answer) => Ok(answer["requestId"].as_str().unwrap().to_string()),
            refused => Err(refused),
        }
    }

    /// Submits requests for `u-1`, `u-2`, … one every `every`, until stopped or every user is
    /// requested.
    pub fn stream(self: &Arc<Self>, api: Api, every: Duration) -> Stream {
        let submitted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (load, count, halt) = (self.clone(), submitted.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let out = Mutex::new(Submitted::default());
            for i in 1..=load.users {
                if halt.is_cancelled() {
                    break;
                }
                match load.submit(&api, i).await {
                    Ok(id) => out.lock().unwrap().ids.push(id),
                    Err(refused) => out.lock().unwrap().refused.push(refused),
                }
                count.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = halt.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            out.into_inner().unwrap()
        });
        Stream {
            submitted,
            stop,
            task,
        }
    }

    /// Rows the requests have counted, and the target rows gone, in one snapshot: equal at
    /// every instant, since a batch and its count are one statement.
    pub async fn counted_and_gone(&self) -> (i64, i64) {
        let users = self.user_names(self.users);
        let (counted, left): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(rows_deleted), 0)::bigint FROM erasure.request_status),
                    (SELECT count(*) FROM platform.conversations WHERE bot_id = ANY($1) AND user_id = ANY($2))
                  + (SELECT count(*) FROM platform.sessions WHERE bot_id = ANY($1) AND user_id = ANY($2))
                  + (SELECT count(*) FROM platform.analytics_events WHERE bot_id = ANY($1) AND user_id = ANY($2))",
        )
        .bind(self.target_bots())
        .bind(&users)
        .fetch_one(&self.env.pool)
        .await
        .unwrap();
        let all = 3 * 2 * self.rows * self.users as i64;
        (counted, all - left)
    }

    /// Waits until some request is part-way through its rows: a fault now lands mid-erasure.
    pub async fn wait_mid_erasure(&self) {
        let total = 3 * 2 * self.rows;
        eventually(
            Duration::from_secs(120),
            Duration::from_millis(10),
            async || {
                let mid: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM erasure.request_status
                                     WHERE status = 'in-progress' AND rows_deleted > 0
                                       AND rows_deleted < $1)",
                )
                .bind(total)
                .fetch_one(&self.env.pool)
                .await
                .unwrap();
                mid.then_some(())
            },
            || "no request got part-way".into(),
        )
        .await
    }

    /// Waits until no request is in progress (`within` at most).
    pub async fn wait_settled(&self, within: Duration) {
        let open = std::cell::RefCell::new(Vec::<String>::new());
        eventually(
            within,
            Duration::from_millis(100),
            async || {
                let now: Vec<String> = sqlx::query_scalar(
                    "SELECT request_id FROM erasure.requests WHERE status = 'in-progress'",
                )
                .fetch_all(&self.env.pool)
                .await
                .unwrap();
                let settled = now.is_empty();
                *open.borrow_mut() = now;
                settled.then_some(())
            },
            || {
                let open = open.borrow();
                format!(
                    "{} requests did not settle within {within:?}: {open:?}",
                    open.len()
                )
            },
        )
        .await
    }

    /// The promise, for every request submitted (`u-1`..=`u-{ids.len()}`, in order).
    pub async fn assert_erased(&self, submitted: &Submitted) {
        assert!(
            submitted.refused.is_empty(),
            "every call was answered 202: {:?}",
            submitted.refused
        );
        let ids = &submitted.ids;
        assert!(!ids.is_empty(), "requests were submitted");
        self.wait_settled(Duration::from_secs(180)).await;
        self.assert_counts(ids).await;
        let users = self.user_names(self.users);
        let per_user: Vec<(String, i64)> = sqlx::query_as(
            "SELECT u, (SELECT count(*) FROM platform.conversations WHERE bot_id = ANY($1) AND user_id = u)
                     + (SELECT count(*) FROM platform.sessions WHERE bot_id = ANY($1) AND user_id = u)
                     + (SELECT count(*) FROM platform.analytics_events WHERE bot_id = ANY($1) AND user_id = u)
               FROM unnest($2::text[]) u",
        )
        .bind(self.target_bots())
        .bind(&users)
        .fetch_all(&self.env.pool)
        .await
        .unwrap();
        for (i, (user, left)) in per_user.iter().enumerate() {
            // Requested users are erased; the others keep every row.
            let expected = if i < ids.len() { 0 } else { 3 * 2 * self.rows };
            assert_eq!(*left, expected, "target rows of {user}");
        }
        assert_eq!(
            self.checksum_outside().await,
            self.before,
            "no other row changed"
        );
        self.assert_nothing_dead_lettered().await;
    }

    /// Each request completed, its users erased, each store's rows counted once, two tasks
    /// each done and counted once; no request beyond those submitted.
    async fn assert_counts(&self, ids: &[String]) {
        let rows: Vec<RequestCounts> = sqlx::query_as(
            "SELECT s.request_id, s.status, t.conv, t.sess, t.anal, t.tasks, t.done,
                    s.tasks_total, s.tasks_done
               FROM erasure.request_status s
               JOIN (SELECT request_id, sum(rows_conversations)::bigint AS conv,
                            sum(rows_sessions)::bigint AS sess, sum(rows_analytics)::bigint AS anal,
                            count(*) AS tasks, count(*) FILTER (WHERE status = 'done') AS done
                       FROM erasure.task_totals GROUP BY request_id) t USING (request_id)",
        )
        .fetch_all(&self.env.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), ids.len(), "one request per call, each planned");
        let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.requests")
            .fetch_one(&self.env.pool)
            .await
            .unwrap();
        assert_eq!(
            requests,
            ids.len() as i64,
            "no request beyond those submitted"
        );
        let n = 2 * self.rows;
        for r in rows {
            let id = &r.request_id;
            assert!(ids.contains(id), "{id} was submitted");
            assert_eq!(r.status, "completed", "{id}");
            assert_eq!(
                (r.conv, r.sess, r.anal),
                (n, n, n),
                "{id}: rows counted once"
            );
            assert_eq!(
                (r.tasks, r.done),
                (2, 2),
                "{id}: one task per bot, each done"
            );
            assert_eq!(
                (r.tasks_total, r.tasks_done),
                (2, 2),
                "{id}: each task counted once"
            );
        }
        let outcomes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM erasure.request_user_status GROUP BY status",
        )
        .fetch_all(&self.env.pool)
        .await
        .unwrap();
        assert_eq!(
            outcomes,
            [("SUCCESS".to_string(), ids.len() as i64)],
            "every user erased"
        );
    }

    /// Nothing recorded as dead-lettered, and the dead-letter queue empty.
    pub async fn assert_nothing_dead_lettered(&self) {
        let recorded: Vec<(String, String)> =
            sqlx::query_as("SELECT routing_key, reason FROM erasure.dead_letters")
                .fetch_all(&self.env.pool)
                .await
                .unwrap();
        assert!(recorded.is_empty(), "dead letters: {recorded:?}");
        assert_eq!(
            self.env
                .queue_depth(&self.env.topology().dead_queue())
                .await,
            0,
            "the dead-letter queue is empty"
        );
    }
}
