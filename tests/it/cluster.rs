//! DESIGN.md section 11 against a real three-node RabbitMQ 3.10 cluster (`scripts/cluster.sh`:
//! node N on 127.0.0.1:568N). The service runs as child processes whose `AMQP_URL` lists the
//! three nodes; a stream of requests flows through the intake while a node is SIGKILLed (the
//! one the service is connected to, or the one leading the queues), while the nodes restart
//! one after another, or while the intake's own node dies. Every request answered 202 must
//! complete with exact counts, and nothing may be dead-lettered: `ERASURE_MAX_DELIVERIES` is 2
//! here, so a delivery returned by a lost connection that counted as a crash would show.
//!
//! The tests share the cluster: each starts it if needed (`cluster.sh start` is idempotent)
//! and holds it alone while it runs (a file lock, so that the suites of several worktrees do
//! not kill nodes at once either); each uses its own queue prefix and database. Each prints
//! what it measured (`-- --nocapture`): how long the service took to move to another node,
//! the node to come back, the requests to complete. Nothing timed is asserted.

use std::{
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::{
    helpers::{Api, eventually},
    load::Load,
    process::Process,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// Small slices and a ceiling on rows per second: requests take long enough for a fault to
/// land mid-erasure. Two deliveries that end unsettled with the worker gone make a crash loop.
const SLOW: &[(&str, &str)] = &[
    ("ERASURE_BATCH_SIZE", "50"),
    ("ERASURE_BATCHES_PER_SLICE", "4"),
    ("ERASURE_MAX_ROWS_PER_SECOND", "1500"),
    ("ERASURE_SHUTDOWN_GRACE_SECONDS", "1"),
    ("ERASURE_OUTBOX_POLL_MS", "200"),
    ("ERASURE_MAX_DELIVERIES", "2"),
    // Three processes per test beside everyone else's on a shared PostgreSQL.
    ("ERASURE_DB_MAX_CONNECTIONS", "6"),
    ("ERASURE_WORKER_CONCURRENCY", "2"),
];

/// Users in a stream (one request each), and rows per store per bot of each.
const USERS: usize = 45;
const ROWS: i64 = 30;

/// The cluster, held by one test at a time.
struct Cluster {
    _lock: File,
}

impl Cluster {
    /// Waits for the cluster's lock, then makes sure all three nodes run.
    async fn exclusive() -> Self {
        let dir = std::env::var("ERASURE_CLUSTER_DIR")
            .unwrap_or_else(|_| "/tmp/erasure-rabbit-cluster".into());
        let path = PathBuf::from(format!("{dir}.faults.lock"));
        let lock = tokio::task::spawn_blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            file.lock().expect("the cluster's lock");
            file
        })
        .await
        .unwrap();
        script(&["start"]).await;
        Self { _lock: lock }
    }

    /// Node `n`'s AMQP URL.
    fn url(n: u8) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + u16::from(n))
    }

    /// Node `n`'s address, as the service logs it.
    fn address(n: u8) -> String {
        format!("127.0.0.1:{}", 5680 + u16::from(n))
    }

    /// `AMQP_URL` naming the nodes in this order.
    fn urls(order: [u8; 3]) -> String {
        order.map(Self::url).join(",")
    }

    async fn kill(&self, n: u8) {
        script(&["kill-node", &n.to_string()]).await;
    }

    /// The quorum queues of this prefix and the node leading each.
    async fn leaders(&self, prefix: &str) -> Vec<(String, String)> {
        script(&["leaders", prefix])
            .await
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(q, n)| (q.to_string(), n.to_string()))
            .collect()
    }
}

/// Runs `scripts/cluster.sh` with `args`; its standard output.
async fn script(args: &[&str]) -> String {
    let run = tokio::process::Command::new(SCRIPT)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("cluster.sh {args:?} did not finish"))
        .expect("cluster.sh runs");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's settings, with the three nodes listed in `order`.
fn settings(order: [u8; 3]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = SLOW
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push(("AMQP_URL".into(), Cluster::urls(order)));
    vars
}

async fn load(order: [u8; 3], users: usize) -> Arc<Load> {
    let vars = settings(order);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Arc::new(Load::new(&vars, users, ROWS).await)
}

