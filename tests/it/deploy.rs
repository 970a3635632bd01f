//! deploy/ cannot drift from the code: every manifest parses, and every setting, command,
//! role, port, probe path, grace period and queue name it uses is checked against the code
//! (and, for probe paths, against a running service).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::Parser;
use erasure::{
    cli::{Cli, Command},
    config::{Config, SETTINGS},
    queue::Topology,
    startup::Role,
};
use serde::Deserialize;
use serde_json::Value;

use crate::helpers::TestEnv;

/// Settings that carry credentials: they belong in the Secret, not the ConfigMap.
const CREDENTIAL_URLS: [&str; 3] = ["DATABASE_URL", "ERASURE_MIGRATION_DATABASE_URL", "AMQP_URL"];
/// What the consumer waits after the grace period for handed-back work, plus closing.
const SHUTDOWN_MARGIN_SECONDS: u64 = 10;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of a (multi-document) YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/k8s holds manifests");
    files
}

/// Every Kubernetes object of deploy/k8s (the kustomization excluded).
fn objects() -> Vec<Value> {
    k8s_files()
        .iter()
        .flat_map(|f| documents(f))
        .filter(|o| o["kind"] != "Kustomization")
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => panic!("{k} must be a string in the manifest, not {other}"),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ConfigMap data plus Secret stringData: what a container started with envFrom sees.
fn k8s_settings(objects: &[Value]) -> BTreeMap<String, String> {
    let mut vars = string_map(&object(objects, "ConfigMap", "erasure-config")["data"]);
    vars.extend(string_map(
        &object(objects, "Secret", "erasure-secrets")["stringData"],
    ));
    vars
}

/// Pod templates of the Deployments and the Job: (object name, pod spec, pod labels).
fn pod_templates(objects: &[Value]) -> Vec<(String, &Value, &Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "Job")
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_string(),
                &o["spec"]["template"]["spec"],
                &o["spec"]["template"]["metadata"]["labels"],
            )
        })
        .collect()
}

fn containers(pod: &Value) -> Vec<&Value> {
    pod["containers"]
        .as_array()
        .expect("a pod spec lists containers")
        .iter()
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Parses an argument list as the binary would (`erasure` + args).
fn command(args: &[String]) -> Command {
    let argv = std::iter::once("erasure".to_string()).chain(args.iter().cloned());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?} is not an erasure command: {e}"))
        .command
}

fn role(args: &[String]) -> Role {
    match command(args) {
        Command::Serve { role } => role,
        other => panic!("{args:?} is {other:?}, not serve"),
    }
}

fn http_port(vars: &BTreeMap<String, String>) -> u16 {
    Config::from_map(vars).unwrap().http.addr.port()
}

fn shutdown_grace(vars: &BTreeMap<String, String>) -> u64 {
    Config::from_map(vars)
        .unwrap()
        .worker
        .shutdown_grace
        .as_secs()
}

#[test]
fn every_manifest_parses_is_namespace_agnostic_and_listed_in_the_kustomization() {
    let mut listed = BTreeSet::new();
    let mut present = BTreeSet::new();
    for file in k8s_files() {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{name} holds at least one object");
        for doc in docs {
            assert!(doc["apiVersion"].is_string(), "{name}: apiVersion");
            assert!(doc["kind"].is_string(), "{name}: kind");
            if doc["kind"] == "Kustomization" {
                listed.extend(strings(&doc["resources"]));
                continue;
            }
            present.insert(name.clone());
            assert!(
                doc["metadata"]["name"].is_string(),
                "{name}: {} has a name",
                doc["kind"]
            );
            assert!(
                doc["metadata"].get("namespace").is_none(),
                "{name}: manifests are namespace-agnostic"
            );
        }
    }
    assert_eq!(listed, present, "the kustomization lists every manifest");
}

