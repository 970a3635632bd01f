//! Telling a crash loop from every other reason a message comes back.
//!
//! RabbitMQ 3.10 counts in `x-delivery-count` every return of a quorum queue's message to the
//! queue, whatever its cause: the worker died working it (a crash loop, if it happens again
//! and again: the message must end in the dead-letter queue), or the worker's connection was
//! lost while it held it, working or only prefetched (its node died or restarted), or the
//! broker gave it to a consumer that no longer existed. The last one is measured here: when a
//! node comes back, its quorum queues' consumers that were only suspected down are made active
//! again, handed messages, found dead, and the messages returned, one count each, with no
//! worker of ours ever seeing them. None of these may dead-letter a healthy message, and a
//! count that only grows would: past `ERASURE_MAX_DELIVERIES` by the service, past
//! `x-delivery-limit` by the broker itself, with nothing recorded.
//!
//! So the count of crashes is not read from the broker: it is the number of times a worker
//! started working a redelivery of the message and died before that run ended.
//! - A redelivery's run is recorded in `erasure.redelivery_runs` before its work starts; the
//!   worker refreshes it while the work goes on and deletes it when the work ends, whatever the
//!   outcome ([`Run`]). A run that stops being refreshed is one whose worker died.
//! - A first delivery (no count, nothing carried), nearly every delivery, records nothing: the
//!   hot path stays free of writes. Hence the one presumption: a message that came back from
//!   its first delivery is presumed to have crashed there (it may have been a lost connection;
//!   the error is on the side of dead-lettering, by one).
//! - The verdict ([`judge`]): crashes = runs whose worker died + that first delivery. At
//!   `ERASURE_MAX_DELIVERIES` it is a crash loop, dead-lettered on the delivery after, as the
//!   setting always meant. Runs still refreshed may be a worker still finishing after losing
//!   its connection, or one that just died: the verdict waits until they end or go stale.
//! - A message whose broker count reaches the limit for other reasons is republished with its
//!   count carried in [`PRIOR_DELIVERIES`] (its later deliveries are still redeliveries) and
//!   the original acknowledged: the broker's count starts again, below `x-delivery-limit`.

use std::time::Duration;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{header_u64, message_id};
use crate::{
    retry::{self, Operation},
    store::redelivery_runs as runs,
};

/// Deliveries of earlier copies of a message that ended unsettled, carried when the service
/// republishes it (a hand back, or a reset of the broker's count).
pub const PRIOR_DELIVERIES: &str = "x-erasure-prior-deliveries";

/// How often a worker refreshes the run it is working.
const TICK: Duration = Duration::from_secs(2);
/// A run not refreshed for this long is one whose worker died: five ticks missed, so a slow
/// database round trip is not mistaken for a death.
const STALE: Duration = Duration::from_secs(10);

/// What the runner does with a delivery.
#[derive(Debug)]
pub enum Verdict {
    /// Work it; a redelivery's run is recorded, to be ended with [`Run::finish`].
    Execute(Option<Run>),
    /// Republish it carrying `unsettled` in [`PRIOR_DELIVERIES`] and acknowledge this
    /// delivery: its broker count reached the limit, though not through crashes.
    Republish { unsettled: u64 },
    /// It ended `crashes` deliveries with the worker gone: dead-letter it (then
    /// [`forget`] it).
    CrashLoop { deliveries: u64, crashes: u64 },
}

/// The verdict before any run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Execute,
    Republish,
    CrashLoop {
        crashes: u64,
    },
    /// Runs still alive could tip it into a crash loop if they are workers that just died:
    /// ask again once they have ended or gone stale.
    Wait,
}

/// The message as the runs name it: its id and a hash of its body (duplicates of a message
/// share it, and so their crashes). No personal data: ids are request, bot and slice ids,
/// and 64 bits of SHA-256 reveal nothing of the body.
pub fn key(props: &BasicProperties, data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    format!("{}:{}", message_id(props), hex::encode(&digest[..8]))
}

