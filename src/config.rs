//! Configuration: every setting comes from an environment variable with a documented default,
//! and is validated once at start with an error that names the variable.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

/// A configuration value that could not be used, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub amqp_url: String,
    pub queue_prefix: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Largest accepted HTTP body.
    pub max_body_bytes: usize,
    pub max_user_ids: usize,
    pub max_bot_ids: usize,
    pub max_id_bytes: usize,
    /// Rows per delete statement.
    pub batch_size: i64,
    /// Batches a task works per delivery before it publishes its continuation.
    pub batches_per_slice: u32,
    /// Bots whose tasks one task message works together.
    pub bots_per_message: usize,
    /// Deliveries each worker consumer may hold unacknowledged.
    pub prefetch: u16,
    /// Tasks a worker process executes at once.
    pub worker_concurrency: usize,
    /// Ceiling on rows deleted per second by one worker process (0: none).
    pub max_rows_per_second: u64,
    /// Ceiling on rows deleted per second by all workers together, shared through the
    /// database (0: none).
    pub max_rows_per_second_total: u64,
    /// Deliveries of one message before the service dead-letters it itself.
    pub max_deliveries: u32,
    pub outbox_poll: Duration,
    pub shutdown_grace: Duration,
    pub pii_retention: Duration,
    pub retention_sweep: Duration,
    /// Key for HMACs that replace identifiers after the retention window.
    pub pii_hmac_key: Secret,
    /// Key sealing HS256 client secrets at rest.
    pub secret_key: Secret,
    /// Requests per second each app may make to the intake (0: unlimited).
    pub rate_limit_per_app: u32,
    pub rate_limit_burst: u32,
    pub db_max_connections: u32,
    pub statement_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret value: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret {
    pub bytes: Vec<u8>,
    /// False when the built-in development key is in use.
    pub configured: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.configured {
            "***"
        } else {
            "(development key)"
        })
    }
}

/// One documented setting: name, default, meaning. The README's table and `erasure config`
/// are generated from the same list, so they cannot drift.
pub struct Setting {
    pub var: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub secret: bool,
}

const fn s(var: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        var,
        default,
        help,
        secret: false,
    }
}

