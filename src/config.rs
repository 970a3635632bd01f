//! Configuration: every setting is declared once, in the [`settings!`] table below (its
//! variable, default, parser with its range, and meaning), grouped by the part of the service
//! that reads it. Parsing, `erasure config`, the README's table and the manifests' test all
//! derive from that one declaration, so they cannot drift.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

mod values;

pub use values::{AmqpUrls, CredentialUrl, DbPooler, LogFormat, QueuePrefix, Secret, Value};
use values::{
    amqp_urls, db_pooler, delay_list, duration, host_list, int, log_filter, log_format, millis,
    optional_path, optional_postgres_url, path_list, postgres_url, queue_prefix, seconds, secret,
    socket_addr, text,
};

/// A configuration value that could not be used, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    /// The value as given; `(hidden)` for secrets and URLs that may carry credentials.
    pub value: String,
    pub problem: String,
}

/// One declared setting, as the README table and `erasure config` show it.
#[derive(Debug)]
pub struct Setting {
    pub var: &'static str,
    /// The value used when the variable is unset or empty (`""`: none, or for a secret the
    /// built-in development key).
    pub default: &'static str,
    pub help: &'static str,
    /// The part of the service that reads it.
    pub group: &'static str,
    /// Never printed, never echoed in an error.
    pub secret: bool,
}

impl Setting {
    /// The default as the README's table shows it.
    pub fn shown_default(&self) -> String {
        match (self.default, self.secret) {
            ("", true) => "(development key)".into(),
            ("", false) => "(empty)".into(),
            (d, _) => format!("`{d}`"),
        }
    }
}

/// The variables of one process: the environment, or a test's own map.
struct Vars<'a>(&'a BTreeMap<String, String>);

impl Vars<'_> {
    fn read<T: Value>(
        &self,
        var: &'static str,
        default: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let raw = self
            .0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .unwrap_or(default);
        parse(raw).map_err(|problem| ConfigError {
            var,
            value: if T::SENSITIVE {
                "(hidden)".into()
            } else {
                raw.into()
            },
            problem,
        })
    }
}

/// Declares the settings: one group struct per part of the service, the [`Config`] holding
/// them, the [`SETTINGS`] list, and the effective values for `erasure config`. Each entry:
/// doc comment (the meaning), `field: Type = "VARIABLE", "default", parser;`.
macro_rules! settings {
    ($(
        $(#[doc = $gdoc:literal])*
        $group:ident: $Group:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $var:literal, $default:literal, $parse:expr;
            )*
        }
    )*) => {
        $(
            $(#[doc = $gdoc])*
            #[derive(Clone, Debug)]
            pub struct $Group {
                $( $(#[doc = $doc])* pub $field: $ty, )*
            }

            impl $Group {
                fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
                    Ok(Self { $( $field: vars.read($var, $default, $parse)?, )* })
                }
            }
        )*

        /// The whole configuration, one group per part of the service.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( pub $group: $Group, )*
            /// `ERASURE_*` variables that name no setting (misspelt, or from another
            /// version): logged at start so that a typo never silently takes a default.
            pub unknown: Vec<String>,
            /// Every variable of the process, for those the target catalog names (the URL of
            /// each further database).
            pub env: Environment,
        }

        /// The groups of settings (`Setting::group`) with their titles, in declaration order.
        pub const GROUPS: &[(&str, &str)] = &[
            $( (stringify!($group), <str>::trim_ascii(concat!($($gdoc),*))), )*
        ];

        /// Every setting, in declaration order.
        pub const SETTINGS: &[Setting] = &[
            $($(
                Setting {
                    var: $var,
                    default: $default,
                    help: <str>::trim_ascii(concat!($($doc),*)),
                    group: stringify!($group),
                    secret: <$ty as Value>::SECRET,
                },
            )*)*
        ];

        impl Config {
            fn read_groups(vars: &Vars<'_>) -> Result<Self, ConfigError> {
                Ok(Self {
                    $( $group: $Group::read(vars)?, )*
                    unknown: Vec::new(),
                    env: Environment(vars.0.clone()),
                })
            }

            /// The effective configuration, secrets and credentials masked, for
            /// `erasure config`: one line per setting, in [`SETTINGS`] order.
            pub fn describe(&self) -> Vec<(&'static str, String)> {
                vec![ $($( ($var, self.$group.$field.show()), )*)* ]
            }
        }
    };
}