/// Deliveries of the message before this one that ended unsettled: the broker's count plus
/// those of earlier copies. Zero for a first delivery.
pub fn unsettled_before(props: &BasicProperties) -> u64 {
    header_u64(props, "x-delivery-count")
        .unwrap_or(0)
        .saturating_add(header_u64(props, PRIOR_DELIVERIES).unwrap_or(0))
}

/// The judgement on a redelivery whose message has `dead` runs that ended with their worker
/// gone and `alive` runs still refreshed, its broker count at `broker`, under
/// `ERASURE_MAX_DELIVERIES` = `max`. Its first delivery counts as one crash (see the module).
pub fn judge(dead: u64, alive: u64, broker: u64, max: u32) -> Judgement {
    let max = u64::from(max);
    let crashes = dead + 1;
    if crashes >= max {
        Judgement::CrashLoop { crashes }
    } else if crashes + alive >= max {
        Judgement::Wait
    } else if broker >= max {
        Judgement::Republish
    } else {
        Judgement::Execute
    }
}

/// The verdict on a delivery. A first delivery is worked at once, without a read or a write;
/// a redelivery reads its message's runs, waiting (at most [`STALE`] and a little) for those
/// still refreshed when they matter, and starts a run of its own when it is to be worked.
pub async fn verdict(
    pool: &PgPool,
    budget: Duration,
    props: &BasicProperties,
    data: &[u8],
    max: u32,
) -> Result<Verdict, sqlx::Error> {
    let unsettled = unsettled_before(props);
    if unsettled == 0 {
        return Ok(Verdict::Execute(None));
    }
    let broker = header_u64(props, "x-delivery-count").unwrap_or(0);
    let key = key(props, data);
    let deadline = tokio::time::Instant::now() + STALE + TICK;
    let judgement = loop {
        let (alive, dead) = retry::transient(budget, Operation::RedeliveryRuns, || {
            runs::count(pool, &key, STALE)
        })
        .await?;
        match judge(dead, alive, broker, max) {
            Judgement::Wait if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Still refreshed after a whole STALE: alive and working, not crashes.
            Judgement::Wait => break judge(dead, 0, broker, max),
            j => break j,
        }
    };
    Ok(match judgement {
        Judgement::CrashLoop { crashes } => Verdict::CrashLoop {
            deliveries: unsettled + 1,
            crashes,
        },
        Judgement::Republish => Verdict::Republish { unsettled },
        Judgement::Execute | Judgement::Wait => {
            Verdict::Execute(Some(Run::start(pool, budget, key).await?))
        }
    })
}

/// Forgets a message's runs once it is dead-lettered: a redrive starts it afresh.
pub async fn forget(pool: &PgPool, budget: Duration, props: &BasicProperties, data: &[u8]) {
    let key = key(props, data);
    let forgotten = retry::transient(budget, Operation::RedeliveryRuns, || {
        runs::forget(pool, &key)
    })
    .await;
    if let Err(e) = forgotten {
        tracing::warn!(error = %crate::store::describe(&e), "could not forget a message's runs");
    }
}

/// A redelivery being worked: recorded, and refreshed every [`TICK`] until [`Run::finish`].
#[derive(Debug)]
pub struct Run {
    pool: PgPool,
    budget: Duration,
    key: String,
    id: Uuid,
    ticker: JoinHandle<()>,
}

