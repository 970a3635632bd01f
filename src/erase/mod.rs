//! Erasing from the stores of the target catalog in bounded, idempotent batches.
//!
//! Each batch is one short transaction in its store's database: it deletes (or anonymizes) at
//! most `limit` rows of a root store, with the rows of its child stores that hang off them,
//! and counts what it did per store and bot in the same transaction, so the counts are exact
//! even when two workers run the same task at once. In the service's own database the counts
//! go straight to `erasure.task_rows`; in another database to its ledger, forwarded once to
//! the service's database ([`ledger`]).

mod batch;
pub mod ledger;
mod throttle;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
pub use throttle::Throttle;

use crate::{
    catalog::{
        Catalog, CatalogError, Problem, check,
        sql::{self, RootSql},
    },
    config::Config,
    domain::{BotId, PlatformUserId, RequestId},
    retry::Transient,
};

/// Whose rows a task message erases.
pub struct Target<'a> {
    pub request: &'a RequestId,
    pub bots: &'a [BotId],
    pub users: &'a [PlatformUserId],
    /// The state the request must be in for a batch to delete anything, checked in the
    /// batch's transaction: `in-progress` for a task (so that no batch starts after a
    /// cancel), `completed` for a verification's late rows.
    pub while_status: crate::domain::RequestStatus,
}

/// A database error, with the database it came from (`None`: the service's own).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DbError {
    pub database: Option<String>,
    pub error: sqlx::Error,
}

impl DbError {
    fn in_database(database: Option<&str>) -> impl Fn(sqlx::Error) -> Self + '_ {
        move |error| Self {
            database: database.map(str::to_string),
            error,
        }
    }
}

impl Transient for DbError {
    fn is_transient(&self) -> bool {
        self.error.is_transient()
    }
    fn describe(&self) -> String {
        match &self.database {
            Some(db) => format!("database {db}: {}", self.error.describe()),
            None => self.error.describe(),
        }
    }
}

/// Rows a batch erased from one store, per bot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreRows {
    /// The store's index in the catalog.
    pub store: usize,
    pub bots: Vec<BotId>,
    pub rows: Vec<i64>,
}

impl StoreRows {
    pub fn total(&self) -> u64 {
        self.rows.iter().sum::<i64>().max(0) as u64
    }
}

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Per store erased (the root and its descendants).
    pub stores: Vec<StoreRows>,
    /// No row of the users in the bots is left in the root store (as of the statement's
    /// snapshot), hence none in its descendants either.
    pub drained: bool,
}

impl Batch {
    /// What a batch of a request no longer in progress (cancelled) does: nothing, and its
    /// task has nothing left to do.
    pub fn cancelled() -> Self {
        Self {
            stores: Vec::new(),
            drained: true,
        }
    }
}

/// A root store with its statements.
struct Root {
    store: usize,
    sql: RootSql,
}

/// The catalog ready to erase: its statements, a pool per database, the HMAC's padded keys.
pub struct Targets {
    pub catalog: Arc<Catalog>,
    roots: Vec<Root>,
    main: PgPool,
    others: BTreeMap<String, PgPool>,
    /// Per further database: its ledger exists (created on first use, so that a database
    /// that was down when the process started works once it answers).
    ledgers: BTreeMap<String, tokio::sync::OnceCell<()>>,
    hmac: HmacPads,
}

/// Why the targets could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("checking the target catalog: {0}")]
    Database(String),
}

impl Targets {
    /// The catalog `ERASURE_TARGETS` names (or the built-in one) with a pool for each of its
    /// further databases, whose URL comes from the variable it names. Pools connect lazily: a
    /// database that is down at start only makes its tasks wait and retry.
    pub async fn connect(config: &Config, main: PgPool) -> Result<Self, TargetsError> {
        let catalog = Arc::new(load_catalog(config)?);
        let mut others = BTreeMap::new();
        for (name, var) in &catalog.databases {
            let problem = |message: String| {
                TargetsError::Catalog(CatalogError {
                    origin: catalog.source.clone(),
                    problems: vec![Problem::new(
                        None,
                        Some(&format!("databases.{name}.url_env")),
                        message,
                    )],
                })
            };
            let url = config
                .env
                .get(var)
                .ok_or_else(|| problem(format!("{var} is not set")))?;
            let pool = crate::store::connect(
                url,
                config.database.max_connections,
                config.database.statement_timeout,
            )
            .await
            .map_err(|e| problem(format!("{var} is not a usable PostgreSQL URL: {e:#}")))?;
            others.insert(name.clone(), pool);
        }
        Ok(Self::new(
            catalog,
            main,
            others,
            &config.keys.pii_hmac_key.bytes,
        ))
    }

