//! The real `erasure` binary as a child process, so that a test can SIGKILL or SIGTERM it
//! like an orchestrator would. It gets only the test's settings as its environment (plus
//! overrides, e.g. URLs through a `Proxy`) and logs JSON to a file, kept when a test fails.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::helpers::{TestEnv, eventually};

pub struct Process {
    child: Child,
    pub role: String,
    pub log: PathBuf,
    pub http: SocketAddr,
}

impl Process {
    /// Starts `erasure serve --role <role>` and waits until it says it has started.
    pub async fn spawn(env: &TestEnv, role: &str, overrides: &[(&str, &str)]) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!(
            "{}{role}-{}.log",
            env.prefix,
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_erasure"));
        cmd.args(["serve", "--role", role])
            .env_clear()
            .envs(&env.vars)
            .env("ERASURE_LOG_FORMAT", "json")
            .env("RUST_BACKTRACE", "1")
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("the erasure binary starts");
        let mut p = Self {
            child,
            role: role.to_string(),
            log,
            http: "0.0.0.0:0".parse().unwrap(),
        };
        p.http = p.wait_started().await;
        if role != "intake" {
            p.wait_consuming().await;
        }
        p
    }

    /// Both consumers (requests, tasks) attached: messages published now reach this process.
    async fn wait_consuming(&mut self) {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(20),
            async || (self.logged("consuming") >= 2).then_some(()),
            || format!("{} is not consuming:\n{}", self.role, self.log_text()),
        )
        .await
    }

    async fn wait_started(&mut self) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            for line in self.log_text().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == "erasure started" {
                    let addr = v["fields"]["http"].as_str().expect("http address logged");
                    return addr.parse().unwrap();
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before starting:\n{}",
                    self.role,
                    self.log_text()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not start:\n{}",
                self.role,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log events (JSON lines) whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    pub fn logged(&self, message: &str) -> usize {
        self.events(message).len()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// SIGKILL: no shutdown code runs, like a node dying or the OOM killer.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit on its own; returns its
    /// exit status and what it logged.
    pub async fn terminate(mut self, limit: Duration) -> (ExitStatus, String) {
        let sent = std::process::Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => (status.unwrap(), self.log_text()),
            Err(_) => panic!(
                "{} did not exit within {limit:?} of SIGTERM:\n{}",
                self.role,
                self.log_text()
            ),
        }
    }
}

impl Drop for Process {
    /// The log is kept only when the test fails, for the post-mortem.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
