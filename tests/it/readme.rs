//! The README is the user's door: its walk-through runs as pasted, and its settings table is
//! the code's.

use std::{path::Path, time::Duration};

use erasure::{
    config::{GROUPS, SETTINGS},
    startup::{Role, Running},
};

use crate::helpers::TestEnv;

const README: &str = include_str!("../../README.md");

/// The shell block that follows a `<!-- marker -->` line.
fn block_after(marker: &str) -> &'static str {
    let start = README
        .find(marker)
        .unwrap_or_else(|| panic!("README has {marker}"));
    let rest = &README[start..];
    let open = rest.find("```sh\n").expect("a sh block follows") + "```sh\n".len();
    let len = rest[open..].find("\n```").expect("the block ends");
    &rest[open..open + len]
}

/// Runs the shell blocks after `markers`, one script, as pasted but for the two addresses:
/// this test's binary and its service's port; in `dir`. Returns what it printed.
async fn run_pasted(env: &TestEnv, svc: &Running, markers: &[&str], dir: &Path) -> String {
    let script = markers
        .iter()
        .map(|m| block_after(m))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        script.contains("E=target/release/erasure\n")
            && script.contains("URL=http://127.0.0.1:8080\n")
    );
    let script = script
        .replace(
            "E=target/release/erasure\n",
            &format!("E={}\n", env!("CARGO_BIN_EXE_erasure")),
        )
        .replace(
            "URL=http://127.0.0.1:8080\n",
            &format!("URL=http://{}\n", svc.http_addr),
        );
    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .envs(&env.vars)
        .env("ERASURE_LOG", "warn")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the walk-through finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "walk-through failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_pasted() {
    let env = TestEnv::new().await;
    let svc = env.start(Role::All).await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stdout = run_pasted(&env, &svc, &["<!-- walkthrough -->"], repo).await;
    assert!(
        stdout.contains(r#""status":"in-progress""#),
        "the 202 answer is shown: {stdout}"
    );
    assert!(
        stdout.contains(r#""status": "completed""#),
        "--watch ends on the settled document: {stdout}"
    );
    for expected in [
        "account_owner",
        "bot_co_developer",
        "NOT_FOUND",
        r#""channelUserId": "tg-demo-14""#,
    ] {
        assert!(stdout.contains(expected), "{expected} in {stdout}");
    }
    for (user, bot) in [
        ("u-demo-10", "st-demo-1"),
        ("u-demo-11", "st-demo-2"),
        ("u-demo-14", "st-demo-1"),
    ] {
        assert_eq!(
            env.count_rows(user, bot).await,
            0,
            "{user} in {bot} is erased"
        );
    }
    svc.shutdown().await;
}

#[tokio::test]
async fn the_readme_proof_of_erasure_runs_as_pasted() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_VERIFY_AFTER", "0"),
        ("ERASURE_VERIFY_SWEEP_SECONDS", "1"),
    ])
    .await;
    let svc = env.start(Role::All).await;
    // The block writes jwks.json and receipt.jws where it runs: not in the repository.
    let dir = std::env::temp_dir().join(format!("erasure-readme-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let stdout = run_pasted(
        &env,
        &svc,
        &["<!-- walkthrough -->", "<!-- proof -->"],
        &dir,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        stdout.matches("signature verified: EdDSA, key ").count(),
        4,
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("subject: in the receipt, outcome SUCCESS")
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("not a subject"), "{stdout}");
    assert!(stdout.contains(r#""catalog": ""#), "{stdout}");
    svc.shutdown().await;
}

#[test]
fn the_readme_settings_table_is_the_declared_settings() {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for (group, title) in GROUPS {
        table.push_str(&format!("| **{}** | | |\n", title.trim_end_matches('.')));
        for s in SETTINGS.iter().filter(|s| s.group == *group) {
            table.push_str(&format!(
                "| `{}` | {} | {} |\n",
                s.var,
                s.shown_default(),
                s.help
            ));
        }
    }
    let marker = "<!-- settings -->\n";
    let at = README.find(marker).expect("README has the settings marker") + marker.len();
    assert!(
        README[at..].starts_with(&table),
        "README settings table differs from erasure::config::SETTINGS; expected:\n{table}"
    );
}