#[test]
fn k8s_settings_are_real_settings_split_between_configmap_and_secret() {
    let objects = objects();
    let known: BTreeSet<&str> = SETTINGS.iter().map(|s| s.var).collect();
    let config = string_map(&object(&objects, "ConfigMap", "erasure-config")["data"]);
    let secret = string_map(&object(&objects, "Secret", "erasure-secrets")["stringData"]);
    for var in config.keys().chain(secret.keys()) {
        assert!(known.contains(var.as_str()), "{var} is not a setting");
    }
    for s in SETTINGS {
        let sensitive = s.secret || CREDENTIAL_URLS.contains(&s.var);
        if sensitive {
            assert!(secret.contains_key(s.var), "{} is in the Secret", s.var);
            assert!(
                !config.contains_key(s.var),
                "{} is not in the ConfigMap",
                s.var
            );
        } else {
            assert!(config.contains_key(s.var), "{} is in the ConfigMap", s.var);
        }
    }
    // Inline env entries, where any, must be settings too; envFrom must name what exists.
    for (name, pod, _) in pod_templates(&objects) {
        for c in containers(pod) {
            for e in c["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().unwrap();
                assert!(known.contains(var), "{name}: {var} is not a setting");
            }
            for from in c["envFrom"].as_array().into_iter().flatten() {
                if let Some(r) = from["configMapRef"]["name"].as_str() {
                    object(&objects, "ConfigMap", r);
                }
                if let Some(r) = from["secretRef"]["name"].as_str() {
                    object(&objects, "Secret", r);
                }
            }
        }
    }
    let vars = k8s_settings(&objects);
    let parsed = Config::from_map(&vars).unwrap_or_else(|e| panic!("deploy/k8s settings: {e}"));
    assert!(
        parsed.http.addr.ip().is_unspecified(),
        "containers listen on every interface"
    );
}

#[test]
fn k8s_commands_are_real_subcommands_and_roles_of_one_image() {
    let objects = objects();
    let mut images = BTreeSet::new();
    let mut roles = BTreeMap::new();
    for (name, pod, _) in pod_templates(&objects) {
        for c in containers(pod) {
            images.insert(c["image"].as_str().unwrap().to_string());
            let args = strings(&c["args"]);
            assert!(
                c.get("command").is_none(),
                "{name}: the image's entrypoint is the binary; set args only"
            );
            match command(&args) {
                Command::Serve { role } => {
                    roles.insert(name.clone(), role);
                }
                Command::Migrate => assert_eq!(name, "erasure-migrate"),
                other => panic!("{name} runs {other:?}"),
            }
        }
    }
    assert_eq!(images.len(), 1, "one image for every role: {images:?}");
    assert_eq!(roles.get("erasure-intake"), Some(&Role::Intake));
    assert_eq!(roles.get("erasure-worker"), Some(&Role::Worker));
    assert_eq!(of_kind(&objects, "Job").len(), 1, "one migration Job");
}

#[test]
fn k8s_ports_probes_and_grace_periods_match_the_service() {
    let objects = objects();
    let vars = k8s_settings(&objects);
    let port = http_port(&vars);
    let grace = shutdown_grace(&vars);
    for d in of_kind(&objects, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = containers(pod)[0];
        let ports = c["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{name}: one port");
        assert_eq!(
            ports[0]["containerPort"], port,
            "{name}: ERASURE_HTTP_ADDR's port"
        );
        assert_eq!(ports[0]["name"], "http");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe}");
            assert!(
                get["port"] == "http" || get["port"] == port,
                "{name}: {probe} probes the service's port"
            );
        }
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        assert_eq!(annotations["prometheus.io/port"], port.to_string());
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            termination >= grace + SHUTDOWN_MARGIN_SECONDS,
            "{name}: terminationGracePeriodSeconds {termination} must cover \
             ERASURE_SHUTDOWN_GRACE_SECONDS {grace} plus {SHUTDOWN_MARGIN_SECONDS}s"
        );
    }
    let service = object(&objects, "Service", "erasure-intake");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn services_and_disruption_budgets_select_real_pods() {
    let objects = objects();
    let pods = pod_templates(&objects);
    let selects = |selector: &Value| -> Vec<String> {
        let want = string_map(selector);
        assert!(!want.is_empty(), "an empty selector matches everything");
        pods.iter()
            .filter(|(_, _, labels)| {
                let have = string_map(labels);
                want.iter().all(|(k, v)| have.get(k) == Some(v))
            })
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    let service = object(&objects, "Service", "erasure-intake");
    assert_eq!(selects(&service["spec"]["selector"]), ["erasure-intake"]);
    let budgets = of_kind(&objects, "PodDisruptionBudget");
    let mut covered = BTreeSet::new();
    for pdb in budgets {
        let matched = selects(&pdb["spec"]["selector"]["matchLabels"]);
        assert_eq!(matched.len(), 1, "a budget covers one Deployment");
        covered.extend(matched);
    }
    assert_eq!(
        covered,
        BTreeSet::from(["erasure-intake".to_string(), "erasure-worker".to_string()])
    );
    for d in of_kind(&objects, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            selects(&d["spec"]["selector"]["matchLabels"]),
            [name],
            "{name} selects its own pods only"
        );
    }
}

