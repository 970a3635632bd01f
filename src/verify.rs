//! The verification job (DESIGN.md section 12): `ERASURE_VERIFY_AFTER` after a request
//! completes, it counts the erased users' rows left in the request's bots in every store of
//! the catalog. Rows found were written after the last batch: they are erased like any batch
//! (bounded, under both rows-per-second ceilings), counted as late, and the stores counted
//! again, until nothing is left; then the verification is recorded and the receipt sealed in
//! one transaction. A request whose receipt needs no verification (rejected) is only sealed.
//!
//! Durable: what is due is read from the database (a request's completion time), never kept
//! in memory, so a restart loses nothing. Replicas share the work through a lease per request
//! ([`crate::store::proofs`]); a verifier that dies leaves its lease to run out, and the next
//! one resumes from the baseline the first took, so the late count stays exact.
//!
//! The identifiers it needs (the erase set, the entries it hashes) are kept until it is done:
//! the retention job redacts a request only once it is proved, and a verification is due no
//! later than the end of the retention window.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    catalog::sql::{self, Statement},
    contract::StoreRows,
    domain::{BotId, PlatformUserId, RequestId},
    erase::{DbError, Target},
    receipt::{self, Proof},
    retry::{self, Operation},
    store::{
        self,
        proofs::{self, Claim, Due},
    },
    worker::{Ctx, job::JobError},
};

/// How long a claim lasts without being renewed; it is renewed before every batch, so only a
/// verifier that died (or lost its database) lets it run out.
const LEASE: Duration = Duration::from_secs(60);

/// Rounds of count-then-erase one claim runs before it concludes that rows keep arriving.
const ROUNDS: usize = 3;

