//! docs/openapi.yaml against the running intake, by a schema-driven fuzzer (schemathesis, with
//! every check): each request the document calls valid is accepted, each it calls invalid is
//! refused, and each answer is documented. The rules that depend on data rather than on a
//! request's shape (which bots exist, duplicate channel identities) are the hooks in
//! tests/schemathesis/hooks.py.
//!
//! By hand, against a service started as in the README's walk-through:
//! `SCHEMATHESIS_HOOKS=tests/schemathesis/hooks.py ERASURE_FUZZ_BOTS=st-demo-1,st-demo-2
//! schemathesis --config-file tests/schemathesis/schemathesis.toml run docs/openapi.yaml
//! --url http://127.0.0.1:8080 -H "auth: $TOKEN" --checks all --generation-database none`.

use std::path::Path;

use erasure::{intake::auth::SCOPE, startup::Role};

use crate::helpers::TestEnv;

/// Test cases per operation and phase: enough to reach every documented rule (the coverage
/// phase adds its boundary cases on top), few enough to keep the test to seconds.
const EXAMPLES: &str = "30";
/// A fixed seed: the same cases on every run, so a failure here is a change of the intake or
/// of the document, never the fuzzer's luck.
const SEED: &str = "20261128";

#[tokio::test]
async fn schemathesis_finds_the_intake_as_docs_openapi_yaml_describes_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = TestEnv::new().await;
    let bots = env.account("acct-fuzz", 2).await;
    let (_, _, token) = env.app("acct-fuzz", &[SCOPE]).await;
    let svc = env.start(Role::Intake).await;
    // Whatever the fuzzer leaves behind stays out of the repository.
    let scratch = std::env::temp_dir().join(format!("erasure-fuzz-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();

    let run = tokio::process::Command::new("schemathesis")
        .arg("--config-file")
        .arg(repo.join("tests/schemathesis/schemathesis.toml"))
        .arg("run")
        .arg(repo.join("docs/openapi.yaml"))
        .args(["--url", &format!("http://{}", svc.http_addr)])
        .args(["--header", &format!("auth: {token}")])
        .args(["--checks", "all"])
        .args(["--max-examples", EXAMPLES])
        .args(["--seed", SEED])
        // One at a time. Two were faster (the calls mostly wait on the database: 23 s against
        // 33), but with two operations taking a path parameter (status, receipt) the two
        // workers' first descriptions of the same hypothesis lambda parse one module at once,
        // and CPython 3.11's compiler is not thread-safe: "SystemError: AST constructor
        // recursion depth mismatch", a runtime error in one of every two runs.
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .env(
            "SCHEMATHESIS_HOOKS",
            repo.join("tests/schemathesis/hooks.py"),
        )
        .env("ERASURE_FUZZ_BOTS", bots.join(","))
        .current_dir(&scratch)
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let out = run.unwrap_or_else(|e| {
        panic!(
            "schemathesis could not run ({e}): install it with `pip install schemathesis` \
             (scripts/test does)"
        )
    });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the intake unlike docs/openapi.yaml:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" passed"), "no test case ran:\n{report}");
    svc.shutdown().await;
}