#[test]
fn keda_scales_the_workers_on_the_task_queue() {
    let objects = objects();
    let config = Config::from_map(&k8s_settings(&objects)).unwrap();
    let topology = Topology::new(&config.queue.prefix, config.queue.max_deliveries);
    let scaled = of_kind(&objects, "ScaledObject");
    assert_eq!(scaled.len(), 1);
    let s = scaled[0];
    let target = s["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
    let worker = object(&objects, "Deployment", target);
    assert_eq!(
        role(&strings(
            &containers(&worker["spec"]["template"]["spec"])[0]["args"]
        )),
        Role::Worker,
        "KEDA scales the workers"
    );
    assert!(
        s["spec"]["minReplicaCount"].as_u64().unwrap() >= 1,
        "a worker always runs: it also consumes the requests queue"
    );
    let triggers = s["spec"]["triggers"].as_array().unwrap();
    let rabbit: Vec<_> = triggers
        .iter()
        .filter(|t| t["type"] == "rabbitmq")
        .collect();
    assert_eq!(rabbit.len(), 1);
    let t = rabbit[0];
    assert_eq!(t["metadata"]["queueName"], topology.tasks_queue());
    assert_eq!(t["metadata"]["mode"], "QueueLength");
    let auth = object(
        &objects,
        "TriggerAuthentication",
        t["authenticationRef"]["name"].as_str().unwrap(),
    );
    let host = auth["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("the broker URL comes from the Secret");
    let secret = object(&objects, "Secret", host["name"].as_str().unwrap());
    assert!(secret["stringData"][host["key"].as_str().unwrap()].is_string());
    assert_eq!(host["key"], "AMQP_URL");
}

fn compose() -> Value {
    let mut docs = documents(&deploy_dir().join("compose.yaml"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// Compose services that run the erasure image.
fn erasure_services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("erasure"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn host_of(url: &str) -> &str {
    url.split('@').nth(1).unwrap().split(':').next().unwrap()
}

fn seconds(duration: &str) -> u64 {
    erasure::config::parse_duration(duration)
        .unwrap_or_else(|| panic!("{duration} is not a duration"))
        .as_secs()
}

#[test]
fn compose_runs_migration_intake_and_two_workers_with_real_settings() {
    let compose = compose();
    let services = erasure_services(&compose);
    let known: BTreeSet<&str> = SETTINGS.iter().map(|s| s.var).collect();
    let mut roles = BTreeMap::new();
    for (name, s) in &services {
        let vars = string_map(&s["environment"]);
        for var in vars.keys() {
            assert!(
                known.contains(var.as_str()),
                "{name}: {var} is not a setting"
            );
        }
        let config = Config::from_map(&vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.keys.secret_key.configured && config.keys.pii_hmac_key.configured);
        assert!(
            compose["services"][host_of(&config.database.url)]["image"]
                .as_str()
                .unwrap()
                .starts_with("postgres")
        );
        assert!(
            compose["services"][host_of(config.queue.amqp_url.primary())]["image"]
                .as_str()
                .unwrap()
                .starts_with("rabbitmq")
        );
        let args = strings(&s["command"]);
        match command(&args) {
            Command::Migrate => {
                assert_eq!(s["depends_on"]["postgres"]["condition"], "service_healthy");
                roles.insert(name.clone(), None);
            }
            Command::Serve { role } => {
                roles.insert(name.clone(), Some(role));
                assert!(
                    config.http.addr.ip().is_unspecified(),
                    "{name} listens on every interface"
                );
                let migrate = roles_migrate_name(&services);
                assert_eq!(
                    s["depends_on"][&migrate]["condition"], "service_completed_successfully",
                    "{name} starts after the migration"
                );
                for dep in ["postgres", "rabbitmq"] {
                    assert_eq!(s["depends_on"][dep]["condition"], "service_healthy");
                }
                let grace = config.worker.shutdown_grace.as_secs();
                let stop = seconds(s["stop_grace_period"].as_str().unwrap());
                assert!(
                    stop >= grace + SHUTDOWN_MARGIN_SECONDS,
                    "{name}: stop_grace_period {stop}s covers the shutdown grace {grace}s"
                );
                let check = strings(&s["healthcheck"]["test"]).join(" ");
                assert!(
                    check.contains(&format!("/{}", config.http.addr.port()))
                        && (check.contains("/readyz") || check.contains("/healthz")),
                    "{name}: the healthcheck probes the service: {check}"
                );
            }
            other => panic!("{name} runs {other:?}"),
        }
    }
    let workers: Vec<_> = roles
        .iter()
        .filter(|(_, r)| **r == Some(Role::Worker))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(workers.len(), 1);
    assert_eq!(services[&workers[0]]["deploy"]["replicas"], 2);
    assert_eq!(
        roles.values().filter(|r| **r == Some(Role::Intake)).count(),
        1
    );
    let intake = roles
        .iter()
        .find(|(_, r)| **r == Some(Role::Intake))
        .unwrap()
        .0;
    let published = strings(&services[intake]["ports"]);
    let env = string_map(&services[intake]["environment"]);
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{}", http_port(&env)))),
        "the intake publishes its port: {published:?}"
    );
    for dep in ["postgres", "rabbitmq"] {
        assert!(
            compose["services"][dep]["healthcheck"]["test"].is_array(),
            "{dep} has a healthcheck"
        );
    }
}

fn roles_migrate_name(services: &BTreeMap<String, Value>) -> String {
    services
        .iter()
        .find(|(_, s)| matches!(command(&strings(&s["command"])), Command::Migrate))
        .map(|(n, _)| n.clone())
        .expect("a one-shot migration service")
}

/// Logical lines of a Dockerfile (continuations joined, comments dropped).
fn dockerfile_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    lines.push(current.trim().to_string());
                }
                current.clear();
            }
        }
    }
    lines
}