pub const SETTINGS: &[Setting] = &[
    s(
        "ERASURE_HTTP_ADDR",
        "127.0.0.1:8080",
        "listen address of the HTTP intake",
    ),
    s(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/erasure",
        "PostgreSQL URL; the database is created if missing",
    ),
    s(
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "RabbitMQ URL",
    ),
    s(
        "ERASURE_QUEUE_PREFIX",
        "",
        "prefix of every exchange and queue name (e.g. `p.`)",
    ),
    s("ERASURE_LOG_FORMAT", "text", "`text` or `json`"),
    s(
        "ERASURE_LOG",
        "info,sqlx=warn,lapin=warn",
        "log filter (tracing `EnvFilter` syntax, e.g. `debug` or `info,erasure::worker=debug`)",
    ),
    s(
        "ERASURE_MAX_BODY_BYTES",
        "1048576",
        "largest HTTP body accepted (413 above)",
    ),
    s(
        "ERASURE_MAX_USER_IDS",
        "1000",
        "most `userIds` entries in one request",
    ),
    s(
        "ERASURE_MAX_BOT_IDS",
        "1000",
        "most `botIds` entries in one request",
    ),
    s(
        "ERASURE_MAX_ID_BYTES",
        "256",
        "longest identifier, in bytes",
    ),
    s(
        "ERASURE_BATCH_SIZE",
        "65000",
        "rows per delete statement (one statement deletes from one store; a task message runs one per store at once)",
    ),
    s(
        "ERASURE_BATCHES_PER_SLICE",
        "50",
        "delete statements per store one delivery runs before handing over to a continuation message",
    ),
    s(
        "ERASURE_BOTS_PER_MESSAGE",
        "50",
        "bots whose tasks one task message works together, in shared delete statements; an unfinished message splits in two at each continuation, so replicas share a long request (1: one message per bot)",
    ),
    s(
        "ERASURE_PREFETCH",
        "8",
        "unacknowledged deliveries per consumer",
    ),
    s(
        "ERASURE_WORKER_CONCURRENCY",
        "4",
        "tasks executed at once per worker process",
    ),
    s(
        "ERASURE_MAX_ROWS_PER_SECOND",
        "0",
        "ceiling on rows deleted per second per worker process (0: none)",
    ),
    s(
        "ERASURE_MAX_ROWS_PER_SECOND_TOTAL",
        "0",
        "ceiling on rows deleted per second by all workers together (0: none)",
    ),
    s(
        "ERASURE_MAX_DELIVERIES",
        "5",
        "deliveries of one message before it is dead-lettered",
    ),
    s(
        "ERASURE_OUTBOX_POLL_MS",
        "500",
        "how often the outbox relay looks for unpublished messages",
    ),
    s(
        "ERASURE_SHUTDOWN_GRACE_SECONDS",
        "25",
        "time in-flight work gets to finish after SIGTERM",
    ),
    s(
        "ERASURE_PII_RETENTION",
        "30d",
        "how long identifiers are kept after a request settles (`30d`, `12h`, `90s`)",
    ),
    s(
        "ERASURE_RETENTION_SWEEP_SECONDS",
        "60",
        "how often the retention job runs",
    ),
    Setting {
        var: "ERASURE_PII_HMAC_KEY",
        default: "(development key)",
        help: "key of the HMAC that replaces identifiers; 32+ bytes, hex or text",
        secret: true,
    },
    Setting {
        var: "ERASURE_SECRET_KEY",
        default: "(development key)",
        help: "key sealing HS256 app secrets at rest; 64 hex digits",
        secret: true,
    },
    s(
        "ERASURE_RATE_LIMIT_PER_APP",
        "50",
        "intake requests per second per app (0: unlimited)",
    ),
    s(
        "ERASURE_RATE_LIMIT_BURST",
        "100",
        "burst allowance of the per-app rate limit",
    ),
    s(
        "ERASURE_DB_MAX_CONNECTIONS",
        "16",
        "PostgreSQL pool size per process",
    ),
    s(
        "ERASURE_STATEMENT_TIMEOUT_MS",
        "30000",
        "PostgreSQL statement_timeout of the service's sessions",
    ),
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_map(&vars)
    }

    /// Builds the configuration from a map of variables (the environment, or a test's own).
    pub fn from_map(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| -> Option<&str> {
            vars.get(var).map(String::as_str).filter(|v| !v.is_empty())
        };
        let default = |var: &'static str| -> &'static str {
            SETTINGS
                .iter()
                .find(|s| s.var == var)
                .map(|s| s.default)
                .unwrap_or("")
        };
        let raw = |var: &'static str| -> String { get(var).unwrap_or(default(var)).to_string() };
        fn bad(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
            ConfigError {
                var,
                value: value.to_string(),
                problem: problem.into(),
            }
        }
        fn num<T>(var: &'static str, v: &str, min: T) -> Result<T, ConfigError>
        where
            T: std::str::FromStr + PartialOrd + std::fmt::Display,
        {
            let n: T = v
                .trim()
                .parse()
                .map_err(|_| bad(var, v, "not a whole number"))?;
            if n < min {
                return Err(bad(var, v, format!("must be at least {min}")));
            }
            Ok(n)
        }

        let http = raw("ERASURE_HTTP_ADDR");
        let http_addr = http.parse().map_err(|_| {
            bad(
                "ERASURE_HTTP_ADDR",
                &http,
                "not an address like 127.0.0.1:8080",
            )
        })?;
        let database_url = raw("DATABASE_URL");
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(bad(
                "DATABASE_URL",
                "(hidden)",
                "must start with postgres://",
            ));
        }
        let amqp_url = raw("AMQP_URL");
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(bad("AMQP_URL", "(hidden)", "must start with amqp://"));
        }
        let queue_prefix = raw("ERASURE_QUEUE_PREFIX");
        if queue_prefix.len() > 100
            || !queue_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        {
            return Err(bad(
                "ERASURE_QUEUE_PREFIX",
                &queue_prefix,
                "at most 100 characters of letters, digits, '.', '_', '-', ':'",
            ));
        }
        let log = raw("ERASURE_LOG_FORMAT");
        let log_format = match log.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(bad("ERASURE_LOG_FORMAT", &log, "must be `text` or `json`")),
        };
        let log_filter = raw("ERASURE_LOG");
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(bad("ERASURE_LOG", &log_filter, e.to_string()));
        }
        let n =
            |var: &'static str, min: u64| -> Result<u64, ConfigError> { num(var, &raw(var), min) };
        let ms = |var: &'static str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(n(var, 1)?))
        };
        let retention_raw = raw("ERASURE_PII_RETENTION");
        let pii_retention = parse_duration(&retention_raw).ok_or_else(|| {
            bad(
                "ERASURE_PII_RETENTION",
                &retention_raw,
                "not a duration like 30d, 12h, 15m or 90s",
            )
        })?;
        let prefetch = n("ERASURE_PREFETCH", 1)?;
        if prefetch > u64::from(u16::MAX) {
            return Err(bad(
                "ERASURE_PREFETCH",
                &raw("ERASURE_PREFETCH"),
                "must be at most 65535",
            ));
        }
        let batch_size = n("ERASURE_BATCH_SIZE", 1)?;
        if batch_size > 100_000 {
            return Err(bad(
                "ERASURE_BATCH_SIZE",
                &raw("ERASURE_BATCH_SIZE"),
                "must be at most 100000",
            ));
        }
        Ok(Self {
            http_addr,
            database_url,
            amqp_url,
            queue_prefix,
            log_format,
            log_filter,
            max_body_bytes: n("ERASURE_MAX_BODY_BYTES", 64)? as usize,
            max_user_ids: n("ERASURE_MAX_USER_IDS", 1)? as usize,
            max_bot_ids: n("ERASURE_MAX_BOT_IDS", 1)? as usize,
            max_id_bytes: n("ERASURE_MAX_ID_BYTES", 1)? as usize,
            batch_size: batch_size as i64,
            batches_per_slice: n("ERASURE_BATCHES_PER_SLICE", 1)? as u32,
            bots_per_message: n("ERASURE_BOTS_PER_MESSAGE", 1)? as usize,
            prefetch: prefetch as u16,
            worker_concurrency: n("ERASURE_WORKER_CONCURRENCY", 1)? as usize,
            max_rows_per_second: n("ERASURE_MAX_ROWS_PER_SECOND", 0)?,
            max_rows_per_second_total: n("ERASURE_MAX_ROWS_PER_SECOND_TOTAL", 0)?,
            max_deliveries: n("ERASURE_MAX_DELIVERIES", 1)? as u32,
            outbox_poll: ms("ERASURE_OUTBOX_POLL_MS")?,
            shutdown_grace: Duration::from_secs(n("ERASURE_SHUTDOWN_GRACE_SECONDS", 0)?),
            pii_retention,
            retention_sweep: Duration::from_secs(n("ERASURE_RETENTION_SWEEP_SECONDS", 1)?),
            pii_hmac_key: key(
                get("ERASURE_PII_HMAC_KEY"),
                "ERASURE_PII_HMAC_KEY",
                b"erasure-dev-pii-hmac-key",
            )?,
            secret_key: key(
                get("ERASURE_SECRET_KEY"),
                "ERASURE_SECRET_KEY",
                b"erasure-dev-secret-key",
            )?,
            rate_limit_per_app: n("ERASURE_RATE_LIMIT_PER_APP", 0)? as u32,
            rate_limit_burst: n("ERASURE_RATE_LIMIT_BURST", 1)? as u32,
            db_max_connections: n("ERASURE_DB_MAX_CONNECTIONS", 2)? as u32,
            statement_timeout: ms("ERASURE_STATEMENT_TIMEOUT_MS")?,
        })
    }

    /// The effective configuration, secrets masked, for `erasure config`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mask_url = |u: &str| match (u.find("://"), u.rfind('@')) {
            (Some(a), Some(b)) if b > a => format!("{}://***@{}", &u[..a], &u[b + 1..]),
            _ => u.to_string(),
        };
        vec![
            ("ERASURE_HTTP_ADDR", self.http_addr.to_string()),
            ("DATABASE_URL", mask_url(&self.database_url)),
            ("AMQP_URL", mask_url(&self.amqp_url)),
            ("ERASURE_QUEUE_PREFIX", self.queue_prefix.clone()),
            (
                "ERASURE_LOG_FORMAT",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            ("ERASURE_LOG", self.log_filter.clone()),
            ("ERASURE_MAX_BODY_BYTES", self.max_body_bytes.to_string()),
            ("ERASURE_MAX_USER_IDS", self.max_user_ids.to_string()),
            ("ERASURE_MAX_BOT_IDS", self.max_bot_ids.to_string()),
            ("ERASURE_MAX_ID_BYTES", self.max_id_bytes.to_string()),
            ("ERASURE_BATCH_SIZE", self.batch_size.to_string()),
            (
                "ERASURE_BATCHES_PER_SLICE",
                self.batches_per_slice.to_string(),
            ),
            (
                "ERASURE_BOTS_PER_MESSAGE",
                self.bots_per_message.to_string(),
            ),
            ("ERASURE_PREFETCH", self.prefetch.to_string()),
            (
                "ERASURE_WORKER_CONCURRENCY",
                self.worker_concurrency.to_string(),
            ),
            (
                "ERASURE_MAX_ROWS_PER_SECOND",
                self.max_rows_per_second.to_string(),
            ),
            (
                "ERASURE_MAX_ROWS_PER_SECOND_TOTAL",
                self.max_rows_per_second_total.to_string(),
            ),
            ("ERASURE_MAX_DELIVERIES", self.max_deliveries.to_string()),
            (
                "ERASURE_OUTBOX_POLL_MS",
                self.outbox_poll.as_millis().to_string(),
            ),
            (
                "ERASURE_SHUTDOWN_GRACE_SECONDS",
                self.shutdown_grace.as_secs().to_string(),
            ),
            (
                "ERASURE_PII_RETENTION",
                format!("{}s", self.pii_retention.as_secs()),
            ),
            (
                "ERASURE_RETENTION_SWEEP_SECONDS",
                self.retention_sweep.as_secs().to_string(),
            ),
            ("ERASURE_PII_HMAC_KEY", format!("{:?}", self.pii_hmac_key)),
            ("ERASURE_SECRET_KEY", format!("{:?}", self.secret_key)),
            (
                "ERASURE_RATE_LIMIT_PER_APP",
                self.rate_limit_per_app.to_string(),
            ),
            (
                "ERASURE_RATE_LIMIT_BURST",
                self.rate_limit_burst.to_string(),
            ),
            (
                "ERASURE_DB_MAX_CONNECTIONS",
                self.db_max_connections.to_string(),
            ),
            (
                "ERASURE_STATEMENT_TIMEOUT_MS",
                self.statement_timeout.as_millis().to_string(),
            ),
        ]
    }
}

