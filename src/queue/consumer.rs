//! The consumer loop: connect, declare, consume with bounded prefetch and concurrency, and
//! start over with backoff when the connection is lost. Deliveries in flight when a connection
//! dies are redelivered by the broker; handlers are idempotent, so that costs only time.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::anyhow;
use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Topology;
use crate::retry;

/// What the consumer does with a delivery once its handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Settled: the database reflects it (done, continued, retried later or dead-lettered).
    Ack,
    /// Not settled and nothing to record: put it back on the queue.
    Requeue,
}

/// A delivery's content, as a handler sees it.
pub struct Message {
    pub data: Vec<u8>,
    pub props: BasicProperties,
}

/// A message handler. It is given the deliveries ready at once, up to [`Handler::batch`], so
/// that it can work them together, and answers one outcome per delivery, in order. `stop`
/// fires at shutdown: long work hands itself back instead of finishing.
pub trait Handler: Send + Sync + 'static {
    /// Most deliveries handed over together (1: one at a time).
    fn batch(&self) -> usize {
        1
    }

    fn handle(
        &self,
        messages: Vec<Message>,
        stop: CancellationToken,
    ) -> impl Future<Output = Vec<Outcome>> + Send;
}

pub struct ConsumerSpec {
    pub url: String,
    pub queue: String,
    pub name: &'static str,
    pub prefetch: u16,
    pub concurrency: usize,
    pub grace: Duration,
    pub topology: Topology,
    /// True while the consumer is attached to its queue (readiness, metrics).
    pub up: Arc<AtomicBool>,
}

/// Runs until `cancel` fires, then stops consuming, lets in-flight work finish within the
/// grace period, and returns.
pub async fn run<H: Handler>(spec: ConsumerSpec, handler: Arc<H>, cancel: CancellationToken) {
    let mut delays = retry::reconnect_delays();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        match session(&spec, &handler, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                spec.up.store(false, Ordering::SeqCst);
                metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(0.0);
                metrics::counter!("erasure_consumer_reconnects_total", "queue" => spec.name)
                    .increment(1);
                // A session that lasted is a new outage: start the backoff over.
                if started.elapsed() > Duration::from_secs(30) {
                    delays = retry::reconnect_delays();
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(queue = %spec.queue, error = %e, retry_in_ms = delay.as_millis() as u64, "consumer lost its connection");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn session<H: Handler>(
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = super::connect(&spec.url, spec.name).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    spec.topology.declare(&ch).await?;
    let tag = format!("erasure-{}-{}", spec.name, uuid::Uuid::new_v4());
    let mut consumer = ch
        .basic_consume(
            spec.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    spec.up.store(true, Ordering::SeqCst);
    metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(1.0);
    tracing::info!(queue = %spec.queue, "consuming");

    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    // Not a child of `cancel`: shutdown must give in-flight work the grace period first, and
    // only then tell it to hand itself back.
    let stop = CancellationToken::new();
    let result = loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let next = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            n = consumer.next() => n,
        };
        let mut batch = match next {
            Some(Ok(d)) => vec![d],
            Some(Err(e)) => break Err(anyhow!(e)),
            None => break Err(anyhow!("the broker cancelled the consumer")),
        };
        // The deliveries already here (up to the prefetch) go with the first: the handler
        // works them together. Nothing waits for more: a lone delivery is not delayed.
        while batch.len() < handler.batch() {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                Some(Some(Err(e))) => {
                    tracing::warn!(queue = %spec.queue, error = %e, "consumer error after a delivery");
                    break;
                }
                _ => break,
            }
        }
        tracker.spawn(settle_batch(
            handler.clone(),
            batch,
            stop.clone(),
            spec.name,
            permit,
        ));
    };
    spec.up.store(false, Ordering::SeqCst);
    metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(0.0);
    if result.is_ok() {
        // Shutdown: no new deliveries, then give in-flight work the grace period.
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        tracker.close();
        if tokio::time::timeout(spec.grace, tracker.wait())
            .await
            .is_err()
        {
            stop.cancel();
            tracing::warn!(queue = %spec.queue, "grace period over: handing in-flight work back");
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
    } else {
        stop.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    // Unsettled deliveries return to the queue when the channel closes.
    let _ = ch.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

/// Hands a batch of deliveries to the handler and settles each with its outcome.
async fn settle_batch<H: Handler>(
    handler: Arc<H>,
    batch: Vec<lapin::message::Delivery>,
    stop: CancellationToken,
    name: &'static str,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (messages, ackers): (Vec<Message>, Vec<lapin::Acker>) = batch
        .into_iter()
        .map(|d| {
            let message = Message {
                data: d.data,
                props: d.properties,
            };
            (message, d.acker)
        })
        .unzip();
    let outcomes = handler.handle(messages, stop).await;
    for (acker, outcome) in ackers.into_iter().zip(outcomes) {
        let settled = match outcome {
            Outcome::Ack => acker.ack(BasicAckOptions::default()).await,
            Outcome::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(e) = settled {
            // The channel is gone; the broker redelivers, and the handler is idempotent.
            tracing::warn!(queue = name, error = %e, "could not settle a delivery");
        }
    }
    drop(permit);
}