#[test]
fn the_dockerfile_is_multi_stage_unprivileged_and_runs_the_binary() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let lines = dockerfile_lines(&text);
    let instr = |l: &str| l.split_whitespace().next().unwrap_or("").to_uppercase();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|&i| instr(&lines[i]) == "FROM")
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let builder = lines[stages[0]]
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("AS"))
        .map(|w| w[1].to_string())
        .expect("the build stage is named");
    let runtime = &lines[*stages.last().unwrap()..];
    assert!(
        lines[*stages.last().unwrap()].contains("slim"),
        "a small runtime image"
    );
    let users: Vec<&String> = runtime.iter().filter(|l| instr(l) == "USER").collect();
    let user = users.last().expect("the runtime stage sets USER");
    let who = user.split_whitespace().nth(1).unwrap();
    let name = who.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "runs as non-root: {user}");
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with(&format!("COPY --from={builder} ")) && l.contains("erasure")),
        "the runtime copies the binary from {builder}"
    );
    let find = |word: &str| {
        runtime
            .iter()
            .find(|l| instr(l) == word)
            .unwrap_or_else(|| panic!("no {word} in the runtime stage"))
    };
    assert_eq!(find("ENTRYPOINT").as_str(), r#"ENTRYPOINT ["erasure"]"#);
    let cmd: Vec<String> = serde_json::from_str(find("CMD").trim_start_matches("CMD")).unwrap();
    command(&cmd);
    let env = find("ENV");
    let addr = env
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("ERASURE_HTTP_ADDR="))
        .expect("ENV sets ERASURE_HTTP_ADDR");
    let mut vars = BTreeMap::new();
    vars.insert("ERASURE_HTTP_ADDR".to_string(), addr.to_string());
    let port = http_port(&vars);
    assert_eq!(addr, format!("0.0.0.0:{port}"));
    assert_eq!(find("EXPOSE").as_str(), format!("EXPOSE {port}"));
    // The build needs the manifest, the lock file, the patched crates, the sources and the
    // embedded migrations.
    let build = &lines[..*stages.last().unwrap()];
    for needed in ["Cargo.toml", "Cargo.lock", "vendor", "src", "migrations"] {
        assert!(
            build
                .iter()
                .any(|l| instr(l) == "COPY" && l.split_whitespace().any(|w| w == needed)),
            "the build stage copies {needed}"
        );
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(needed).exists());
    }
    assert!(
        build
            .iter()
            .any(|l| l.contains("--locked") && l.contains("--bin erasure"))
    );
    // A source file the build names (the stand-in of the dependency layer, the files it
    // touches) is where Cargo finds the targets: a stale one would add a second `erasure`.
    for word in build.iter().flat_map(|l| l.split_whitespace()) {
        if word.starts_with("src/") && word.ends_with(".rs") {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(word).exists(),
                "the Dockerfile names {word}, which the repository does not have"
            );
        }
    }
    let ignored = std::fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore")).unwrap();
    for needed in ["Cargo.toml", "Cargo.lock", "vendor", "src", "migrations"] {
        assert!(
            !ignored.lines().any(|l| l.trim() == needed),
            "{needed} reaches the build"
        );
    }
}