/// Declares the test's queues through node `n` only: their leaders start there.
async fn declare_on(load: &Load, n: u8) {
    let brokers = erasure::queue::Brokers::from(Cluster::url(n).as_str());
    let (conn, _) = brokers.connect(0, "test-declare").await.unwrap();
    load.env.topology().ensure(&conn).await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

/// A process of the service whose `AMQP_URL` lists the nodes in `order`.
async fn spawn(load: &Load, role: &str, order: [u8; 3]) -> Process {
    let urls = Cluster::urls(order);
    Process::spawn(&load.env, role, &[("AMQP_URL", urls.as_str())]).await
}

/// Two workers and an intake, started together, with the nodes in the orders given.
async fn fleet(load: &Load, workers: [[u8; 3]; 2], intake: [u8; 3]) -> ([Process; 2], Process) {
    let (a, b, i) = tokio::join!(
        spawn(load, "worker", workers[0]),
        spawn(load, "worker", workers[1]),
        spawn(load, "intake", intake)
    );
    ([a, b], i)
}

/// Seconds from `since` to the first event `message` a process logged on a node other than
/// `n` (its move to another node), if any.
fn moved_after(p: &Process, message: &str, n: u8, since: DateTime<Utc>) -> Option<f64> {
    p.events(message)
        .iter()
        .filter(|e| e["fields"]["broker"].as_str() != Some(Cluster::address(n).as_str()))
        .filter_map(|e| e["timestamp"].as_str()?.parse::<DateTime<Utc>>().ok())
        .filter(|t| *t > since)
        .map(|t| (t - since).as_seconds_f64())
        .reduce(f64::min)
}

/// Starts node `n` again in the background; the task answers how long it took.
fn start_node(n: u8) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let started = Instant::now();
        script(&["start-node", &n.to_string()]).await;
        started.elapsed().as_secs_f64()
    })
}

fn api_at(p: &Process) -> Api {
    Api {
        base: format!("http://{}", p.http),
        http: reqwest::Client::new(),
    }
}

/// The nodes a process logged `message` on (field `broker`).
fn brokers_logged(p: &Process, message: &str) -> Vec<String> {
    p.events(message)
        .iter()
        .filter_map(|e| e["fields"]["broker"].as_str().map(str::to_string))
        .collect()
}

/// A worker's consumers both attached to node `n`.
fn assert_consuming_on(worker: &Process, n: u8) {
    let on = brokers_logged(worker, "consuming");
    assert_eq!(
        on.iter().filter(|b| **b == Cluster::address(n)).count(),
        2,
        "both consumers on node {n}: {on:?}"
    );
}

/// Waits until a worker's consumers have both attached to a node other than `n` (after
/// losing it): the process moved on by itself.
async fn await_consuming_elsewhere(worker: &Process, n: u8) {
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(50),
        async || {
            let on = brokers_logged(worker, "consuming");
            (on.iter().filter(|b| **b != Cluster::address(n)).count() >= 2).then_some(())
        },
        || {
            format!(
                "the worker did not consume from another node:\n{}",
                worker.log_text()
            )
        },
    )
    .await
}