    /// `others` holds a pool for every database the catalog declares.
    pub fn new(
        catalog: Arc<Catalog>,
        main: PgPool,
        others: BTreeMap<String, PgPool>,
        hmac_key: &[u8],
    ) -> Self {
        let roots = catalog
            .roots()
            .map(|(i, _)| Root {
                store: i,
                sql: sql::root(&catalog, i),
            })
            .collect();
        Self {
            ledgers: others
                .keys()
                .map(|k| (k.clone(), tokio::sync::OnceCell::new()))
                .collect(),
            catalog,
            roots,
            main,
            others,
            hmac: HmacPads::new(hmac_key),
        }
    }

    /// The root stores, by index in the catalog: each is erased on its own, with its children.
    pub fn roots(&self) -> impl Iterator<Item = usize> + '_ {
        self.roots.iter().map(|r| r.store)
    }

    /// The pool of a database (`None`: the service's own).
    pub fn pool(&self, database: Option<&str>) -> &PgPool {
        database
            .and_then(|d| self.others.get(d))
            .unwrap_or(&self.main)
    }

    /// The service's own database.
    pub fn main(&self) -> &PgPool {
        &self.main
    }

    /// Every other database, by name.
    pub fn others(&self) -> &BTreeMap<String, PgPool> {
        &self.others
    }

    /// Erases one batch of at most `limit` rows of root store `root` (by catalog index) and
    /// what hangs off them. `first`: the delivery's first batch of this store.
    pub async fn batch(
        &self,
        root: usize,
        target: &Target<'_>,
        limit: i64,
        first: bool,
    ) -> Result<Batch, DbError> {
        let (r, database) = self.root(root).await?;
        batch::run(self, r, database, target, limit, first)
            .await
            .map_err(DbError::in_database(database))
    }

    /// Erases the rows of several targets, which share their bots, from the leaf store `root`
    /// in one batch, when they fit in it: each target's rows, in order; `None` when they do
    /// not, or `root` has children or is anonymized (then each target is erased on its own).
    pub async fn together(
        &self,
        root: usize,
        group: &[&Target<'_>],
        limit: i64,
    ) -> Result<Option<Vec<StoreRows>>, DbError> {
        let (r, database) = self.root(root).await?;
        batch::together(self, r, database, group, limit)
            .await
            .map_err(DbError::in_database(database))
    }

    /// Root store `root` with its database, that database's ledger ready.
    async fn root(&self, root: usize) -> Result<(&Root, Option<&str>), DbError> {
        let r = self
            .roots
            .iter()
            .find(|r| r.store == root)
            .expect("a root of this catalog");
        let database = self.catalog.stores[root].database.as_deref();
        if let Some(db) = database {
            self.ensure_ledger(db)
                .await
                .map_err(DbError::in_database(database))?;
        }
        Ok((r, database))
    }

    async fn ensure_ledger(&self, database: &str) -> Result<(), sqlx::Error> {
        self.ledgers[database]
            .get_or_try_init(|| ledger::ensure(self.pool(Some(database))))
            .await
            .map(drop)
    }

    /// Brings the counts of every other database's ledger for `bots` of `request` into the
    /// service's database (idempotent): after a crash between a batch's commit there and its
    /// count's here, the count is not lost.
    pub async fn sync_counts(&self, request: &RequestId, bots: &[BotId]) -> Result<(), DbError> {
        for (name, pool) in &self.others {
            self.ensure_ledger(name)
                .await
                .map_err(DbError::in_database(Some(name)))?;
            let entries = ledger::entries(pool, request, bots)
                .await
                .map_err(DbError::in_database(Some(name)))?;
            ledger::forward(&self.main, name, &entries)
                .await
                .map_err(DbError::in_database(None))?;
        }
        Ok(())
    }
}

