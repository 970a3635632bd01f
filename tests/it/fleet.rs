//! The fleet's files cannot drift from the code or from the tools that read them: the
//! Prometheus rules pass `promtool check rules` and their unit tests (every alert fires on a
//! synthetic series and stays quiet on a healthy one), every metric the rules and the Grafana
//! dashboard query is one the code records, the dashboard is a well-formed Grafana model whose
//! every panel queries valid PromQL, and every Kubernetes manifest validates against the
//! Kubernetes schemas (KEDA's objects against KEDA's own CRDs).
//!
//! promtool, python3 with kubernetes-validate, and pgbouncer come from scripts/services.sh
//! (scripts/test runs it first); a missing tool fails the test and says so.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde::Deserialize;
use serde_json::Value;

/// The Kubernetes release whose schemas the manifests are validated against: one that
/// kubernetes-validate ships (1.25 to 1.37 in its release 1.37.0) and KEDA 2.20 supports.
const KUBERNETES_VERSION: &str = "1.33.0";
/// Kinds that are not Kubernetes API objects with a published schema, and how each is checked.
const KEDA_KINDS: [&str; 2] = ["ScaledObject", "TriggerAuthentication"];
/// kustomize's own file, read by `kubectl apply -k`, never sent to the API server: no schema
/// ships for it offline. tests/it/deploy.rs checks that it lists every manifest.
const KUSTOMIZATION: &str = "Kustomization";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory for this test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("erasure-{what}-{}", &id[..12]));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of an installed program (PATH, then the sbin directories root's PATH has), or a
/// failure that says how to install it: a missing tool must never pass a test.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed ({package}): run scripts/services.sh, which installs it"
            )
        })
}

/// python3 with kubernetes-validate (and so PyYAML and jsonschema) importable.
fn python_with_kubernetes_validate() -> PathBuf {
    let python = require_tool("python3", "Debian package python3");
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "kubernetes-validate (PyPI) is not installed for {python:?}: run scripts/services.sh, \
         which installs it"
    );
    python
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {program:?}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

const RULES: &str = "deploy/prometheus/erasure-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/erasure-rules.test.yaml";
const DASHBOARD: &str = "deploy/grafana/erasure-dashboard.json";

fn rules() -> Vec<Value> {
    yaml(&repo().join(RULES))["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group lists rules").clone())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        for inner in p["panels"].as_array().into_iter().flatten() {
            all.push(inner);
        }
    }
    all
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            queries.push(q.expect("a query variable has a query").to_string());
        }
    }
    queries
}

// ---- what the code records -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the service records, by name: `telemetry::FAMILIES`, which a test in ops.rs
/// holds against every `counter!`, `gauge!` and `histogram!` call in src/.
fn recorded_metrics() -> BTreeMap<String, Kind> {
    use erasure::telemetry::{FAMILIES, Kind as Recorded};
    FAMILIES
        .iter()
        .map(|f| {
            let kind = match f.kind {
                Recorded::Counter => Kind::Counter,
                Recorded::Gauge => Kind::Gauge,
                Recorded::Histogram => Kind::Histogram,
            };
            (f.name.to_string(), kind)
        })
        .collect()
}

/// Metric names in a PromQL expression: identifiers starting with `erasure_`, outside string
/// literals (label values) .
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut BTreeSet<String>| {
        if word.starts_with("erasure_") {
            names.insert(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            flush(&mut word, &mut names);
            while let Some(d) = chars.next() {
                if d == '\\' && c != '`' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut names);
        }
    }
    flush(&mut word, &mut names);
    names
}

/// What the exporter (metrics-exporter-prometheus) writes for `name`: counters and gauges
/// under their own name, histograms only as `_bucket`, `_sum` and `_count` series.
fn exposed(name: &str, recorded: &BTreeMap<String, Kind>) -> Result<(), String> {
    match recorded.get(name) {
        Some(Kind::Histogram) => Err(format!(
            "{name} is a histogram: Prometheus has {name}_bucket, _sum and _count, not {name}"
        )),
        Some(_) => Ok(()),
        None => {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    return match recorded.get(base) {
                        Some(Kind::Histogram) => Ok(()),
                        Some(kind) => Err(format!("{base} is a {kind:?}, it has no {suffix}")),
                        None => Err(format!("no metric {base} is recorded in src/")),
                    };
                }
            }
            Err(format!("no metric {name} is recorded in src/"))
        }
    }
}