/// Runs the job in a worker process until `cancel` fires.
pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let sweep = ctx.config.proof.verify_sweep;
    let grace = ctx.config.worker.shutdown_grace;
    let verifier = Verifier::new(ctx);
    // A step stops at its next batch on cancel and hands its claim back; one still waiting on
    // a database past the grace period is dropped, as a crash would (its lease runs out).
    let stopped = async {
        cancel.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(sweep) => {}
        }
        // A backlog (say, after downtime) is worked off one request after another.
        while !cancel.is_cancelled() {
            let step = tokio::select! {
                step = verifier.step(&cancel) => step,
                _ = &mut stopped => return,
            };
            match step {
                Ok(Proved::Idle) => break,
                Ok(_) => {}
                Err(e) => {
                    // Its lease runs out and it is taken again; nothing is lost meanwhile.
                    tracing::warn!(error = %e, "verification interrupted; it resumes when its lease runs out");
                    break;
                }
            }
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Proved {
    /// Nothing was due.
    Idle,
    /// A request whose receipt needs no verification was sealed.
    Sealed(RequestId),
    /// Nothing is left; the late rows it erased, per store.
    Verified {
        request_id: RequestId,
        late: StoreRows,
    },
    /// Stopped before the end (shutdown, rows still arriving, or another verifier took it
    /// over): resumed later.
    Deferred(RequestId),
}

/// The job's state: the statements counting what each store of the catalog still holds.
pub struct Verifier {
    ctx: Arc<Ctx>,
    remaining: Vec<Statement>,
}

impl Verifier {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let catalog = &ctx.targets.catalog;
        let remaining = (0..catalog.stores.len())
            .map(|i| sql::remaining(catalog, i))
            .collect();
        Self { ctx, remaining }
    }

    /// Claims the request that is due first, if any, and proves it. Tests call this.
    pub async fn step(&self, stop: &CancellationToken) -> Result<Proved, JobError> {
        let verified = Proof::Verified.statuses();
        let at_once = Proof::AtOnce.statuses();
        let config = &self.ctx.config;
        // No later than the end of the retention window: the retention job waits for it.
        let after = config
            .proof
            .verify_after
            .min(config.retention.pii_retention);
        let due = Due {
            verified: &verified,
            after,
            at_once: &at_once,
        };
        let Some(claim) = proofs::claim(&self.ctx.pool, due, LEASE).await? else {
            return Ok(Proved::Idle);
        };
        let span =
            tracing::info_span!("verify", request_id = %claim.request_id, attempt = claim.attempts);
        async {
            let proved = match Proof::of(claim.status) {
                Proof::Verified => self.verify(&claim, stop).await?,
                Proof::AtOnce | Proof::Unsettled => self.seal(&claim).await?,
            };
            if let Proved::Verified { late, .. } = &proved {
                tracing::info!(late_rows = late.total(), "verified: nothing left");
            }
            Ok(proved)
        }
        .instrument(span)
        .await
    }

    async fn seal(&self, claim: &Claim) -> Result<Proved, JobError> {
        let seal = receipt::seal(&self.ctx.targets.catalog.digest);
        let statuses = Proof::AtOnce.statuses();
        proofs::seal(&self.ctx.pool, &claim.request_id, &statuses, &seal).await?;
        Ok(Proved::Sealed(claim.request_id.clone()))
    }

    /// Counts, erases what it finds, counts again; records the verification once a count
    /// finds nothing.
    async fn verify(&self, claim: &Claim, stop: &CancellationToken) -> Result<Proved, JobError> {
        let ctx = &self.ctx;
        let id = &claim.request_id;
        let (users, bots) = self.retried(|| proofs::target(&ctx.pool, id)).await?;
        // Counts of other databases still in their ledgers belong before the baseline.
        ctx.targets.sync_counts(id, &bots).await?;
        self.retried(|| proofs::take_baseline(&ctx.pool, claim))
            .await?;
        let users = self.unprotected(users).await?;
        let target = Target {
            while_status: crate::domain::RequestStatus::Completed,
            request: id,
            bots: &bots,
            users: &users,
        };
        for round in 1..=ROUNDS {
            let left = self.count(&target).await?;
            if left.iter().all(|&n| n == 0) {
                return self.record(claim).await;
            }
            let rows: i64 = left.iter().sum();
            tracing::info!(rows, round, "rows of erased users found; erasing them");
            if !self.erase(claim, &target, &left, stop).await? {
                proofs::release(&ctx.pool, claim, Duration::ZERO).await?;
                return Ok(Proved::Deferred(id.clone()));
            }
            ctx.targets.sync_counts(id, &bots).await?;
        }
        tracing::warn!(
            rounds = ROUNDS,
            "rows of erased users keep arriving; verifying again later"
        );
        proofs::release(&ctx.pool, claim, LEASE).await?;
        Ok(Proved::Deferred(id.clone()))
    }

    /// The users still to erase: a user who has become protected since the request
    /// completed keeps the rows written since, as the rules say for any slice.
    async fn unprotected(
        &self,
        users: Vec<PlatformUserId>,
    ) -> Result<Vec<PlatformUserId>, JobError> {
        let protections = self
            .retried(|| store::platform::protections(store::sql::on(&self.ctx.pool), &users))
            .await?;
        if protections.is_empty() {
            return Ok(users);
        }
        let (kept, protected): (Vec<_>, Vec<_>) =
            users.into_iter().partition(|u| protections.of(u).is_none());
        tracing::warn!(
            users = protected.len(),
            "users protected since the request completed keep their rows"
        );
        Ok(kept)
    }

    /// Rows of the target each store of the catalog still holds.
    async fn count(&self, target: &Target<'_>) -> Result<Vec<i64>, JobError> {
        let catalog = &self.ctx.targets.catalog;
        let mut left = vec![0; catalog.stores.len()];
        if target.users.is_empty() || target.bots.is_empty() {
            return Ok(left);
        }
        for (i, statement) in self.remaining.iter().enumerate() {
            let database = catalog.database_of(i);
            let pool = self.ctx.targets.pool(database);
            let per_bot: Vec<(BotId, i64)> = self
                .retried(|| {
                    // Planned with its values, like the batches (see erase::batch).
                    store::sql::query_as(statement.clone())
                        .persistent(false)
                        .bind(target.users)
                        .bind(target.bots)
                        .fetch_all(store::sql::on(pool))
                })
                .await
                .map_err(|error| DbError {
                    database: database.map(str::to_string),
                    error,
                })?;
            left[i] = per_bot.iter().map(|(_, n)| n).sum();
        }
        Ok(left)
    }

    /// Erases the target's rows from every root store with rows left (in it or below it),
    /// batch by batch under both ceilings, renewing the lease before each. `false` when it
    /// stopped first: shutdown, or the claim went to another verifier.
    async fn erase(
        &self,
        claim: &Claim,
        target: &Target<'_>,
        left: &[i64],
        stop: &CancellationToken,
    ) -> Result<bool, JobError> {
        let ctx = &self.ctx;
        let catalog = &ctx.targets.catalog;
        let limit = ctx.throttle.batch(ctx.config.worker.batch_size);
        let roots: Vec<usize> = ctx
            .targets
            .roots()
            .filter(|&root| {
                let mut tree = catalog.descendants(root);
                tree.push(root);
                tree.iter().any(|&s| left[s] > 0)
            })
            .collect();
        for root in roots {
            let mut first = true;
            loop {
                if stop.is_cancelled()
                    || !proofs::renew(&ctx.pool, claim, LEASE).await?
                    || !ctx.throttle.reserve(&ctx.pool, limit as u64, stop).await?
                {
                    return Ok(false);
                }
                let batch = retry::transient(ctx.retry_budget(), Operation::DeleteBatch, || {
                    ctx.targets.batch(root, target, limit, first)
                })
                .await?;
                let rows = batch.stores.iter().map(|s| s.total()).sum();
                ctx.throttle.settle(&ctx.pool, limit as u64, rows).await?;
                first = false;
                if batch.drained {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Records the verification and seals the receipt.
    async fn record(&self, claim: &Claim) -> Result<Proved, JobError> {
        let ctx = &self.ctx;
        let catalog = &ctx.targets.catalog;
        let seal = receipt::seal(&catalog.digest);
        let late = retry::transient(ctx.retry_budget(), Operation::RecordProof, || {
            proofs::record_verified(&ctx.pool, claim, catalog, &seal)
        })
        .await?;
        Ok(match late {
            Some(late) => Proved::Verified {
                request_id: claim.request_id.clone(),
                late,
            },
            None => Proved::Deferred(claim.request_id.clone()),
        })
    }

    /// A read of the service's database, retried while it fails transiently.
    async fn retried<T, F, Fut>(&self, op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        retry::transient(self.ctx.retry_budget(), Operation::Verify, op).await
    }
}
