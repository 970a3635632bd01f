//! One batch of a root store, by its kind: a leaf deleted alone, a tree deleted children
//! first, or an anonymized store; each in one transaction with its counts.

use std::{
    collections::{HashMap, hash_map::Entry},
    time::Instant,
};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::{Batch, Root, StoreRows, Target, Targets, ledger, record_longest};
use crate::store::sql;
use crate::{
    catalog::sql::{AnonymizeSql, LeafSql, RootSql, TreeSql},
    domain::{BotId, PlatformUserId, RequestId},
    store::{self, requests, tasks},
};

pub(super) async fn run(
    targets: &Targets,
    root: &Root,
    database: Option<&str>,
    target: &Target<'_>,
    limit: i64,
    first: bool,
) -> Result<Batch, sqlx::Error> {
    let started = Instant::now();
    let on = On {
        targets,
        database,
        target,
    };
    let batch = match &root.sql {
        RootSql::Leaf(sql) if first => match on.leaf_at_once(root.store, sql, limit).await? {
            Some(each) => Batch {
                stores: vec![each],
                drained: true,
            },
            None => on.leaf(root.store, sql, limit).await?,
        },
        RootSql::Leaf(sql) => on.leaf(root.store, sql, limit).await?,
        RootSql::Tree(sql) => on.tree(root.store, sql, limit).await?,
        RootSql::Anonymize(sql) => on.anonymize(root.store, sql, limit).await?,
    };
    record_longest(started.elapsed());
    Ok(batch)
}

/// A batch's transaction, and where the batch runs in another database, the transaction of
/// the service's database that holds its requests in progress until it commits.
struct Guarded {
    tx: Transaction<'static, Postgres>,
    hold: Option<Transaction<'static, Postgres>>,
}

impl std::ops::Deref for Guarded {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }
}

impl Guarded {
    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// A batch's context: the targets, the database its store lives in, whose rows.
struct On<'a> {
    targets: &'a Targets,
    database: Option<&'a str>,
    target: &'a Target<'a>,
}