#[test]
fn every_metric_the_dashboard_and_the_rules_query_is_recorded_by_the_code() {
    let recorded = recorded_metrics();
    assert!(
        recorded.len() >= 15,
        "the metric calls of src/ were read: {recorded:?}"
    );
    let mut queries: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            (
                format!("rule {}", r["alert"]),
                r["expr"].as_str().unwrap().into(),
            )
        })
        .collect();
    queries.extend(
        dashboard_queries(&dashboard())
            .into_iter()
            .map(|q| ("dashboard".to_string(), q)),
    );
    let mut used = BTreeSet::new();
    for (whose, expr) in &queries {
        let names = promql_metrics(expr);
        assert!(
            !names.is_empty(),
            "{whose} queries no erasure metric: {expr}"
        );
        for name in names {
            if let Err(e) = exposed(&name, &recorded) {
                panic!("{whose}: {e}\n  in: {expr}");
            }
            used.insert(name);
        }
    }
    // The resolution above can say no: a counter has no buckets, a histogram has no bare series,
    // an unknown name is unknown.
    assert!(exposed("erasure_rows_deleted_total_bucket", &recorded).is_err());
    assert!(exposed("erasure_delete_batch_seconds", &recorded).is_err());
    assert!(exposed("erasure_no_such_metric_total", &recorded).is_err());
    assert!(exposed("erasure_delete_batch_seconds_count", &recorded).is_ok());
    assert!(
        used.len() >= 15,
        "the files query the fleet's metrics: {used:?}"
    );
}

#[test]
fn promql_metric_names_are_read_outside_label_values() {
    let names = promql_metrics(
        r#"sum by (le) (rate(erasure_a_bucket{queue="erasure_not_a_metric", x=~'erasure_b'}[5m])) / erasure_c"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["erasure_a_bucket".to_string(), "erasure_c".to_string()])
    );
}

