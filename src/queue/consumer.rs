//! The consumer loop: connect to a node that answers, declare, consume with bounded prefetch
//! and concurrency, and start over on the next node with backoff when the connection is lost.
//! Deliveries in flight when a connection dies are redelivered by the broker; handlers are
//! idempotent, so that costs only time ([`super::redelivery`] keeps it from counting as a
//! crash).

use std::{
    collections::VecDeque,
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
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Brokers, Topology, header_u64};
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

    /// How long to wait for more deliveries to hand over with the ones ready, while they
    /// keep arriving (`None`: hand over what is ready, at once).
    fn linger(&self) -> Option<Linger> {
        None
    }

    fn handle(
        &self,
        messages: Vec<Message>,
        stop: CancellationToken,
    ) -> impl Future<Output = Vec<Outcome>> + Send;
}

/// A wait for more deliveries before handing over a batch that is not full: it ends at
/// `most` after the first, or as soon as none has arrived for `pause` (a light load then
/// waits no longer than `pause`; a burst fills its batches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linger {
    pub most: Duration,
    pub pause: Duration,
}

impl Linger {
    /// When to stop waiting for the next delivery: `pause` from now, but never past the
    /// batch's `deadline`.
    fn until(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        deadline.min(tokio::time::Instant::now() + self.pause)
    }
}

pub struct ConsumerSpec {
    pub brokers: Brokers,
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
    // The node to try first: the head of the list, then the one after whichever failed.
    let mut from = 0;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let (node, e) = match session(&spec, &handler, &cancel, from).await {
            Ok(()) => return,
            Err(failed) => failed,
        };
        spec.up.store(false, Ordering::SeqCst);
        metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(0.0);
        metrics::counter!("erasure_consumer_reconnects_total", "queue" => spec.name).increment(1);
        if let Some(node) = node {
            from = spec.brokers.after(node);
        }
        // A session that lasted is a new outage: start the backoff over.
        if started.elapsed() > Duration::from_secs(30) {
            delays = retry::reconnect_delays();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tracing::warn!(
            queue = %spec.queue,
            broker = node.map(|n| spec.brokers.address(n)),
            next_broker = %spec.brokers.address(from),
            error = %e,
            retry_in_ms = delay.as_millis() as u64,
            "consumer lost its connection"
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: `Ok` at shutdown; otherwise the error, with the node it was on
/// (`None` when no node answered).
async fn session<H: Handler>(
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    cancel: &CancellationToken,
    from: usize,
) -> Result<(), (Option<usize>, anyhow::Error)> {
    let (conn, node) = spec
        .brokers
        .connect(from, spec.name)
        .await
        .map_err(|e| (None, e))?;
    let result = consume(spec, handler, cancel, &conn, node).await;
    super::close(&conn, "bye").await;
    result.map_err(|e| (Some(node), e))
}

/// How long declaring and attaching may take. A node that answers the handshake but cannot
/// serve the queue (its cluster lost its majority) would otherwise hold the consumer there.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

async fn consume<H: Handler>(
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    cancel: &CancellationToken,
    conn: &Connection,
    node: usize,
) -> anyhow::Result<()> {
    let tag = format!("erasure-{}-{}", spec.name, uuid::Uuid::new_v4());
    let attach = async {
        spec.topology.ensure(conn).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = ch
            .basic_consume(
                spec.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        anyhow::Ok((ch, consumer))
    };
    let (ch, mut consumer) = tokio::time::timeout(ATTACH_TIMEOUT, attach)
        .await
        .map_err(|_| anyhow!("not attached to {} within {ATTACH_TIMEOUT:?}", spec.queue))??;
    spec.up.store(true, Ordering::SeqCst);
    metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(1.0);
    tracing::info!(queue = %spec.queue, broker = %spec.brokers.address(node), "consuming");

    let work = Work {
        tracker: TaskTracker::new(),
        // Not a child of `cancel`: shutdown must give in-flight work the grace period first,
        // and only then tell it to hand itself back.
        stop: CancellationToken::new(),
    };
    let result = pump(spec, handler, cancel, &mut consumer, &work).await;
    spec.up.store(false, Ordering::SeqCst);
    metrics::gauge!("erasure_consumer_up", "queue" => spec.name).set(0.0);
    if result.is_ok() {
        shut_down(spec, &ch, &tag, &work).await;
    } else {
        work.stop.cancel();
        work.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), work.tracker.wait()).await;
    }
    // Unsettled deliveries return to the queue when the channel closes.
    super::close_channel(&ch, "bye").await;
    result
}

/// What a session's handlers share.
struct Work {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Takes deliveries as they arrive (the broker sends at most `prefetch` unsettled) and starts
/// a handler for each while a permit is free. Returns `Ok` when cancelled, the error as soon
/// as the connection or the consumer is lost: deliveries not started by then are dropped, not
/// worked on a channel that can no longer settle them.
async fn pump<H: Handler>(
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    cancel: &CancellationToken,
    consumer: &mut lapin::Consumer,
    work: &Work,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    let mut waiting: VecDeque<Delivery> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            permit = permits.clone().acquire_owned(), if !waiting.is_empty() => {
                let permit = permit.expect("semaphore never closes");
                // The deliveries already here (up to the prefetch) go with the first: the
                // handler works them together; with a linger, so do those that follow them
                // closely.
                while waiting.len() < handler.batch() {
                    match consumer.next().now_or_never() {
                        Some(next) => receive(spec, &mut waiting, next)?,
                        None => break,
                    }
                }
                if let Some(linger) = handler.linger() {
                    let deadline = tokio::time::Instant::now() + linger.most;
                    while waiting.len() < handler.batch() {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => break,
                            next = tokio::time::timeout_at(linger.until(deadline), consumer.next()) => match next {
                                Ok(next) => receive(spec, &mut waiting, next)?,
                                Err(_) => break,
                            },
                        }
                    }
                }
                let batch: Vec<Delivery> =
                    waiting.drain(..waiting.len().min(handler.batch())).collect();
                let (handler, stop, name) = (handler.clone(), work.stop.clone(), spec.name);
                work.tracker.spawn(async move {
                    settle_batch(batch, handler.as_ref(), stop, name).await;
                    drop(permit);
                });
            }
            next = consumer.next() => receive(spec, &mut waiting, next)?,
        }
    }
}

