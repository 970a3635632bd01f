//! The service under test: this binary started as `serve --role intake|worker` child
//! processes on the bench's database and queue prefix, each logging to its own file; read
//! through its operations endpoints and `/proc`; stopped with SIGTERM as an orchestrator
//! would, so that the graceful shutdown is part of what runs.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::process::Child;

use super::Options;

/// A child process of this binary running `serve --role ROLE`.
pub struct Service {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Service {
    pub async fn spawn(
        opts: &Options,
        role: &str,
        n: usize,
        extra: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "erasure-{}{role}-{n}.log",
            opts.queue_prefix.replace('.', "-")
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&opts.exe);
        cmd.args(["serve", "--role", role])
            .env("DATABASE_URL", &opts.database_url)
            .env("AMQP_URL", opts.config.queue.amqp_url.all().join(","))
            .env("ERASURE_QUEUE_PREFIX", &opts.queue_prefix)
            .env("ERASURE_HTTP_ADDR", addr.to_string())
            .env("ERASURE_RATE_LIMIT_PER_APP", "0")
            .env("ERASURE_LOG_FORMAT", "text")
            // Quiet unless the bench's own environment asks for more.
            .env(
                "ERASURE_LOG",
                std::env::var("ERASURE_LOG").unwrap_or_else(|_| "warn,sqlx=warn,lapin=warn".into()),
            )
            .env("ERASURE_MAX_ROWS_PER_SECOND_TOTAL", "0")
            // The PostgreSQL server is shared: keep each process's pool modest.
            .env(
                "ERASURE_DB_MAX_CONNECTIONS",
                if role == "intake" { "16" } else { "8" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        if opts.config.keys.secret_key.configured {
            cmd.env(
                "ERASURE_SECRET_KEY",
                hex::encode(&opts.config.keys.secret_key.bytes),
            );
        } else {
            cmd.env_remove("ERASURE_SECRET_KEY");
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.exe.display()))?;
        let mut svc = Self { child, addr, log };
        svc.wait_ready().await?;
        Ok(svc)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{status}: see {}", self.log.display());
            }
            let ready = http
                .get(format!("{}/readyz", self.base_url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not ready within 60 s: see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.base_url()))
            .await?
            .text()
            .await?)
    }

    /// Peak resident memory of the process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        peak_rss_kib(pid)
    }

    /// SIGTERM, then waits for the graceful exit (SIGKILL after 30 s).
    pub async fn stop(mut self) {
        // `id()` is None once the child is reaped, so the pid cannot have been reused.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

/// Worker processes started and stopped together.
pub struct Workers(pub Vec<Service>);

impl Workers {
    pub async fn spawn(
        opts: &Options,
        n: usize,
        extra: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            all.push(Service::spawn(opts, "worker", i, extra).await?);
        }
        Ok(Self(all))
    }

    pub async fn stop(self) {
        futures_util::future::join_all(self.0.into_iter().map(Service::stop)).await;
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
