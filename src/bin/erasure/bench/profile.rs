//! Where the time goes: CPU seconds of the service's processes and of the PostgreSQL backends
//! serving the bench database (from `/proc/<pid>/stat`), and, with `--profile`, every
//! statement the bench database ran, read back from the server's log: its server time
//! (`log_min_duration_statement`) and the CPU its backend spent on it (`log_statement_stats`,
//! the backend's own `getrusage` around each protocol message: parse, bind, execute), so that
//! a statement that waited on a lock or for a core is told from one that worked.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
};

use anyhow::{Context, bail};
use sqlx::PgPool;

/// Linux reports process times in clock ticks of `USER_HZ`, 100 on every architecture it
/// supports (part of its ABI, whatever the kernel's own HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) a process has used, if it still runs.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

/// The backends serving the bench database now (the service's pools keep theirs open).
async fn backends(pool: &PgPool) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// A position in the server's WAL (the whole server's: the bench has it to itself), to tell
/// how many bytes of WAL a phase wrote. (`pg_stat_wal`'s counters lag by up to a second,
/// too coarse for phases of a second.)
#[derive(Clone, Copy, Debug)]
pub struct Wal(f64);

impl Wal {
    pub async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        Ok(Self(
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
                .fetch_one(pool)
                .await?,
        ))
    }

    /// Megabytes of WAL written since `before`.
    pub fn mb_since(self, before: Self) -> f64 {
        (self.0 - before.0) / 1e6
    }
}

/// CPU used between `start` and `finish`: by the service's processes, and by the backends of
/// the bench database (those that ended during the run are missed; the bench's own polling
/// connection is counted, a few milliseconds).
pub struct Cpu {
    service: Vec<(u32, f64)>,
    backends: HashMap<u32, f64>,
}

impl Cpu {
    pub async fn start(pool: &PgPool, service: &[u32]) -> anyhow::Result<Self> {
        let service = service
            .iter()
            .filter_map(|&p| Some((p, cpu_seconds(p)?)))
            .collect();
        let backends = backends(pool)
            .await?
            .into_iter()
            .filter_map(|p| Some((p, cpu_seconds(p)?)))
            .collect();
        Ok(Self { service, backends })
    }

    /// Seconds of CPU: (the service's processes, PostgreSQL's backends).
    pub async fn finish(self, pool: &PgPool) -> anyhow::Result<(f64, f64)> {
        let service = self
            .service
            .iter()
            .filter_map(|(p, before)| Some(cpu_seconds(*p)? - before))
            .sum();
        let postgres = backends(pool)
            .await?
            .into_iter()
            .filter_map(|p| Some(cpu_seconds(p)? - self.backends.get(&p).copied().unwrap_or(0.0)))
            .sum();
        Ok((service, postgres))
    }
}

/// A `perf record` of the whole host with call graphs (`--perf`), from [`Self::start`] to
/// [`Self::finish`].
pub struct Perf {
    child: std::process::Child,
}

impl Perf {
    /// Starts recording into `out` when `--perf` asks for it.
    pub async fn start_if(out: Option<&std::path::Path>) -> anyhow::Result<Option<Self>> {
        let Some(out) = out else {
            return Ok(None);
        };
        let child = std::process::Command::new("perf")
            .args(["record", "-a", "-g", "-F", "997", "-q", "-o"])
            .arg(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("--perf runs `perf record` (Debian's linux-perf)")?;
        // perf opens its counters before it records; what runs before then is not seen.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Ok(Some(Self { child }))
    }

    /// Stops recording (perf writes its file on SIGINT) and waits for the file.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("could not stop perf record");
        }
        self.child.wait()?;
        Ok(())
    }
}

/// Sets the bench database to log every statement with its duration and its CPU
/// (`--profile`): done when the database is created, so that every session the service opens
/// logs.
pub async fn log_every_statement(pool: &PgPool) -> anyhow::Result<()> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let database = database.replace('"', "\"\"");
    for setting in ["log_min_duration_statement = 0", "log_statement_stats = on"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{database}\" SET {setting}"
        )))
        .execute(pool)
        .await
        .with_context(|| format!("--profile needs a superuser to set {setting}"))?;
    }
    Ok(())
}