// ---- the alert rules -------------------------------------------------------------------------

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = require_tool("promtool", "Debian package prometheus");
    let check = run(&promtool, &["check", "rules", RULES]);
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        said(&check)
    );
    let test = run(&promtool, &["test", "rules", RULE_TESTS]);
    assert!(
        test.status.success(),
        "promtool test rules: {}",
        said(&test)
    );

    // promtool really checks: a rule with broken PromQL, and a unit test expecting an alert
    // that cannot fire, both fail.
    let dir = TempDir::new("promtool");
    let broken = dir.write(
        "broken.yaml",
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(erasure_rows_deleted_total[5m])\n",
    );
    let out = run(&promtool, &["check", "rules", broken.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "broken PromQL passed: {}",
        said(&out)
    );
    std::fs::copy(repo().join(RULES), dir.0.join("erasure-rules.yaml")).unwrap();
    let wrong = dir.write(
        "wrong.test.yaml",
        "rule_files: [erasure-rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series:\n      - series: 'erasure_consumer_up{queue=\"tasks\"}'\n        values: '1x20'\n    \
         alert_rule_test:\n      - eval_time: 20m\n        alertname: ErasureConsumerDown\n        \
         exp_alerts:\n          - exp_labels: {severity: critical, queue: tasks}\n",
    );
    let out = run(&promtool, &["test", "rules", wrong.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a wrong expectation passed: {}",
        said(&out)
    );
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_runbook_section_and_tests_that_fire_and_stay_quiet() {
    let operating = std::fs::read_to_string(repo().join("docs/operating.md")).unwrap();
    let sections: BTreeSet<String> = operating
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let tests = yaml(&repo().join(RULE_TESTS));
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        for t in case["alert_rule_test"].as_array().unwrap() {
            let name = t["alertname"].as_str().unwrap().to_string();
            let expected = t["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let rules = rules();
    assert!(rules.len() >= 7, "the rules were read: {}", rules.len());
    for r in &rules {
        let alert = r["alert"].as_str().expect("alert rules only");
        assert!(
            ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{alert}: severity critical or warning"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{alert}: annotation {a}"
            );
        }
        let runbook = r["annotations"]["runbook"].as_str().unwrap_or("");
        let section = runbook
            .strip_prefix("docs/operating.md#")
            .unwrap_or_else(|| {
                panic!("{alert}: runbook {runbook:?} is a docs/operating.md section")
            });
        assert!(
            sections.contains(section),
            "{alert}: docs/operating.md has no section #{section} (it has {sections:?})"
        );
        assert!(
            fires.contains(alert),
            "{alert}: no unit test where it fires"
        );
        assert!(
            quiet.contains(alert),
            "{alert}: no unit test where it stays quiet"
        );
    }
    let known: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for name in fires.iter().chain(&quiet) {
        assert!(
            known.contains(name.as_str()),
            "the tests name {name}, which is no rule"
        );
    }
}

#[test]
fn the_exporter_writes_the_bucket_the_slow_delete_alert_reads() {
    // ErasureDeleteStatementsOverOneSecond subtracts the le="1" bucket from the count: without
    // a 1 s bucket it would never fire. Recorded under a store no test uses.
    let handle = erasure::telemetry::metrics();
    metrics::histogram!("erasure_delete_batch_seconds", "store" => "fleet_probe").record(1.5);
    let text = handle.render();
    let bucket = |le: &str| {
        format!("erasure_delete_batch_seconds_bucket{{store=\"fleet_probe\",le=\"{le}\"}} ")
    };
    assert!(
        text.lines().any(|l| l.starts_with(&bucket("1"))),
        "no le=\"1\" bucket in:\n{text}"
    );
    assert!(text.lines().any(|l| l.starts_with(&bucket("+Inf"))));
}

// ---- the dashboard ---------------------------------------------------------------------------

#[test]
fn the_dashboard_is_a_grafana_model_whose_every_panel_queries_prometheus() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let variables = d["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable: the dashboard imports into any Grafana");
    assert_eq!(datasource["query"], "prometheus");
    let ds_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let panels = panels(&d);
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "every panel has a title: {p}");
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: unique id");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], ds_ref,
            "{title}: the datasource variable"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without a query");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refIds");
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["uid"], ds_ref, "{title}: target datasource");
            }
        }
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(
            b[2] > 0 && b[3] > 0 && b[0] + b[2] <= 24,
            "{title}: gridPos {g}"
        );
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title.to_string(), b));
    }

    // What the fleet must see, each on some panel.
    let queried: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|q| promql_metrics(q))
        .collect();
    for needed in [
        "erasure_requests_finished_total",
        "erasure_rows_deleted_total",
        "erasure_outbox_backlog",
        "erasure_dead_lettered_total",
        "erasure_delete_batch_seconds_bucket",
        "erasure_delete_batch_max_seconds",
        "erasure_consumer_up",
        "erasure_intake_requests_total",
        "erasure_db_retries_total",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }

    // Every query is valid PromQL: promtool checks them as recording rules, with Grafana's
    // variables replaced by what they expand to.
    let promtool = require_tool("promtool", "Debian package prometheus");
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries(&d).iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$job", ".*");
        let q = if let Some(inner) = q.strip_prefix("label_values(") {
            // A variable query: label_values(metric, label) reads the metric's series.
            inner.split(',').next().unwrap().trim().to_string()
        } else {
            q
        };
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard");
    let path = dir.write("queries.yaml", &file);
    let out = run(&promtool, &["check", "rules", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dashboard PromQL: {}\n{file}",
        said(&out)
    );
}

// ---- Kubernetes manifests --------------------------------------------------------------------

