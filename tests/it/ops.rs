//! What operators rely on: metrics, health, JSON logs, configuration checks and the operator
//! commands, exercised through the real binary where the process boundary matters.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Parser;
use erasure::{
    cli::Cli,
    config::SETTINGS,
    startup::Role,
    telemetry::{FAMILIES, Kind},
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestEnv, publish_raw};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `erasure` binary with exactly these settings (nothing inherited but PATH).
fn erasure(vars: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_erasure"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion: (success, stdout, stderr).
async fn run(vars: &BTreeMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = erasure(vars).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A sample's value in Prometheus text: the line of `name` carrying every label given.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().unwrap())
    })
}

/// A service started as a child process, its stderr collected line by line.
struct Child {
    process: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Child {
    async fn serve(vars: &BTreeMap<String, String>, role: &str) -> Self {
        let mut process = erasure(vars)
            .args(["serve", "--role", role])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(process.stderr.take().unwrap()).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self { process, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a JSON log line whose message is `message`.
    async fn wait_for(&self, message: &str) -> Value {
        for _ in 0..300 {
            let found = self.lines().iter().find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(|v| v["fields"]["message"] == message)
            });
            if let Some(v) = found {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no log line {message:?}; stderr:\n{}",
            self.lines().join("\n")
        );
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.process.id().unwrap().to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.process.wait())
            .await
            .expect("the service stops after SIGTERM")
            .unwrap();
        // Let the reader drain what the process wrote last.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, self.lines())
    }
}

#[tokio::test]
async fn an_erasure_through_the_binary_shows_in_metrics_and_json_logs() {
    let env = TestEnv::with_vars(&[("ERASURE_LOG_FORMAT", "json")]).await;
    let bots = env.account("acct-ops", 2).await;
    env.user("u-ops-1", Some("jane.ops@example.com"), None)
        .await;
    for b in &bots {
        env.rows("u-ops-1", b, 7).await;
    }
    let (_, _, token) = env.app("acct-ops", &["delete_users_data"]).await;
    let child = Child::serve(&env.vars, "all").await;
    let started = child.wait_for("erasure started").await;
    let base = format!("http://{}", started["fields"]["http"].as_str().unwrap());
    let http = reqwest::Client::new();
    let erase = |token: &str, body: Value| {
        http.delete(format!("{base}/api/public/bot/eraseUsersData"))
            .header("auth", token)
            .json(&body)
            .send()
    };

    let refused = erase("not-a-jwt", json!({"userIds": ["x"], "botIds": [bots[0]]}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let invalid = erase(&token, json!({"userIds": [], "botIds": [bots[0]]}))
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let accepted = erase(
        &token,
        json!({"userIds": ["jane.ops@example.com"], "botIds": bots}),
    )
    .await
    .unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );

    // The relay refreshes the outbox gauge on each pass; a pass may have counted the task
    // messages before they were confirmed, so poll until one saw the outbox empty.
    let mut text = String::new();
    for _ in 0..100 {
        text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Counters move just after the commit that tests observe, so wait for them too.
        let completed = [("status", "completed")];
        let settled = sample(&text, "erasure_requests_finished_total", &completed) == Some(1.0);
        if settled && sample(&text, "erasure_outbox_backlog", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} in:\n{text}"))
    };
    let accepted = [("outcome", "accepted")];
    assert_eq!(m("erasure_intake_requests_total", &accepted), 1.0);
    let unauthorized = [("outcome", "refused"), ("reason", "unauthorized")];
    assert_eq!(m("erasure_intake_requests_total", &unauthorized), 1.0);
    let invalid = [("outcome", "refused"), ("reason", "invalid")];
    assert_eq!(m("erasure_intake_requests_total", &invalid), 1.0);
    assert_eq!(m("erasure_intake_seconds_count", &[]), 3.0);
    assert!(m("erasure_intake_seconds_sum", &[]) > 0.0);
    let completed = [("status", "completed")];
    assert_eq!(m("erasure_requests_finished_total", &completed), 1.0);
    assert_eq!(m("erasure_request_duration_seconds_count", &completed), 1.0);
    assert!(m("erasure_request_duration_seconds_sum", &completed) > 0.0);
    let le_day = [("status", "completed"), ("le", "86400")];
    assert_eq!(m("erasure_request_duration_seconds_bucket", &le_day), 1.0);
    assert_eq!(m("erasure_tasks_planned_total", &[]), 2.0);
    assert_eq!(m("erasure_tasks_started_total", &[]), 2.0);
    assert_eq!(m("erasure_tasks_completed_total", &[]), 2.0);
    // Both bots' tasks in one message, erased at planning: it was never published.
    assert!(m("erasure_task_slice_seconds_count", &[]) >= 1.0);
    assert_eq!(m("erasure_task_messages_skipped_total", &[]), 1.0);
    for store in ["conversations", "sessions", "analytics"] {
        assert_eq!(
            m("erasure_rows_deleted_total", &[("store", store)]),
            14.0,
            "{store}: 7 rows in each of 2 bots"
        );
        assert!(m("erasure_delete_batch_seconds_count", &[("store", store)]) >= 1.0);
    }
    assert_eq!(m("erasure_outbox_backlog", &[]), 0.0);
    for queue in ["requests", "tasks"] {
        assert_eq!(m("erasure_consumer_up", &[("queue", queue)]), 1.0);
    }
    assert!(
        text.contains("# TYPE erasure_request_duration_seconds histogram"),
        "durations are histograms"
    );

    let operating = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap();
        assert!(
            operating.contains(&format!("| `{name}` |")),
            "docs/operating.md explains {name}"
        );
    }

    let (status, lines) = child.terminate().await;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let logs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(
        logs.iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let settled = logs
        .iter()
        .find(|l| l["fields"]["message"] == "request settled")
        .expect("the settling is logged");
    assert_eq!(settled["span"]["name"], "task");
    assert_eq!(settled["span"]["request_id"], id.as_str());
    assert!(bots.contains(&settled["span"]["bot_id"].as_str().unwrap().to_string()));
    assert!(
        logs.iter()
            .any(|l| l["span"]["name"] == "plan" && l["span"]["request_id"] == id.as_str()),
        "planning logs carry the request id"
    );
    let accepted = logs
        .iter()
        .find(|l| l["fields"]["message"] == "erase request accepted")
        .expect("the intake logs what it accepted");
    assert_eq!(accepted["span"]["name"], "erase");
    assert_eq!(accepted["span"]["request_id"], id.as_str());
    for pii in ["jane.ops@example.com", "u-ops-1"] {
        assert!(
            !lines.iter().any(|l| l.contains(pii)),
            "{pii} never appears in the logs"
        );
    }
    assert!(logs.iter().any(|l| l["fields"]["message"] == "stopped"));
}

#[tokio::test]
async fn a_fresh_service_exports_every_counter_and_histogram_at_zero() {
    let env = TestEnv::with_vars(&[("ERASURE_LOG_FORMAT", "json")]).await;
    // A process of its own: this test binary's recorder has counted other tests' calls.
    let child = Child::serve(&env.vars, "all").await;
    let started = child.wait_for("erasure started").await;
    let base = format!("http://{}", started["fields"]["http"].as_str().unwrap());
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // The built-in catalog anonymizes nothing: its anonymized rows have no series to show,
    // which a catalog with an anonymized store gives them.
    let built_in = erasure::catalog::Catalog::built_in();
    let anonymizing = erasure::catalog::Catalog::parse(
        r#"[[stores]]
           name = "events"
           table = "events"
           user_column = "u"
           bot_column = "b"
           action = "anonymize"
           anonymize = { u = "hmac" }"#,
        erasure::catalog::Source::BuiltIn,
    )
    .unwrap();
    let mut checked = 0;
    for family in FAMILIES.iter().filter(|f| f.kind != Kind::Gauge) {
        let series = (family.series)(&built_in);
        if series.is_empty() {
            assert!(
                !(family.series)(&anonymizing).is_empty(),
                "{} has no series",
                family.name
            );
            continue;
        }
        let samples: &[&str] = match family.kind {
            Kind::Histogram => &["_count", "_sum"],
            _ => &[""],
        };
        for labels in &series {
            for suffix in samples {
                let name = format!("{}{suffix}", family.name);
                assert_eq!(
                    sample(
                        &text,
                        &name,
                        &labels
                            .iter()
                            .map(|(k, v)| (*k, v.as_str()))
                            .collect::<Vec<_>>(),
                    ),
                    Some(0.0),
                    "{name}{labels:?} at zero in:\n{text}"
                );
                checked += 1;
            }
        }
        let kind = if family.kind == Kind::Counter {
            "counter"
        } else {
            "histogram"
        };
        assert!(
            text.contains(&format!("# TYPE {} {kind}", family.name)),
            "{} is typed in:\n{text}",
            family.name
        );
    }
    // Every refusal reason, store and retried operation, not just one series a family.
    assert!(checked > 40, "{checked} series");
    let (status, _) = child.terminate().await;
    assert!(status.success());
}

/// A local port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_worker_whose_broker_is_down_is_alive_but_not_ready_and_says_why() {
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port().await);
    let broken = TestEnv::with_vars(&[("AMQP_URL", &url)]).await;
    let svc = broken.start(Role::Worker).await;
    let base = format!("http://{}", svc.http_addr);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "the process is alive");
    let (code, body) = readyz(&base).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["database"], true);
    let failing: Vec<&str> = body["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for check in ["broker", "consumer_requests", "consumer_tasks"] {
        assert!(failing.contains(&check), "{check} is named: {body}");
    }
    assert!(!failing.contains(&"database"));
    svc.shutdown().await;

    let env = TestEnv::new().await;
    let svc = env.start(Role::Worker).await;
    let base = format!("http://{}", svc.http_addr);
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = readyz(&base).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 200, "a healthy worker becomes ready: {}", last.1);
    assert_eq!(last.1["ready"], true);
    assert_eq!(last.1["failing"], json!([]));
    svc.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_a_bad_setting_naming_the_variable() {
    for (var, value) in [
        ("ERASURE_BATCH_SIZE", "lots"),
        ("ERASURE_HTTP_ADDR", "everywhere"),
        ("ERASURE_LOG_FORMAT", "xml"),
        ("ERASURE_SECRET_KEY", "too-short-to-be-a-key"),
    ] {
        let vars = BTreeMap::from([(var.to_string(), value.to_string())]);
        let (ok, _, stderr) = run(&vars, &["serve"]).await;
        assert!(!ok, "{var}={value} stops the service");
        assert!(stderr.contains(var), "{var} is named: {stderr}");
        if var == "ERASURE_SECRET_KEY" {
            assert!(!stderr.contains(value), "a secret is not echoed: {stderr}");
        }
    }
}