settings! {
    /// The HTTP intake.
    http: HttpSettings {
        /// listen address of the HTTP intake
        addr: SocketAddr = "ERASURE_HTTP_ADDR", "127.0.0.1:8080", socket_addr;
        /// largest HTTP body accepted (413 above)
        max_body_bytes: usize = "ERASURE_MAX_BODY_BYTES", "1048576", int(64, 64 << 20);
        /// most `userIds` entries in one request
        max_user_ids: usize = "ERASURE_MAX_USER_IDS", "1000", int(1, 100_000);
        /// most `botIds` entries in one request
        max_bot_ids: usize = "ERASURE_MAX_BOT_IDS", "1000", int(1, 100_000);
        /// longest identifier, in bytes
        max_id_bytes: usize = "ERASURE_MAX_ID_BYTES", "256", int(1, 4096);
        /// intake requests per second per app (0: unlimited)
        rate_limit_per_app: u32 = "ERASURE_RATE_LIMIT_PER_APP", "50", int(0, 1_000_000);
        /// burst allowance of the per-app rate limit
        rate_limit_burst: u32 = "ERASURE_RATE_LIMIT_BURST", "100", int(1, 1_000_000);
    }

    /// PostgreSQL.
    database: DatabaseSettings {
        /// PostgreSQL URL; the database is created if missing
        url: CredentialUrl = "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/erasure", postgres_url;
        /// PostgreSQL pool size per process
        max_connections: u32 = "ERASURE_DB_MAX_CONNECTIONS", "16", int(2, 10_000);
        /// PostgreSQL statement_timeout of the service's sessions (through a pooler in transaction mode: of each transaction)
        statement_timeout: Duration = "ERASURE_STATEMENT_TIMEOUT_MS", "30000", millis(1, 86_400_000);
        /// `none`, or `transaction` when DATABASE_URL names a pooler in transaction mode (PgBouncer `pool_mode = transaction`): every statement is then unnamed and inside a transaction, and `erasure serve` never migrates through the pooler (see ERASURE_MIGRATION_DATABASE_URL)
        pooler: DbPooler = "ERASURE_DB_POOLER", "none", db_pooler;
        /// PostgreSQL URL that `erasure migrate` (and `erasure serve`, when set) applies migrations through, naming PostgreSQL itself, never a pooler in transaction mode (empty: DATABASE_URL; with ERASURE_DB_POOLER=transaction, `erasure serve` then only checks that every migration is applied)
        migration_url: Option<CredentialUrl> = "ERASURE_MIGRATION_DATABASE_URL", "", optional_postgres_url;
        /// how long a worker retries a database that fails transiently (lost connection, serialization failure) before handing its message back for later
        retry_budget: Duration = "ERASURE_DB_RETRY_SECONDS", "60", seconds(1, 3600);
    }

    /// RabbitMQ and the outbox.
    queue: QueueSettings {
        /// RabbitMQ URL, or the URLs of a cluster's nodes separated by commas: every connection goes to the first that answers and, when it is lost, to the next one that answers, round the list
        amqp_url: AmqpUrls = "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", amqp_urls;
        /// prefix of every exchange and queue name (e.g. `p.`)
        prefix: QueuePrefix = "ERASURE_QUEUE_PREFIX", "", queue_prefix;
        /// unacknowledged task messages per worker (the `erasure.tasks` queue; at least ERASURE_COALESCE for messages to be worked together): what a busy worker holds, other replicas cannot take
        prefetch: u16 = "ERASURE_PREFETCH", "128", int(1, u16::MAX);
        /// unacknowledged erase requests per worker (the `erasure.requests` queue): room for ERASURE_WORKER_CONCURRENCY groups of requests planned together (ERASURE_COALESCE) and the next one forming; a smaller prefetch keeps a burst's groups small
        requests_prefetch: u16 = "ERASURE_REQUESTS_PREFETCH", "512", int(1, u16::MAX);
        /// deliveries of one message that end with the worker gone (a crash loop) before it is dead-lettered; returns for other reasons (a lost connection, a node lost or back) do not count, but a first delivery that came back is presumed a crash (so 1 dead-letters any redelivery)
        max_deliveries: u32 = "ERASURE_MAX_DELIVERIES", "5", int(1, 1000);
        /// replicas of each quorum queue, set when the queue is declared (`x-quorum-initial-group-size`; the broker caps it at the cluster's size)
        quorum_size: u32 = "ERASURE_QUORUM_SIZE", "3", int(1, 100);
        /// how often the outbox relay looks for unpublished messages
        outbox_poll: Duration = "ERASURE_OUTBOX_POLL_MS", "500", millis(1, 3_600_000);
    }

    /// Workers: planning and the batched deletes.
    worker: WorkerSettings {
        /// rows per delete statement (one statement deletes from one store; a task message runs one per store at once)
        batch_size: i64 = "ERASURE_BATCH_SIZE", "65000", int(1, 100_000);
        /// delete statements per store one delivery runs before handing over to a continuation message
        batches_per_slice: u32 = "ERASURE_BATCHES_PER_SLICE", "50", int(1, 100_000);
        /// bots whose tasks one task message works together, in shared delete statements; an unfinished message splits in two at each continuation, so replicas share a long request (1: one message per bot)
        bots_per_message: usize = "ERASURE_BOTS_PER_MESSAGE", "50", int(1, 10_000);
        /// tasks executed at once per worker process
        concurrency: usize = "ERASURE_WORKER_CONCURRENCY", "4", int(1, 1024);
        /// most messages of a queue a worker takes at once when they are ready together, and works together: requests planned in one transaction, tasks erased in shared statements (1: one at a time)
        coalesce: usize = "ERASURE_COALESCE", "64", int(1, 1024);
        /// how long a worker waits for more erase requests to plan and erase together with the ones ready, while they keep arriving (a burst of one-user requests then shares its statements; 0: no wait)
        coalesce_wait: Duration = "ERASURE_COALESCE_WAIT_MS", "50", millis(0, 10_000);
        /// the wait for more erase requests ends as soon as none has arrived for this long, so that a light load is not held back
        coalesce_pause: Duration = "ERASURE_COALESCE_PAUSE_MS", "10", millis(1, 10_000);
        /// requests of at most this many users are erased by the delivery that plans them, without a task message, when their rows fit one statement per store (the rest, and larger requests, go through task messages; 0: always through task messages)
        erase_at_planning_users: usize = "ERASURE_ERASE_AT_PLANNING_USERS", "16", int(0, 1_000);
        /// ceiling on rows deleted per second per worker process (0: none)
        max_rows_per_second: u64 = "ERASURE_MAX_ROWS_PER_SECOND", "0", int(0, u64::MAX);
        /// ceiling on rows deleted per second by all workers together (0: none)
        max_rows_per_second_total: u64 = "ERASURE_MAX_ROWS_PER_SECOND_TOTAL", "0", int(0, u64::MAX);
        /// time in-flight work gets to finish after SIGTERM
        shutdown_grace: Duration = "ERASURE_SHUTDOWN_GRACE_SECONDS", "25", seconds(0, 3600);
        /// times a task is handed back because a further database of the target catalog does not answer (each after ERASURE_DB_RETRY_SECONDS) before it fails with the reason; the service's own database is waited for however long it is away
        max_handbacks: u32 = "ERASURE_MAX_HANDBACKS", "30", int(1, 100_000);
    }

    /// Personal data retention.
    retention: RetentionSettings {
        /// how long identifiers are kept after a request settles (`30d`, `12h`, `90s`)
        pii_retention: Duration = "ERASURE_PII_RETENTION", "30d", duration;
        /// how often the retention job runs
        sweep: Duration = "ERASURE_RETENTION_SWEEP_SECONDS", "60", seconds(1, 86_400);
    }

    /// Proof of erasure: verification and receipts.
    proof: ProofSettings {
        /// seconds after a request completes that the verification counts its erased users' rows again and erases late ones (0: at once; never later than `ERASURE_PII_RETENTION`, which needs it done)
        verify_after: Duration = "ERASURE_VERIFY_AFTER", "300", seconds(0, 31_536_000);
        /// how often the verification job looks for requests due for verification or for their receipt
        verify_sweep: Duration = "ERASURE_VERIFY_SWEEP_SECONDS", "5", seconds(1, 3600);
        /// `iss` claim of every receipt
        receipt_issuer: String = "ERASURE_RECEIPT_ISSUER", "erasure", text(256);
        /// Ed25519 key signing receipts: a PKCS#8 PEM file (empty: the built-in development key, which proves nothing)
        receipt_key_file: Option<PathBuf> = "ERASURE_RECEIPT_KEY_FILE", "", optional_path;
        /// earlier receipt keys, still published in `/.well-known/jwks.json`: PEM files (private or public), comma-separated
        receipt_previous_key_files: Vec<PathBuf> = "ERASURE_RECEIPT_PREVIOUS_KEY_FILES", "", path_list;
    }

    /// Callbacks: telling the caller a request settled.
    callback: CallbackSettings {
        /// hosts callbacks may reach over `http` and at any address, loopback and private included: `host` or `host:port`, comma-separated (empty: none)
        allow_hosts: Vec<String> = "ERASURE_CALLBACK_ALLOW_HOSTS", "", host_list;
        /// seconds before each retry of a callback not delivered, comma-separated, each jittered; after the last retry the callback is `failed`
        schedule: Vec<Duration> = "ERASURE_CALLBACK_SCHEDULE", "5,300,1800,7200,18000,36000,50400,72000,86400", delay_list;
    }

    /// What to erase.
    targets: TargetSettings {
        /// the target catalog: a TOML file naming the stores to erase, their keys, children, databases and actions (empty: the built-in catalog of `platform.conversations`, `platform.sessions`, `platform.analytics_events`)
        path: Option<PathBuf> = "ERASURE_TARGETS", "", optional_path;
    }

    /// Keys.
    keys: KeySettings {
        /// key of the HMAC that replaces identifiers; 32+ bytes, hex or text
        pii_hmac_key: Secret = "ERASURE_PII_HMAC_KEY", "", secret(b"erasure-dev-pii-hmac-key");
        /// key sealing HS256 app secrets at rest; 64 hex digits
        secret_key: Secret = "ERASURE_SECRET_KEY", "", secret(b"erasure-dev-secret-key");
    }

    /// Logs.
    log: LogSettings {
        /// `text` or `json`
        format: LogFormat = "ERASURE_LOG_FORMAT", "text", log_format;
        /// log filter (tracing `EnvFilter` syntax, e.g. `debug` or `info,erasure::worker=debug`)
        filter: String = "ERASURE_LOG", "info,sqlx=warn,lapin=warn", log_filter;
    }
}

