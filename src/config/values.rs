//! The types settings parse into, their parsers (each with its range), and how
//! `erasure config` shows them (secrets masked, credentials cut out of URLs).

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// A newtype over a `String` that reads as the `str` it holds.
macro_rules! derefs_to_str {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A setting's value: how it is shown by `erasure config`, and whether it is kept out of
/// errors and the ConfigMap.
pub trait Value {
    /// A secret: masked everywhere and kept in the Kubernetes Secret.
    const SECRET: bool = false;
    /// Never echoed in a configuration error (secrets, and URLs that may carry credentials).
    const SENSITIVE: bool = Self::SECRET;
    fn show(&self) -> String;
}

/// `Debug` shows what `erasure config` shows: never a secret, never a URL's credentials.
macro_rules! debug_as_shown {
    ($($t:ty),*) => {
        $(impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.show())
            }
        })*
    };
}
debug_as_shown!(Secret, CredentialUrl, AmqpUrls);

macro_rules! shown_as_text {
    ($($t:ty),*) => { $(impl Value for $t { fn show(&self) -> String { self.to_string() } })* };
}
shown_as_text!(u16, u32, u64, i64, usize, SocketAddr, String);

impl Value for Duration {
    fn show(&self) -> String {
        if self.subsec_millis() == 0 {
            format!("{}s", self.as_secs())
        } else {
            format!("{}ms", self.as_millis())
        }
    }
}

impl Value for Vec<PathBuf> {
    fn show(&self) -> String {
        let paths: Vec<String> = self.iter().map(|p| p.display().to_string()).collect();
        paths.join(",")
    }
}

impl Value for Vec<String> {
    fn show(&self) -> String {
        self.join(",")
    }
}

impl Value for Vec<Duration> {
    fn show(&self) -> String {
        let secs: Vec<String> = self.iter().map(|d| d.as_secs().to_string()).collect();
        secs.join(",")
    }
}

impl Value for Option<PathBuf> {
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "(built-in)".into(), |p| p.display().to_string())
    }
}

impl Value for Option<CredentialUrl> {
    const SENSITIVE: bool = true;
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "(DATABASE_URL)".into(), |u| u.show())
    }
}

/// A key: never printed by `Debug` or `erasure config`.
#[derive(Clone)]
pub struct Secret {
    pub bytes: Vec<u8>,
    /// False when the built-in development key is in use.
    pub configured: bool,
}

impl Value for Secret {
    const SECRET: bool = true;
    fn show(&self) -> String {
        if self.configured {
            "***".into()
        } else {
            "(development key)".into()
        }
    }
}

/// A URL that may carry a password: shown as `scheme://***@host…`.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialUrl(String);

derefs_to_str!(CredentialUrl);

impl Value for CredentialUrl {
    const SENSITIVE: bool = true;
    fn show(&self) -> String {
        mask(&self.0)
    }
}

fn mask(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***@{}", &url[..a], &url[b + 1..]),
        _ => url.to_string(),
    }
}

/// One or more RabbitMQ URLs, comma-separated, tried in order.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls(Vec<String>);

impl AmqpUrls {
    /// Every URL, in the order given.
    pub fn all(&self) -> &[String] {
        &self.0
    }
    /// The first URL.
    pub fn primary(&self) -> &str {
        &self.0[0]
    }
}

impl Value for AmqpUrls {
    const SENSITIVE: bool = true;
    fn show(&self) -> String {
        self.0.iter().map(|u| mask(u)).collect::<Vec<_>>().join(",")
    }
}

/// The prefix of every exchange and queue name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueuePrefix(String);

derefs_to_str!(QueuePrefix);