fn key(value: Option<&str>, var: &'static str, dev: &[u8]) -> Result<Secret, ConfigError> {
    match value {
        None => Ok(Secret {
            bytes: dev.to_vec(),
            configured: false,
        }),
        Some(v) => {
            let bytes = hex::decode(v.trim()).unwrap_or_else(|_| v.as_bytes().to_vec());
            if bytes.len() < 32 {
                return Err(ConfigError {
                    var,
                    value: "(hidden)".into(),
                    problem: "must be at least 32 bytes (64 hex digits)".into(),
                });
            }
            Ok(Secret {
                bytes,
                configured: true,
            })
        }
    }
}

/// Parses `30d`, `12h`, `15m`, `90s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = with(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_user_ids, 1000);
        assert_eq!(c.pii_retention, Duration::from_secs(30 * 86_400));
        assert!(!c.secret_key.configured);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = with(&[("ERASURE_BATCH_SIZE", "lots")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_BATCH_SIZE");
        let e = with(&[("ERASURE_PII_RETENTION", "3 weeks")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_PII_RETENTION");
        let e = with(&[("ERASURE_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_LOG_FORMAT");
        let e = with(&[("ERASURE_SECRET_KEY", "short")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_SECRET_KEY");
        assert!(!e.to_string().contains("short"), "secrets are not echoed");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("5w"), None);
    }

    #[test]
    fn every_setting_is_described() {
        let c = with(&[]).unwrap();
        let described: Vec<_> = c.describe().into_iter().map(|(k, _)| k).collect();
        let documented: Vec<_> = SETTINGS.iter().map(|s| s.var).collect();
        assert_eq!(described, documented);
    }
}