/// Counts exact at the instant after a fault: a batch and its count are one statement.
async fn assert_counted_as_gone(load: &Load) {
    let (counted, gone) = load.counted_and_gone().await;
    assert_eq!(counted, gone, "rows counted are the rows gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_the_service_is_connected_to_mid_erasure_loses_nothing() {
    let cluster = Cluster::exclusive().await;
    let load = load([1, 2, 3], USERS).await;
    // Node 1 also leads the queues: the worst case, and what a deployment that lists its
    // nodes in one order gets.
    declare_on(&load, 1).await;
    let (workers, intake) = fleet(&load, [[1, 2, 3], [1, 2, 3]], [1, 2, 3]).await;
    for w in &workers {
        assert_consuming_on(w, 1);
    }
    let leaders = cluster.leaders(&load.env.prefix).await;
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    assert!(leaders.iter().all(|(_, n)| n == "1"), "{leaders:?}");

    let stream = load.stream(api_at(&intake), Duration::from_millis(100));
    stream.wait_for(USERS / 3).await;
    load.wait_mid_erasure().await;
    let (killed, at) = (Instant::now(), Utc::now());
    cluster.kill(1).await;
    assert_counted_as_gone(&load).await;
    let restart = start_node(1);

    let submitted = stream.end().await;
    load.assert_erased(&submitted).await;
    let done = killed.elapsed().as_secs_f64();
    for w in &workers {
        await_consuming_elsewhere(w, 1).await;
    }
    assert!(
        brokers_logged(&intake, "connected to RabbitMQ")
            .iter()
            .any(|b| *b != Cluster::address(1)),
        "the intake's publisher reconnected to another node:\n{}",
        intake.log_text()
    );
    let back = restart.await.unwrap();
    let consuming: Vec<_> = workers
        .iter()
        .map(|w| moved_after(w, "consuming", 1, at))
        .collect();
    eprintln!(
        "[cluster] SIGKILL of the connected node (leading the queues): consumers on another node after {consuming:?} s, \
         intake publishing through another after {:?} s, {} requests completed {done:.1} s after the kill, node back in {back:.1} s",
        moved_after(&intake, "connected to RabbitMQ", 1, at),
        submitted.ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_leading_the_queues_mid_erasure_loses_nothing() {
    let cluster = Cluster::exclusive().await;
    let load = load([1, 2, 3], USERS).await;
    // The queues are led from node 3; the service is connected to node 1.
    declare_on(&load, 3).await;
    let (workers, intake) = fleet(&load, [[1, 2, 3], [1, 2, 3]], [1, 2, 3]).await;
    let leaders = cluster.leaders(&load.env.prefix).await;
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    assert!(leaders.iter().all(|(_, n)| n == "3"), "{leaders:?}");

    let stream = load.stream(api_at(&intake), Duration::from_millis(100));
    stream.wait_for(USERS / 3).await;
    load.wait_mid_erasure().await;
    let killed = Instant::now();
    cluster.kill(3).await;
    assert_counted_as_gone(&load).await;
    let restart = start_node(3);

    let submitted = stream.end().await;
    load.assert_erased(&submitted).await;
    let done = killed.elapsed().as_secs_f64();
    // The survivors elected new leaders (they do not move back when node 3 returns).
    let leaders = cluster.leaders(&load.env.prefix).await;
    assert!(
        leaders.iter().all(|(_, n)| n == "1" || n == "2"),
        "{leaders:?}"
    );
    let back = restart.await.unwrap();
    let reconnects: usize = workers
        .iter()
        .map(|w| w.logged("consumer lost its connection"))
        .sum();
    eprintln!(
        "[cluster] SIGKILL of the node leading the queues: {} requests completed {done:.1} s after the kill, \
         consumer reconnections {reconnects}, new leaders {leaders:?}, node back in {back:.1} s",
        submitted.ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing() {
    let _cluster = Cluster::exclusive().await;
    let load = load([1, 2, 3], 1000).await;
    declare_on(&load, 1).await;
    // Spread over the nodes, so that every restart takes someone's connection.
    let (_workers, intake) = fleet(&load, [[1, 2, 3], [2, 3, 1]], [3, 1, 2]).await;

    let stream = load.stream(api_at(&intake), Duration::from_millis(200));
    let began = Instant::now();
    let mut restarts = Vec::new();
    for n in [1u8, 2, 3] {
        load.wait_mid_erasure().await;
        let before = completed(&load).await;
        let started = Instant::now();
        script(&["restart-node", &n.to_string()]).await;
        restarts.push(started.elapsed().as_secs_f64());
        // Work goes on with the node back before the next one stops (as an operator waits
        // for a node to rejoin before restarting the next).
        await_completed_beyond(&load, before).await;
        assert_counted_as_gone(&load).await;
    }
    let submitted = stream.finish().await;
    load.assert_erased(&submitted).await;
    eprintln!(
        "[cluster] rolling restart: nodes restarted in {restarts:.1?} s, {} requests submitted meanwhile, \
         all completed {:.1} s after the first stop",
        submitted.ids.len(),
        began.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_whose_node_dies_while_publishing_loses_no_accepted_request() {
    let cluster = Cluster::exclusive().await;
    let load = load([2, 3, 1], 120).await;
    // The workers and the queues' leaders are on node 2: only the intake loses its node.
    declare_on(&load, 2).await;
    let (_workers, intake) = fleet(&load, [[2, 3, 1], [2, 3, 1]], [1, 2, 3]).await;

    let stream = load.stream(api_at(&intake), Duration::from_millis(20));
    stream.wait_for(40).await;
    let (killed, at) = (Instant::now(), Utc::now());
    cluster.kill(1).await;
    let restart = start_node(1);

    let submitted = stream.end().await;
    load.assert_erased(&submitted).await;
    let done = killed.elapsed().as_secs_f64();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.outbox")
        .fetch_one(&load.env.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "everything committed was published");
    // It published through node 1 (connected at its first publish), then through another.
    let nodes = brokers_logged(&intake, "connected to RabbitMQ");
    assert_eq!(nodes.first(), Some(&Cluster::address(1)), "{nodes:?}");
    assert!(
        nodes.iter().any(|b| *b != Cluster::address(1)),
        "the intake published through another node: {nodes:?}"
    );
    let relayed = intake.logged("outbox relay published pending messages");
    let back = restart.await.unwrap();
    eprintln!(
        "[cluster] SIGKILL of the intake's node: publishing through another after {:?} s, {} requests accepted, \
         all completed {done:.1} s after the kill ({relayed} relay passes), node back in {back:.1} s",
        moved_after(&intake, "connected to RabbitMQ", 1, at),
        submitted.ids.len()
    );
}

async fn completed(load: &Load) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM erasure.requests WHERE status = 'completed'")
        .fetch_one(&load.env.pool)
        .await
        .unwrap()
}

async fn await_completed_beyond(load: &Load, before: i64) {
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || (completed(load).await > before).then_some(()),
        || "no request completed after the restart".into(),
    )
    .await
}