impl Value for QueuePrefix {
    fn show(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Value for LogFormat {
    fn show(&self) -> String {
        match self {
            Self::Text => "text".into(),
            Self::Json => "json".into(),
        }
    }
}

/// What sits between the service and PostgreSQL (`ERASURE_DB_POOLER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbPooler {
    /// PostgreSQL itself (or a pooler in session mode): named prepared statements, session
    /// settings.
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`): every statement
    /// unnamed and inside a transaction, settings per transaction.
    Transaction,
}

impl Value for DbPooler {
    fn show(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Transaction => "transaction".into(),
        }
    }
}

/// A whole number in `min..=max`, parsed into its own type (never truncated).
pub fn int<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    move |raw| {
        let trimmed = raw.trim();
        if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err("not a whole number".into());
        }
        let n: T = trimmed
            .parse()
            .map_err(|_| format!("must be at most {max}"))?;
        if n < min {
            Err(format!("must be at least {min}"))
        } else if n > max {
            Err(format!("must be at most {max}"))
        } else {
            Ok(n)
        }
    }
}

pub fn millis(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    let n = int(min, max);
    move |raw| n(raw).map(Duration::from_millis)
}

pub fn seconds(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    let n = int(min, max);
    move |raw| n(raw).map(Duration::from_secs)
}

pub fn duration(raw: &str) -> Result<Duration, String> {
    super::parse_duration(raw).ok_or_else(|| "not a duration like 30d, 12h, 15m or 90s".into())
}

pub fn socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not an address like 127.0.0.1:8080".into())
}

pub fn postgres_url(raw: &str) -> Result<CredentialUrl, String> {
    credential_url(raw, &["postgres://", "postgresql://"])
}

pub fn credential_url(raw: &str, schemes: &[&str]) -> Result<CredentialUrl, String> {
    let raw = raw.trim();
    if schemes.iter().any(|s| raw.starts_with(s)) {
        Ok(CredentialUrl(raw.to_string()))
    } else {
        Err(format!("must start with {}", schemes.join(" or ")))
    }
}

pub fn amqp_urls(raw: &str) -> Result<AmqpUrls, String> {
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| credential_url(u, &["amqp://", "amqps://"]).map(|u| u.0))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("every URL {e}"))?;
    if urls.is_empty() {
        return Err("names no URL".into());
    }
    Ok(AmqpUrls(urls))
}

pub fn queue_prefix(raw: &str) -> Result<QueuePrefix, String> {
    let ok = raw.len() <= 100
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if ok {
        Ok(QueuePrefix(raw.to_string()))
    } else {
        Err("at most 100 characters of letters, digits, '.', '_', '-', ':'".into())
    }
}

pub fn log_format(raw: &str) -> Result<LogFormat, String> {
    match raw.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("must be `text` or `json`".into()),
    }
}

pub fn db_pooler(raw: &str) -> Result<DbPooler, String> {
    match raw.trim() {
        "none" => Ok(DbPooler::None),
        "transaction" => Ok(DbPooler::Transaction),
        _ => Err("must be `none` or `transaction`".into()),
    }
}

/// A PostgreSQL URL, or nothing (empty).
pub fn optional_postgres_url(raw: &str) -> Result<Option<CredentialUrl>, String> {
    match raw.trim() {
        "" => Ok(None),
        url => postgres_url(url).map(Some),
    }
}

pub fn log_filter(raw: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(raw)
        .map(|_| raw.to_string())
        .map_err(|e| e.to_string())
}

/// A key of 32 bytes or more (hex, or text); unset: the built-in development key `dev`.
pub fn secret(dev: &'static [u8]) -> impl Fn(&str) -> Result<Secret, String> {
    move |raw| {
        if raw.is_empty() {
            return Ok(Secret {
                bytes: dev.to_vec(),
                configured: false,
            });
        }
        let bytes = hex::decode(raw.trim()).unwrap_or_else(|_| raw.as_bytes().to_vec());
        if bytes.len() < 32 {
            return Err("must be at least 32 bytes (64 hex digits)".into());
        }
        Ok(Secret {
            bytes,
            configured: true,
        })
    }
}

/// A file's path; empty: none.
pub fn optional_path(raw: &str) -> Result<Option<PathBuf>, String> {
    let raw = raw.trim();
    Ok((!raw.is_empty()).then(|| PathBuf::from(raw)))
}

/// Files' paths, comma-separated; empty: none.
pub fn path_list(raw: &str) -> Result<Vec<PathBuf>, String> {
    Ok(raw
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect())
}

/// Text of 1 to `max` bytes without control characters, as given.
pub fn text(max: usize) -> impl Fn(&str) -> Result<String, String> {
    move |raw| {
        if raw.trim().is_empty() || raw.len() > max || raw.chars().any(char::is_control) {
            Err(format!(
                "must be 1 to {max} bytes of text without control characters"
            ))
        } else {
            Ok(raw.to_string())
        }
    }
}

/// Hosts, `host` or `host:port`, comma-separated, lowercased; empty: none.
pub fn host_list(raw: &str) -> Result<Vec<String>, String> {
    let hosts: Vec<String> = raw
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    match hosts
        .iter()
        .find(|h| h.len() > 261 || h.contains(['/', '@', ' ', '?', '#']))
    {
        Some(_) => Err("must be hosts (`host` or `host:port`), comma-separated".into()),
        None => Ok(hosts),
    }
}

/// Delays in whole seconds (0 to 7 days each), comma-separated, at least one.
pub fn delay_list(raw: &str) -> Result<Vec<Duration>, String> {
    let delays: Result<Vec<Duration>, _> = raw
        .split(',')
        .map(|d| match d.trim().parse::<u64>() {
            Ok(s) if s <= 7 * 86_400 => Ok(Duration::from_secs(s)),
            _ => Err(()),
        })
        .collect();
    match delays {
        Ok(d) if !d.is_empty() && d.len() <= 100 => Ok(d),
        _ => Err(
            "must be 1 to 100 delays in whole seconds (at most 604800 each), comma-separated"
                .into(),
        ),
    }
}