/// The statements of the bench database between `start` and `finish`, from the server log.
pub struct Statements {
    log: PathBuf,
    offset: u64,
    database: String,
}

impl Statements {
    /// [`Self::start`] when `--profile` asks for it.
    pub async fn start_if(
        profile: bool,
        pool: &PgPool,
        database_url: &str,
    ) -> anyhow::Result<Option<Self>> {
        if !profile {
            return Ok(None);
        }
        Self::start(pool, database_url).await.map(Some)
    }

    /// Marks the log's current end; `database_url`'s database is the one to read.
    pub async fn start(pool: &PgPool, database_url: &str) -> anyhow::Result<Self> {
        let log = server_log(pool).await?;
        let offset = std::fs::metadata(&log)
            .with_context(|| format!("--profile reads PostgreSQL's log {}", log.display()))?
            .len();
        let database = database_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            log,
            offset,
            database,
        })
    }

    /// What each kind of statement cost since [`Self::start`], per request of `requests`.
    pub fn finish(self, requests: usize) -> anyhow::Result<Profile> {
        self.read(requests).context("reading the statement profile")
    }

    fn read(self, requests: usize) -> anyhow::Result<Profile> {
        let mut file = std::fs::File::open(&self.log)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let kinds = read_log(&text, &self.database);
        if kinds.is_empty() {
            bail!(
                "no statement of {} in {}",
                self.database,
                self.log.display()
            );
        }
        Ok(Profile {
            kinds,
            requests: requests.max(1),
        })
    }
}

async fn server_log(pool: &PgPool) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("ERASURE_BENCH_PG_LOG") {
        return Ok(path.into());
    }
    // Debian's clusters log to /var/log/postgresql/postgresql-<major>-<cluster>.log.
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    Ok(format!(
        "/var/log/postgresql/postgresql-{}-main.log",
        version / 10_000
    )
    .into())
}

/// Each kind of statement of `database` in a stretch of the server's log: how often it ran,
/// its server time, and the CPU its backends spent on its messages.
///
/// With the log line prefix `%m [%p] %q%u@%d ` (Debian's), a backend logs a message's
/// duration line and then, on the lines that follow, its usage statistics (`! <user> s user,
/// <system> s system, …`); both are matched by the backend's process id, the CPU going to the
/// statement that backend logged last.
fn read_log(text: &str, database: &str) -> BTreeMap<String, Kind> {
    let marker = format!("@{database} LOG:  ");
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    // Per backend: the kind it logged last, and whether its statistics come next.
    let mut last: HashMap<&str, (String, bool)> = HashMap::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if let Some((head, rest)) = line.split_once(&marker) {
            let pid = head.split_once(" [").and_then(|(_, p)| p.split_once(']'));
            current = pid.map(|(p, _)| p);
            let Some(pid) = current else { continue };
            if let Some(duration) = rest.strip_prefix("duration: ") {
                let Some((ms, what)) = duration.split_once(" ms  ") else {
                    continue;
                };
                let Ok(ms) = ms.parse::<f64>() else { continue };
                let (phase, sql) = what.split_once(": ").unwrap_or((what, ""));
                let key = normalize(sql);
                let kind = kinds.entry(key.clone()).or_default();
                kind.ms += ms;
                // A statement runs once per `execute` (extended protocol) or `statement`
                // (simple).
                if phase.starts_with("execute") || phase.starts_with("statement") {
                    kind.count += 1;
                }
                last.insert(pid, (key, false));
            } else if rest.ends_with("STATISTICS")
                && let Some(entry) = last.get_mut(pid)
            {
                entry.1 = true;
            }
            continue;
        }
        // A continuation line of the entry above it.
        let Some(pid) = current else { continue };
        let Some(seconds) = usage_seconds(line) else {
            continue;
        };
        if let Some((key, true)) = last.get(pid) {
            kinds.entry(key.clone()).or_default().cpu_ms += seconds * 1000.0;
            last.insert(pid, (key.clone(), false));
        }
    }
    kinds
}