impl On<'_> {
    fn pool(&self) -> &PgPool {
        self.targets.pool(self.database)
    }

    /// A batch's transaction, once its requests are held in progress (see
    /// [`requests::hold_while`]); `None` when any is not (cancelled): the batch deletes
    /// nothing. In the service's own database the hold is in the batch's transaction and its
    /// commit does not wait for the disk (see [`store::begin_relaxed`]: the task's durable
    /// completion or continuation comes after it and makes it durable); in another database
    /// nothing later in that database would, so the commit is durable, and the hold is a
    /// transaction of the service's database kept open until the batch commits.
    async fn begin(
        &self,
        snapshot: bool,
        requests: &[&RequestId],
    ) -> Result<Option<Guarded>, sqlx::Error> {
        let (mut tx, hold) = match (self.database, snapshot) {
            (None, false) => (store::begin_relaxed(self.pool()).await?, None),
            (None, true) => (store::begin_relaxed_snapshot(self.pool()).await?, None),
            (Some(_), _) => {
                let mut hold = sql::begin(self.targets.main()).await?;
                if !requests::hold_while(&mut hold, requests, self.target.while_status).await? {
                    return Ok(None);
                }
                let tx = if snapshot {
                    sql::begin_snapshot(self.pool()).await?
                } else {
                    sql::begin(self.pool()).await?
                };
                (tx, Some(hold))
            }
        };
        if hold.is_none()
            && !requests::hold_while(&mut tx, requests, self.target.while_status).await?
        {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(Guarded { tx, hold }))
    }

    /// [`Self::count_and_commit`], then the batch those rows make.
    async fn commit_batch(
        &self,
        tx: Guarded,
        stores: Vec<StoreRows>,
        drained: bool,
    ) -> Result<Batch, sqlx::Error> {
        self.count_and_commit(tx, &stores).await?;
        Ok(Batch { stores, drained })
    }

    /// Counts `stores` (of this batch's request) in the batch's transaction and commits.
    async fn count_and_commit(&self, tx: Guarded, stores: &[StoreRows]) -> Result<(), sqlx::Error> {
        let rows: Vec<(&RequestId, &StoreRows)> =
            stores.iter().map(|s| (self.target.request, s)).collect();
        self.count_for_requests_and_commit(tx, &rows).await
    }

    /// Counts rows of several requests in the batch's transaction and commits: in the
    /// service's database straight to the tasks' counts; elsewhere to that database's ledger,
    /// then forwarded.
    async fn count_for_requests_and_commit(
        &self,
        guarded: Guarded,
        rows: &[(&RequestId, &StoreRows)],
    ) -> Result<(), sqlx::Error> {
        let Guarded { mut tx, hold } = guarded;
        let catalog = &self.targets.catalog;
        let counted: Vec<tasks::Counted<'_>> = rows
            .iter()
            .filter(|(_, s)| !s.bots.is_empty())
            .map(|(request, s)| tasks::Counted {
                request,
                store: &catalog.stores[s.store].name,
                action: catalog.stores[s.store].action.name(),
                bots: &s.bots,
                rows: &s.rows,
            })
            .collect();
        let Some(database) = self.database else {
            tasks::count_rows(&mut tx, &counted).await?;
            return tx.commit().await;
        };
        let entries = ledger::record(&mut tx, &counted).await?;
        tx.commit().await?;
        if let Some(hold) = hold {
            hold.commit().await?;
        }
        // Lost here (the service's database away), the count waits in the ledger for
        // `Targets::sync_counts`, which runs before the task can complete.
        if let Err(e) = ledger::forward(self.targets.main(), database, &entries).await {
            tracing::warn!(error = %store::describe(&e), database, "count left in the ledger for later");
        }
        Ok(())
    }

    /// Deletes one batch of a leaf store.
    ///
    /// The delivery's first batch of a store tries plain SQL's way first ([`Self::at_once`]):
    /// measured on 60,000 scattered conversations, 120 ms, where the batch statement's two
    /// passes over the heap (pick the addresses, then delete by address) and its `RETURNING`
    /// took 150-180.
    async fn leaf(&self, store: usize, sql: &LeafSql, limit: i64) -> Result<Batch, sqlx::Error> {
        let Some(mut tx) = self.begin(false, &[self.target.request]).await? else {
            return Ok(Batch::cancelled());
        };
        // Not a prepared statement: planned with its values each time, the user list becomes
        // a constant, and PostgreSQL re-checks each deleted row's user against a hash of it
        // instead of a linear scan of up to 1,000 ids (a generic plan of a cached statement
        // does the latter: measured 1.5x the CPU of the whole statement for 500 users).
        let (bots, rows, drained): (Vec<BotId>, Vec<i64>, bool) = sql::query_as(sql.batch.clone())
            .persistent(false)
            .bind(self.target.users)
            .bind(self.target.bots)
            .bind(limit)
            .fetch_one(&mut *tx)
            .await?;
        let stores = vec![StoreRows { store, bots, rows }];
        self.commit_batch(tx, stores, drained).await
    }

    /// Plain SQL's way, when all the target's rows fit in one batch (see [`Self::at_once`]).
    /// The rows, or `None` when there are more than `limit`.
    async fn leaf_at_once(
        &self,
        store: usize,
        sql: &LeafSql,
        limit: i64,
    ) -> Result<Option<StoreRows>, sqlx::Error> {
        Ok(
            match self.at_once(store, sql, &[self.target], limit).await? {
                AtOnce::Erased(mut each) => each.pop(),
                // Not in progress any more: nothing to erase, nothing left to do.
                AtOnce::Cancelled => Some(StoreRows {
                    store,
                    ..StoreRows::default()
                }),
                AtOnce::TooMany => None,
            },
        )
    }

    /// Several requests' targets, sharing their bots, in one count and one delete when all
    /// their rows fit in one batch (`None` when they do not, or one of the requests is no
    /// longer in progress: nothing is deleted then, and each is worked, and checked, alone).
    /// Each row is counted for the first target that names its user. Returns each target's
    /// rows, in order.
    async fn leaf_together(
        &self,
        store: usize,
        sql: &LeafSql,
        targets: &[&Target<'_>],
        limit: i64,
    ) -> Result<Option<Vec<StoreRows>>, sqlx::Error> {
        Ok(match self.at_once(store, sql, targets, limit).await? {
            AtOnce::Erased(each) => Some(each),
            AtOnce::Cancelled | AtOnce::TooMany => None,
        })
    }

    /// Plain SQL's way for the rows of `targets` (which share their bots) in a leaf store: it
    /// counts them per user and bot through the index, and when they fit in the batch deletes
    /// them with one plain `DELETE`, in one pass of a bitmap scan, without `RETURNING`. The
    /// count, taken in the same REPEATABLE READ snapshot as the DELETE, is exact for what the
    /// DELETE removes (a concurrent change to one of those rows makes it fail with a
    /// serialization error, which is retried, rather than skip the row). Each row is counted
    /// for the first target that names its user.
    ///
    /// Measured on 20 one-user requests of 20 bots (2,355 scattered conversations): 10 ms for
    /// the DELETE and 2 for the count, where one statement picking the rows' addresses, then
    /// deleting by address and returning each row's user to split the counts, took 27.
    async fn at_once(
        &self,
        store: usize,
        sql: &LeafSql,
        targets: &[&Target<'_>],
        limit: i64,
    ) -> Result<AtOnce, sqlx::Error> {
        // Each user's target: the first that names them.
        let mut owners: HashMap<&PlatformUserId, usize> = HashMap::new();
        let mut users: Vec<&PlatformUserId> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            for user in t.users {
                if let Entry::Vacant(e) = owners.entry(user) {
                    e.insert(i);
                    users.push(user);
                }
            }
        }
        let bots = targets[0].bots;
        let held: Vec<&RequestId> = targets.iter().map(|t| t.request).collect();
        let Some(mut tx) = self.begin(true, &held).await? else {
            return Ok(AtOnce::Cancelled);
        };
        // Not prepared statements: planned with their values each time, the user list becomes
        // a constant (see `leaf`).
        let counts: Vec<(PlatformUserId, BotId, i64)> = sql::query_as(sql.count.clone())
            .persistent(false)
            .bind(&users)
            .bind(bots)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
        if total > limit {
            tx.rollback().await?;
            return Ok(AtOnce::TooMany);
        }
        let deleted = if total == 0 {
            0
        } else {
            sql::query(sql.delete_all.clone())
                .persistent(false)
                .bind(&users)
                .bind(bots)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        if deleted != total as u64 {
            // Not expected (one snapshot for both); counting by `RETURNING` is exact regardless.
            tracing::warn!(
                counted = total,
                deleted,
                "delete and count disagree; batching instead"
            );
            tx.rollback().await?;
            return Ok(AtOnce::TooMany);
        }
        let mut each: Vec<StoreRows> = targets
            .iter()
            .map(|_| StoreRows {
                store,
                ..StoreRows::default()
            })
            .collect();
        for (user, bot, n) in counts {
            let Some(&i) = owners.get(&user) else {
                continue;
            };
            let rows = &mut each[i];
            match rows.bots.iter().position(|b| *b == bot) {
                Some(k) => rows.rows[k] += n,
                None => {
                    rows.bots.push(bot);
                    rows.rows.push(n);
                }
            }
        }
        let counted: Vec<(&RequestId, &StoreRows)> =
            targets.iter().map(|t| t.request).zip(&each).collect();
        self.count_for_requests_and_commit(tx, &counted).await?;
        Ok(AtOnce::Erased(each))
    }

    /// Deletes one batch of a store with children: locks up to `limit` of its rows, deletes
    /// what hangs off them deepest first, then the rows themselves, so that the platform's
    /// foreign keys hold at every statement and every commit. The lock keeps a new child from
    /// being attached to a row about to go (the platform's insert waits, then fails its own
    /// foreign key check, as it would had the row been deleted first).
    async fn tree(&self, store: usize, sql: &TreeSql, limit: i64) -> Result<Batch, sqlx::Error> {
        let Some(mut tx) = self.begin(false, &[self.target.request]).await? else {
            return Ok(Batch::cancelled());
        };
        let picked: Vec<String> = sql::query_scalar(sql.pick.clone())
            .persistent(false)
            .bind(self.target.users)
            .bind(self.target.bots)
            .bind(limit)
            .fetch_one(&mut *tx)
            .await?;
        let drained = (picked.len() as i64) < limit;
        let mut stores = Vec::with_capacity(sql.descendants.len() + 1);
        if !picked.is_empty() {
            for (descendant, statement) in &sql.descendants {
                let (bots, rows): (Vec<BotId>, Vec<i64>) = sql::query_as(statement.clone())
                    .bind(&picked)
                    .fetch_one(&mut *tx)
                    .await?;
                stores.push(StoreRows {
                    store: *descendant,
                    bots,
                    rows,
                });
            }
            let (bots, rows): (Vec<BotId>, Vec<i64>) = sql::query_as(sql.delete.clone())
                .persistent(false)
                .bind(self.target.users)
                .bind(self.target.bots)
                .bind(&picked)
                .fetch_one(&mut *tx)
                .await?;
            stores.push(StoreRows { store, bots, rows });
        }
        self.commit_batch(tx, stores, drained).await
    }

    /// Overwrites the declared columns of up to `limit` rows; the user column among them, so
    /// that the rows no longer match and a second run finds nothing.
    async fn anonymize(
        &self,
        store: usize,
        sql: &AnonymizeSql,
        limit: i64,
    ) -> Result<Batch, sqlx::Error> {
        let Some(mut tx) = self.begin(false, &[self.target.request]).await? else {
            return Ok(Batch::cancelled());
        };
        let mut query = sql::query_as(sql.batch.clone())
            .persistent(false)
            .bind(self.target.users)
            .bind(self.target.bots)
            .bind(limit);
        if sql.keyed {
            let pads = &self.targets.hmac;
            query = query.bind(&pads.inner).bind(&pads.outer);
        }
        let (bots, rows, drained): (Vec<BotId>, Vec<i64>, bool) = query.fetch_one(&mut *tx).await?;
        let stores = vec![StoreRows { store, bots, rows }];
        self.commit_batch(tx, stores, drained).await
    }
}

/// How [`On::at_once`] ended.
enum AtOnce {
    /// Each target's rows, in order.
    Erased(Vec<StoreRows>),
    /// A request is no longer in progress: nothing was deleted.
    Cancelled,
    /// More rows than the batch holds: nothing was deleted.
    TooMany,
}

/// Runs a root's first statement with a user who does not exist (see `super::warm_up`).
pub(super) async fn warm(root: &Root, conn: &mut PgConnection) {
    let none = vec![String::new()];
    let statements = match &root.sql {
        RootSql::Leaf(sql) => vec![sql.batch.clone(), sql.count.clone()],
        RootSql::Tree(sql) => vec![sql.pick.clone()],
        RootSql::Anonymize(_) => Vec::new(),
    };
    for sql in statements {
        let _ = sql::query(sql)
            .persistent(false)
            .bind(&none)
            .bind(&none)
            .bind(1_i64)
            .execute(&mut *conn)
            .await;
    }
}

/// Erases the rows of several targets, which share their bots, from a leaf store in one
/// batch when they fit in it (see [`On::leaf_at_once`]); `None` when they do not, or the store
/// is not a leaf.
pub(super) async fn together(
    targets: &Targets,
    root: &Root,
    database: Option<&str>,
    group: &[&Target<'_>],
    limit: i64,
) -> Result<Option<Vec<StoreRows>>, sqlx::Error> {
    let RootSql::Leaf(sql) = &root.sql else {
        return Ok(None);
    };
    let started = Instant::now();
    let on = On {
        targets,
        database,
        target: group[0],
    };
    let rows = on.leaf_together(root.store, sql, group, limit).await?;
    record_longest(started.elapsed());
    Ok(rows)
}