#[tokio::test]
async fn config_prints_every_setting_with_secrets_masked() {
    let secret_key = "ab".repeat(32);
    let hmac_key = "a-long-enough-text-key-for-the-pii-hmac-0123";
    let vars = BTreeMap::from(
        [
            (
                "DATABASE_URL",
                "postgres://erasure:hunter2@db.example:5432/erasure",
            ),
            ("AMQP_URL", "amqp://bunny:carrot99@mq.example:5672/%2f"),
            ("ERASURE_SECRET_KEY", secret_key.as_str()),
            ("ERASURE_PII_HMAC_KEY", hmac_key),
            ("ERASURE_BATCH_SIZE", "1234"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let (ok, stdout, stderr) = run(&vars, &["config"]).await;
    assert!(ok, "{stderr}");
    let printed: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|l| l.split('\t').next()?.split_once('='))
        .collect();
    for s in SETTINGS {
        assert!(printed.contains_key(s.var), "{} is printed", s.var);
    }
    assert_eq!(printed["ERASURE_BATCH_SIZE"], "1234");
    assert_eq!(printed["ERASURE_PREFETCH"], "128", "defaults are shown");
    assert_eq!(
        printed["DATABASE_URL"],
        "postgres://***@db.example:5432/erasure"
    );
    assert_eq!(printed["AMQP_URL"], "amqp://***@mq.example:5672/%2f");
    assert_eq!(printed["ERASURE_SECRET_KEY"], "***");
    assert_eq!(printed["ERASURE_PII_HMAC_KEY"], "***");
    for secret in ["hunter2", "carrot99", secret_key.as_str(), hmac_key] {
        assert!(!stdout.contains(secret), "{secret} is masked");
    }
}

#[test]
fn the_operator_commands_exist() {
    for argv in [
        vec!["erasure", "redrive"],
        vec!["erasure", "redrive", "--limit", "10"],
        vec!["erasure", "status", "eud-1", "--watch", "--token", "t"],
        vec!["erasure", "requests", "list"],
        vec!["erasure", "requests", "list", "--status", "failed"],
        vec!["erasure", "queue", "stats"],
        vec!["erasure", "config"],
        vec!["erasure", "migrate"],
    ] {
        Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
    assert!(Cli::try_parse_from(["erasure", "queue", "purge"]).is_err());
}

#[tokio::test]
async fn requests_list_queue_stats_and_redrive_show_and_move_a_dead_letter() {
    let env = TestEnv::new().await;
    let svc = env.start(Role::Worker).await;
    let id = format!("eud-{}", uuid::Uuid::new_v4());
    // A producer's message for an account the platform does not know: it can never succeed.
    let message = json!({"version": 1, "requestId": id, "accountId": "acct-unknown",
        "userIds": ["u-1"], "botIds": ["st-1"], "removeDataFromAllBots": false,
        "requestedBy": "ops-test", "requestedAt": "2026-01-01T00:00:00Z"});
    publish_raw(&env, "erase.request", message.to_string().as_bytes()).await;
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "failed"
    );
    svc.shutdown().await;

    let (ok, out, err) = run(&env.vars, &["requests", "list", "--status", "failed"]).await;
    assert!(ok, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["request_id"], id.as_str());
    assert_eq!(listed[0]["status"], "failed");
    assert!(
        listed[0]["failure_reason"]
            .as_str()
            .unwrap()
            .contains("account")
    );
    let (ok, out, err) = run(&env.vars, &["requests", "list", "--status", "completed"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "", "the filter applies");

    let depths = |out: &str| -> BTreeMap<String, u64> {
        out.lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[0].to_string(), cols[1].parse().unwrap())
            })
            .collect()
    };
    let topology = env.topology();
    let (ok, out, err) = run(&env.vars, &["queue", "stats"]).await;
    assert!(ok, "{err}");
    let before = depths(&out);
    assert_eq!(before.len(), 3, "every queue: {out}");
    assert_eq!(before[&topology.dead_queue()], 1);
    assert_eq!(before[&topology.requests_queue()], 0);

    let (ok, out, err) = run(&env.vars, &["redrive"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("redrove 1 message"), "{out}");
    let (_, out, _) = run(&env.vars, &["queue", "stats"]).await;
    let after = depths(&out);
    assert_eq!(after[&topology.dead_queue()], 0);
    assert_eq!(
        after[&topology.requests_queue()],
        1,
        "back where it came from"
    );
    assert_eq!(
        env.request_status(&id).await.as_deref(),
        Some("in-progress")
    );
}

/// All Rust sources under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            text.push_str(&sources(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text
}