/// The process's variables, by name. Shown by name only: values may be secrets.
#[derive(Clone, Default)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    /// A variable's value, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// `ERASURE_*` variables that are not service settings but are read by the command line
/// (`erasure token`, `erasure submit`, `erasure status`).
const CLI_VARIABLES: &[&str] = &["ERASURE_CLIENT_SECRET", "ERASURE_TOKEN"];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_map(&vars)
    }

    /// Builds the configuration from a map of variables (the environment, or a test's own).
    pub fn from_map(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = Self::read_groups(&Vars(vars))?;
        config.unknown = vars.keys().filter(|k| is_unknown(k)).cloned().collect();
        Ok(config)
    }

    /// One warning per unknown `ERASURE_*` variable, with the setting it most resembles.
    pub fn warnings(&self) -> Vec<String> {
        self.unknown
            .iter()
            .map(|var| match closest(var) {
                Some(known) => format!("{var} is not a setting (did you mean {known}?)"),
                None => format!("{var} is not a setting"),
            })
            .collect()
    }
}

fn is_unknown(var: &str) -> bool {
    // Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT…` for every Service in the
    // namespace; a Service named `erasure-…` produces `ERASURE_…` variables that are not ours.
    let service_link = var.ends_with("_SERVICE_HOST")
        || var.contains("_SERVICE_PORT")
        || var.ends_with("_PORT")
        || var.contains("_PORT_");
    var.starts_with("ERASURE_")
        && !service_link
        && !CLI_VARIABLES.contains(&var)
        && !SETTINGS.iter().any(|s| s.var == var)
}