impl Run {
    async fn start(pool: &PgPool, budget: Duration, key: String) -> Result<Self, sqlx::Error> {
        let id = retry::transient(budget, Operation::RedeliveryRuns, || {
            runs::start(pool, &key)
        })
        .await?;
        let ticking = pool.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                // A missed refresh is harmless; five in a row make the run look dead.
                let _ = runs::touch(&ticking, id).await;
            }
        });
        Ok(Self {
            pool: pool.clone(),
            budget,
            key,
            id,
            ticker,
        })
    }

    /// Ends the run, its worker alive; `settled`: the message is done or dead-lettered, so
    /// every run of it is forgotten. The run is refreshed until the end is recorded, so a
    /// slow database never makes it look dead meanwhile.
    pub async fn finish(self, settled: bool) {
        let ended = retry::transient(self.budget, Operation::RedeliveryRuns, || async {
            if settled {
                runs::forget(&self.pool, &self.key).await
            } else {
                runs::end(&self.pool, self.id).await
            }
        })
        .await;
        if let Err(e) = ended {
            tracing::warn!(error = %crate::store::describe(&e), "could not end a redelivery's run: it will count as a crash");
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Headers for republishing a delivery whose `unsettled` predecessors must keep counting.
pub fn carried(unsettled: u64) -> FieldTable {
    let mut headers = FieldTable::default();
    if unsettled > 0 {
        headers.insert(
            PRIOR_DELIVERIES.into(),
            AMQPValue::LongLongInt(i64::try_from(unsettled).unwrap_or(i64::MAX)),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(count: Option<i64>, prior: Option<i64>) -> BasicProperties {
        let mut h = FieldTable::default();
        if let Some(c) = count {
            h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(c));
        }
        if let Some(p) = prior {
            h.insert(PRIOR_DELIVERIES.into(), AMQPValue::LongLongInt(p));
        }
        BasicProperties::default()
            .with_message_id("eud-1/st-1/0".into())
            .with_headers(h)
    }

    #[test]
    fn a_first_delivery_is_not_a_redelivery() {
        assert_eq!(unsettled_before(&props(None, None)), 0);
        assert_eq!(unsettled_before(&props(Some(0), None)), 0);
        assert_eq!(unsettled_before(&props(Some(2), Some(3))), 5);
    }

    #[test]
    fn every_delivery_killing_its_worker_is_dead_lettered_on_the_one_after_the_limit() {
        // Deliveries 1..=5 killed the worker (runs of 2..=5 recorded dead): the sixth is
        // dead-lettered, as ERASURE_MAX_DELIVERIES=5 always meant.
        assert_eq!(judge(3, 0, 4, 5), Judgement::Execute);
        assert_eq!(judge(4, 0, 5, 5), Judgement::CrashLoop { crashes: 5 });
    }

    #[test]
    fn returns_without_a_dead_run_never_make_a_crash_loop() {
        // Returned ten times by lost connections and consumers that were gone: no dead run.
        assert_eq!(judge(0, 0, 1, 2), Judgement::Execute);
        assert_eq!(judge(0, 0, 10, 5), Judgement::Republish);
        assert_eq!(judge(3, 0, 10, 5), Judgement::Republish);
    }

    #[test]
    fn runs_still_refreshed_are_waited_for_only_when_they_decide() {
        // One crash allowed before the limit: a run alive elsewhere could be the second.
        assert_eq!(judge(0, 1, 1, 2), Judgement::Wait);
        assert_eq!(judge(0, 1, 1, 5), Judgement::Execute);
        assert_eq!(judge(1, 3, 2, 5), Judgement::Wait);
    }

    #[test]
    fn one_delivery_allowed_means_no_redelivery_at_all() {
        assert_eq!(judge(0, 0, 1, 1), Judgement::CrashLoop { crashes: 1 });
    }

    #[test]
    fn the_key_is_the_message_id_and_a_hash_of_the_body() {
        let p = props(None, None);
        let k = key(
            &p,
            br#"{"requestId":"eud-1","userIds":["jane@example.com"]}"#,
        );
        assert!(k.starts_with("eud-1/st-1/0:"), "{k}");
        assert_eq!(k.len(), "eud-1/st-1/0:".len() + 16);
        assert!(!k.contains("jane"));
        assert_ne!(k, key(&p, b"another body"));
    }

    #[test]
    fn a_count_is_carried_only_when_there_is_one() {
        assert!(carried(0).inner().is_empty());
        let h = carried(3);
        assert_eq!(
            h.inner().get(PRIOR_DELIVERIES),
            Some(&AMQPValue::LongLongInt(3))
        );
    }
}