/// The string literal that follows each `prefix` in `code`.
fn literals_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.split(prefix)
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect()
}

#[test]
fn every_recorded_metric_is_a_family_exported_from_the_start() {
    let code = sources(&repo().join("src"));
    let families: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
    let recorded: Vec<&str> = ["counter", "gauge", "histogram"]
        .iter()
        .flat_map(|kind| literals_after(&code, &format!("metrics::{kind}!(")))
        .collect();
    assert!(recorded.len() >= 15, "{recorded:?}");
    for name in recorded {
        assert!(
            families.contains(&name),
            "{name} is not in telemetry::FAMILIES"
        );
    }
}

#[test]
fn every_documented_metric_is_recorded_by_the_code() {
    let operating = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    let code = sources(&repo().join("src"));
    let telemetry = std::fs::read_to_string(repo().join("src/telemetry.rs")).unwrap();
    let documented: Vec<&str> = operating
        .lines()
        .filter_map(|l| l.strip_prefix("| `erasure_"))
        .map(|rest| rest.split('`').next().unwrap())
        .collect();
    assert!(documented.len() >= 15, "the metrics table: {documented:?}");
    for name in documented {
        let name = format!("erasure_{name}");
        let recorded = ["counter", "gauge", "histogram"]
            .iter()
            .any(|kind| code.contains(&format!("metrics::{kind}!(\"{name}\"")));
        assert!(recorded, "{name} is documented but never recorded");
        assert!(
            telemetry.contains(&format!("\"{name}\"")),
            "{name} is described in src/telemetry.rs"
        );
    }
}

#[tokio::test]
async fn queues_declared_with_another_quorum_size_are_used_as_they_are() {
    // Queues of three replicas, as a deployment declared them; the service now asks for five.
    let env = TestEnv::with_vars(&[("ERASURE_QUORUM_SIZE", "5")]).await;
    let earlier = erasure::queue::Topology {
        quorum_size: 3,
        ..env.topology()
    };
    let conn = erasure::queue::connect(crate::helpers::AMQP_URL, "test-declare")
        .await
        .unwrap();
    earlier
        .declare(&conn.create_channel().await.unwrap())
        .await
        .unwrap();
    let refused = env
        .topology()
        .declare(&conn.create_channel().await.unwrap())
        .await
        .expect_err("the broker refuses another x-quorum-initial-group-size");
    assert!(
        refused.to_string().contains("x-quorum-initial-group-size"),
        "{refused}"
    );

    // The service's own declaration uses the queues as they are, and publishes to them.
    env.topology().ensure(&conn).await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
    publish_raw(&env, erasure::contract::ERASE_ROUTING_KEY, b"{}").await;
    assert_eq!(env.queue_depth(&env.topology().requests_queue()).await, 1);
}