/// The user and system seconds of a usage line: `!\t0.000040 s user, 0.000003 s system, …`.
fn usage_seconds(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('!')?.trim_start();
    let (user, rest) = rest.split_once(" s user, ")?;
    let (system, _) = rest.split_once(" s system")?;
    Some(user.trim().parse::<f64>().ok()? + system.trim().parse::<f64>().ok()?)
}

/// The first words of a statement, whitespace folded: its kind.
fn normalize(sql: &str) -> String {
    let folded: Vec<&str> = sql.split_whitespace().collect();
    let text = folded.join(" ");
    text.chars().take(90).collect()
}

#[derive(Default)]
struct Kind {
    count: u64,
    ms: f64,
    /// CPU of its backends (user and system), when the log has it.
    cpu_ms: f64,
}

/// What each kind of statement cost, per request.
pub struct Profile {
    kinds: BTreeMap<String, Kind>,
    requests: usize,
}

impl Profile {
    pub fn per_request_count(&self) -> f64 {
        self.kinds.values().map(|k| k.count as f64).sum::<f64>() / self.requests as f64
    }

    pub fn per_request_ms(&self) -> f64 {
        self.kinds.values().map(|k| k.ms).sum::<f64>() / self.requests as f64
    }

    pub fn per_request_cpu_ms(&self) -> f64 {
        self.kinds.values().map(|k| k.cpu_ms).sum::<f64>() / self.requests as f64
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.requests as f64;
        let mut kinds: Vec<(&String, &Kind)> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cpu_ms.total_cmp(&a.1.cpu_ms));
        writeln!(
            f,
            "{:>9} {:>9} {:>9} {:>9}  statement (server time and backend CPU, per request, over {} requests)",
            "count/req", "ms/req", "ms each", "cpu ms/req", self.requests
        )?;
        for (sql, k) in kinds.iter().take(30) {
            writeln!(
                f,
                "{:>9.2} {:>9.3} {:>9.3} {:>10.3}  {sql}",
                k.count as f64 / n,
                k.ms / n,
                k.ms / (k.count.max(1) as f64),
                k.cpu_ms / n
            )?;
        }
        write!(
            f,
            "{:>9.2} {:>9.3} {:>9} {:>10.3}  in all",
            self.per_request_count(),
            self.per_request_ms(),
            "",
            self.per_request_cpu_ms()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statements_cpu_is_the_statistics_its_backend_logs_after_it() {
        let log = "\
2026-12-01 19:16:12.001 UTC [101] postgres@bench LOG:  duration: 0.500 ms  execute s1: SELECT 1
2026-12-01 19:16:12.002 UTC [202] postgres@bench LOG:  duration: 2.000 ms  execute s2: DELETE FROM t
2026-12-01 19:16:12.003 UTC [101] postgres@bench LOG:  EXECUTE MESSAGE STATISTICS
2026-12-01 19:16:12.003 UTC [101] postgres@bench DETAIL:  ! system usage stats:
\t!\t0.000300 s user, 0.000100 s system, 0.000500 s elapsed
\t!\t[0.010000 s user, 0.000000 s system total]
2026-12-01 19:16:12.004 UTC [202] postgres@bench LOG:  EXECUTE MESSAGE STATISTICS
2026-12-01 19:16:12.004 UTC [202] postgres@bench DETAIL:  ! system usage stats:
\t!\t0.001500 s user, 0.000000 s system, 0.002000 s elapsed
2026-12-01 19:16:12.005 UTC [303] postgres@other LOG:  duration: 9.000 ms  execute s3: SELECT 2
2026-12-01 19:16:12.006 UTC [101] postgres@bench LOG:  duration: 0.100 ms  execute s1: SELECT 1
";
        let kinds = read_log(log, "bench");
        assert_eq!(kinds.len(), 2, "the other database's statement is not read");
        let select = &kinds["SELECT 1"];
        assert_eq!(select.count, 2);
        assert!((select.ms - 0.6).abs() < 1e-9);
        assert!(
            (select.cpu_ms - 0.4).abs() < 1e-9,
            "the running total line is not counted: {}",
            select.cpu_ms
        );
        assert!((kinds["DELETE FROM t"].cpu_ms - 1.5).abs() < 1e-9);
    }
}