/// The setting whose name is nearest to `var` (a misspelling), if any is near.
fn closest(var: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .map(|s| (edit_distance(var, s.var), s.var))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.http.max_user_ids, 1000);
        assert_eq!(c.retention.pii_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.queue.prefetch, 128);
        assert_eq!(c.queue.requests_prefetch, 512);
        assert!(!c.keys.secret_key.configured);
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = with(&[("ERASURE_BATCH_SIZE", "lots")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_BATCH_SIZE");
        assert!(e.to_string().contains("not a whole number"), "{e}");
        let e = with(&[("ERASURE_PII_RETENTION", "3 weeks")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_PII_RETENTION");
        let e = with(&[("ERASURE_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_LOG_FORMAT");
        let e = with(&[("ERASURE_SECRET_KEY", "short")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_SECRET_KEY");
        assert!(!e.to_string().contains("short"), "secrets are not echoed");
        let e = with(&[("DATABASE_URL", "mysql://u:hunter2@x/db")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "URLs are not echoed");
    }

    #[test]
    fn out_of_range_numbers_are_refused_not_truncated() {
        let e = with(&[("ERASURE_PREFETCH", "65536")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_PREFETCH");
        assert!(e.problem.contains("at most 65535"), "{e}");
        let e = with(&[("ERASURE_RATE_LIMIT_PER_APP", "4294967296")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_RATE_LIMIT_PER_APP");
        let e = with(&[("ERASURE_WORKER_CONCURRENCY", "0")]).unwrap_err();
        assert!(e.problem.contains("at least 1"), "{e}");
        let e = with(&[("ERASURE_BATCH_SIZE", "-5")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_BATCH_SIZE");
        assert_eq!(
            with(&[("ERASURE_PREFETCH", "65535")])
                .unwrap()
                .queue
                .prefetch,
            65535
        );
    }

    #[test]
    fn a_misspelt_setting_is_reported_with_the_right_name() {
        let c = with(&[
            ("ERASURE_BATCH_SIZ", "10"),
            ("ERASURE_CLIENT_SECRET", "x"),
            ("ERASURE_INTAKE_SERVICE_HOST", "10.0.0.1"),
            ("ERASURE_INTAKE_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(c.unknown, ["ERASURE_BATCH_SIZ"]);
        assert_eq!(c.worker.batch_size, 65_000, "the default still applies");
        assert_eq!(
            c.warnings(),
            ["ERASURE_BATCH_SIZ is not a setting (did you mean ERASURE_BATCH_SIZE?)"]
        );
    }

    #[test]
    fn several_broker_urls_are_read_in_order() {
        let c = with(&[(
            "AMQP_URL",
            "amqp://a:b@h1:5672/%2f, amqps://a:b@h2:5671/%2f",
        )])
        .unwrap();
        assert_eq!(
            c.queue.amqp_url.all(),
            ["amqp://a:b@h1:5672/%2f", "amqps://a:b@h2:5671/%2f"]
        );
        assert_eq!(
            c.queue.amqp_url.show(),
            "amqp://***@h1:5672/%2f,amqps://***@h2:5671/%2f"
        );
        assert!(with(&[("AMQP_URL", "amqp://h1/,http://h2/")]).is_err());
        assert!(with(&[("AMQP_URL", " , ")]).is_err());
    }

    #[test]
    fn the_quorum_size_defaults_to_three_and_is_ranged() {
        assert_eq!(with(&[]).unwrap().queue.quorum_size, 3);
        assert_eq!(
            with(&[("ERASURE_QUORUM_SIZE", "5")])
                .unwrap()
                .queue
                .quorum_size,
            5
        );
        let e = with(&[("ERASURE_QUORUM_SIZE", "0")]).unwrap_err();
        assert_eq!(e.var, "ERASURE_QUORUM_SIZE");
        assert!(e.problem.contains("at least 1"), "{e}");
        assert!(with(&[("ERASURE_QUORUM_SIZE", "101")]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("5w"), None);
    }

    #[test]
    fn every_setting_is_described_once_in_declaration_order() {
        let c = with(&[]).unwrap();
        let described: Vec<_> = c.describe().into_iter().map(|(k, _)| k).collect();
        let documented: Vec<_> = SETTINGS.iter().map(|s| s.var).collect();
        assert_eq!(described, documented);
        let mut unique = documented.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), documented.len(), "no variable twice");
        assert!(SETTINGS.iter().all(|s| !s.help.is_empty()));
        let secrets: Vec<_> = SETTINGS
            .iter()
            .filter(|s| s.secret)
            .map(|s| s.var)
            .collect();
        assert_eq!(secrets, ["ERASURE_PII_HMAC_KEY", "ERASURE_SECRET_KEY"]);
    }
}