/// Queues a delivery the consumer stream yielded; the stream's end or error ends the session.
fn receive(
    spec: &ConsumerSpec,
    waiting: &mut VecDeque<Delivery>,
    next: Option<lapin::Result<Delivery>>,
) -> anyhow::Result<()> {
    match next {
        Some(Ok(d)) => {
            if header_u64(&d.properties, "x-delivery-count").unwrap_or(0) > 0 {
                metrics::counter!("erasure_redeliveries_total", "queue" => spec.name).increment(1);
            }
            waiting.push_back(d);
            Ok(())
        }
        Some(Err(e)) => Err(anyhow!(e)),
        None => Err(anyhow!("the broker cancelled the consumer")),
    }
}

/// Hands a batch of deliveries to the handler and settles each as the handler says.
async fn settle_batch<H: Handler>(
    batch: Vec<Delivery>,
    handler: &H,
    stop: CancellationToken,
    name: &'static str,
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
        // The channel is gone (`false`: lapin knew it before sending); the broker redelivers,
        // and the handler is idempotent.
        match settled {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                queue = name,
                "could not settle a delivery: its channel is closed"
            ),
            Err(e) => tracing::warn!(queue = name, error = %e, "could not settle a delivery"),
        }
    }
}

/// Shutdown: no new deliveries, in-flight work gets the grace period, then is told to hand
/// itself back.
async fn shut_down(spec: &ConsumerSpec, ch: &Channel, tag: &str, work: &Work) {
    let cancelled = ch.basic_cancel(tag.into(), BasicCancelOptions::default());
    let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, cancelled).await;
    work.tracker.close();
    if tokio::time::timeout(spec.grace, work.tracker.wait())
        .await
        .is_err()
    {
        work.stop.cancel();
        tracing::warn!(queue = %spec.queue, "grace period over: handing in-flight work back");
        let _ = tokio::time::timeout(Duration::from_secs(5), work.tracker.wait()).await;
    }
}