/// Every HTTP path the deployment files probe or scrape.
fn probed_paths() -> BTreeSet<String> {
    let objects = objects();
    let mut paths = BTreeSet::new();
    for d in of_kind(&objects, "Deployment") {
        for c in containers(&d["spec"]["template"]["spec"]) {
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if let Some(p) = c[probe]["httpGet"]["path"].as_str() {
                    paths.insert(p.to_string());
                }
            }
        }
        if let Some(p) =
            d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"].as_str()
        {
            paths.insert(p.to_string());
        }
    }
    for s in erasure_services(&compose()).values() {
        let check = strings(&s["healthcheck"]["test"]).join(" ");
        for word in check.split_whitespace() {
            if word.starts_with('/') && !word.starts_with("/dev/") {
                paths.insert(word.to_string());
            }
        }
    }
    paths
}

#[tokio::test]
async fn every_probed_path_is_a_route_of_both_roles() {
    let paths = probed_paths();
    assert_eq!(
        paths,
        BTreeSet::from(["/healthz", "/metrics", "/readyz"].map(String::from))
    );
    let env = TestEnv::new().await;
    let http = reqwest::Client::new();
    for role in [Role::Intake, Role::Worker] {
        let svc = env.start(role).await;
        let base = format!("http://{}", svc.http_addr);
        for path in &paths {
            let code = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert!(
                code == 200 || code == 503,
                "{role:?} answers {path} with {code}"
            );
        }
        let code = http
            .get(format!("{base}/no-such-probe"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 404, "an unknown path is not a route");
        svc.shutdown().await;
    }
}

#[test]
fn the_target_catalog_ships_as_a_configmap_mounted_where_erasure_targets_points() {
    use erasure::catalog::{Catalog, Source};
    let file = std::fs::read_to_string(deploy_dir().join("targets.toml")).unwrap();
    let objects = objects();
    let shipped = object(&objects, "ConfigMap", "erasure-targets")["data"]["targets.toml"]
        .as_str()
        .expect("the ConfigMap holds targets.toml")
        .to_string();
    assert_eq!(
        shipped.trim(),
        file.trim(),
        "deploy/targets.toml and the ConfigMap agree"
    );
    let catalog = Catalog::parse(&file, Source::File("deploy/targets.toml".into()))
        .unwrap_or_else(|p| panic!("deploy/targets.toml: {p:?}"));
    assert_eq!(
        catalog.digest,
        Catalog::built_in().digest,
        "the shipped catalog is the built-in one written out"
    );
    let vars = k8s_settings(&objects);
    let path = Path::new(&vars["ERASURE_TARGETS"]);
    for name in ["erasure-intake", "erasure-worker"] {
        let pod = &object(&objects, "Deployment", name)["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["configMap"]["name"] == "erasure-targets")
            .unwrap_or_else(|| panic!("{name} mounts erasure-targets"));
        let mounted = containers(pod)
            .iter()
            .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{name} mounts the volume"));
        assert_eq!(
            Path::new(mounted["mountPath"].as_str().unwrap()).join("targets.toml"),
            path,
            "{name}: ERASURE_TARGETS names the mounted file"
        );
    }
}