impl Targets {
    /// Checks the catalog against its databases (creating the count ledger in each further
    /// one). A database that does not answer within `wait` is reported as unreachable rather
    /// than failing the check.
    pub async fn check(&self, wait: Duration) -> Result<check::Report, TargetsError> {
        let mut reach: BTreeMap<Option<&str>, Result<&PgPool, String>> = BTreeMap::new();
        let pools = std::iter::once((None, &self.main))
            .chain(self.others.iter().map(|(n, p)| (Some(n.as_str()), p)));
        for (name, pool) in pools {
            let answered = tokio::time::timeout(wait, async {
                if name.is_some() {
                    ledger::ensure(pool).await?;
                }
                crate::store::sql::query("SELECT 1")
                    .execute(crate::store::sql::on(pool))
                    .await
                    .map(drop)
            })
            .await;
            let state = match answered {
                Ok(Ok(())) => Ok(pool),
                Ok(Err(e)) => Err(crate::store::describe(&e)),
                Err(_) => Err(format!("no answer within {wait:?}")),
            };
            reach.insert(name, state);
        }
        let lookup = |db: Option<&str>| match reach.get(&db) {
            Some(Ok(pool)) => check::Reach::Pool(pool),
            Some(Err(why)) => check::Reach::Unreachable(why.clone()),
            None => check::Reach::Unreachable("not declared".into()),
        };
        check::check(&self.catalog, lookup)
            .await
            .map_err(|e| TargetsError::Database(crate::store::describe(&e)))
    }
}

/// The catalog `ERASURE_TARGETS` names, or the built-in one.
pub fn load_catalog(config: &Config) -> Result<Catalog, CatalogError> {
    match &config.targets.path {
        Some(path) => Catalog::load(path),
        None => Ok(Catalog::built_in()),
    }
}

/// The two padded keys of HMAC-SHA256 (RFC 2104) under `ERASURE_PII_HMAC_KEY`, bound to the
/// anonymize statements, which compute the HMAC with PostgreSQL's own `sha256()`.
struct HmacPads {
    inner: Vec<u8>,
    outer: Vec<u8>,
}

impl HmacPads {
    fn new(key: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        const BLOCK: usize = 64;
        let mut block = if key.len() > BLOCK {
            Sha256::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        block.resize(BLOCK, 0);
        Self {
            inner: block.iter().map(|b| b ^ 0x36).collect(),
            outer: block.iter().map(|b| b ^ 0x5c).collect(),
        }
    }
}

/// Opens `connections` connections to each database and runs each root store's batch
/// statement once on each with no users (they match and change nothing), so that the
/// connections exist and have the tables, indexes and catalog entries the deletes need cached
/// before the first task arrives. A fresh PostgreSQL connection pays for both on first use,
/// measured at 10–20 ms of database CPU per connection: for a worker that has just started
/// that lands on its first tasks, the moment they are measured and the moment the platform
/// least needs it. Errors are ignored: a cold connection still works.
pub async fn warm_up(targets: &Targets, connections: usize) {
    // Behind a pooler in transaction mode a held connection has no server of its own to warm.
    if crate::store::sql::pooled() {
        return;
    }
    let runs = targets.roots.iter().map(|root| async move {
        let database = targets.catalog.stores[root.store].database.as_deref();
        let pool = targets.pool(database);
        let mut held = Vec::with_capacity(connections);
        for _ in 0..connections {
            // pooler: direct mode only (returned above behind a pooler)
            match pool.acquire().await {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        for conn in &mut held {
            batch::warm(root, conn).await;
        }
    });
    futures_util::future::join_all(runs).await;
}

/// Keeps the gauge `erasure_delete_batch_max_seconds`: the longest single batch this process
/// has run, the figure that says whether batches stay short enough to be gentle (the
/// histogram's buckets only bound it).
fn record_longest(took: Duration) {
    static LONGEST_NANOS: AtomicU64 = AtomicU64::new(0);
    let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
    let longest = LONGEST_NANOS.fetch_max(nanos, Ordering::Relaxed).max(nanos);
    metrics::gauge!("erasure_delete_batch_max_seconds").set(longest as f64 / 1e9);
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    use super::HmacPads;

    /// What the anonymize statement computes in SQL, computed the same way here.
    fn sql_hmac(pads: &HmacPads, message: &[u8]) -> Vec<u8> {
        let inner = Sha256::digest([pads.inner.as_slice(), message].concat());
        Sha256::digest([pads.outer.as_slice(), inner.as_slice()].concat()).to_vec()
    }

    #[test]
    fn the_padded_keys_give_the_standard_hmac() {
        for key in [&b"short key"[..], &[7u8; 64][..], &[9u8; 100][..]] {
            let pads = HmacPads::new(key);
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            mac.update(b"u-123");
            assert_eq!(
                sql_hmac(&pads, b"u-123"),
                mac.finalize().into_bytes().to_vec()
            );
        }
    }
}