fn k8s_manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| {
            p.strip_prefix(repo())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// (kind, name) of every object in the manifests.
fn k8s_objects(files: &[String]) -> Vec<(String, String)> {
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            objects.push((
                v["kind"].as_str().unwrap().to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    objects
}

/// kubernetes-validate, strict (unknown fields are errors), offline.
fn kubernetes_validate(python: &Path, files: &[String]) -> Output {
    let mut args = vec![
        "-m",
        "kubernetes_validate",
        "--strict",
        "--kubernetes-version",
        KUBERNETES_VERSION,
    ];
    args.extend(files.iter().map(String::as_str));
    run(python, &args)
}

#[test]
fn every_kubernetes_manifest_validates_against_the_kubernetes_schemas() {
    let python = python_with_kubernetes_validate();
    let files = k8s_manifests();
    let out = kubernetes_validate(&python, &files);
    assert!(out.status.success(), "kubernetes-validate: {}", said(&out));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
    // Each object of a Kubernetes kind was validated, and passed; only the kinds without a
    // published schema were not (checked below, and in tests/it/deploy.rs).
    for (kind, name) in k8s_objects(&files) {
        if KEDA_KINDS.contains(&kind.as_str()) || kind == KUSTOMIZATION {
            assert!(
                text.contains(&format!("Couldn't find schema for kind {kind}")),
                "{kind} has no built-in schema: {text}"
            );
            continue;
        }
        let passed = format!(
            "passed for resource {}/{name} against version {version}",
            kind.to_lowercase()
        );
        assert!(
            text.contains(&passed),
            "{kind} {name} was not validated: {text}"
        );
    }

    // It really validates: a Deployment with a misspelt field and a port given as text fails.
    let dir = TempDir::new("k8s");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  selector:\n    \
         matchLabels: {app: bad}\n  template:\n    metadata:\n      labels: {app: bad}\n    spec:\n      \
         containers:\n        - name: c\n          image: x\n          ports:\n            \
         - containerPort: \"http\"\n          readinessProbes: {}\n",
    );
    let out = kubernetes_validate(&python, &[bad.to_str().unwrap().to_string()]);
    assert!(
        !out.status.success(),
        "a broken Deployment passed: {}",
        said(&out)
    );
}

#[test]
fn keda_objects_validate_against_kedas_own_crds() {
    let python = python_with_kubernetes_validate();
    let crds = repo().join("tests/fixtures/keda");
    let crd_args = |files: &[String]| -> Vec<String> {
        let mut args = vec![
            repo()
                .join("scripts/crd_validate.py")
                .to_str()
                .unwrap()
                .to_string(),
        ];
        for crd in [
            "keda.sh_scaledobjects.yaml",
            "keda.sh_triggerauthentications.yaml",
        ] {
            args.push("--crd".into());
            args.push(crds.join(crd).to_str().unwrap().to_string());
        }
        args.extend(files.iter().cloned());
        args
    };
    let files = k8s_manifests();
    let args = crd_args(&files);
    let out = run(
        &python,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "crd_validate.py: {}", said(&out));
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for kind in KEDA_KINDS {
        let of_kind: Vec<_> = results.iter().filter(|r| r["kind"] == kind).collect();
        assert!(!of_kind.is_empty(), "no {kind} in deploy/k8s");
        for r in of_kind {
            assert_eq!(r["result"], "valid", "{r}");
        }
    }

    // The CRD schema is really applied: a string where KEDA wants a number, a number where it
    // wants a string, and a field it does not know are three errors.
    let dir = TempDir::new("keda");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: bad\nspec:\n  \
         scaleTargetRef: {name: erasure-worker}\n  minReplicaCount: \"one\"\n  triggers:\n    \
         - type: rabbitmq\n      metadata: {queueName: erasure.tasks, value: 20}\n      bogus: true\n",
    );
    let args = crd_args(&[bad.to_str().unwrap().to_string()]);
    let out = run(
        &python,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        !out.status.success(),
        "a broken ScaledObject passed: {}",
        said(&out)
    );
    let line: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    assert_eq!(line["errors"].as_array().unwrap().len(), 3, "{line}");
}
