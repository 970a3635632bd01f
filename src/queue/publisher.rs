//! A publisher with confirms. Every message the service publishes is persistent, mandatory
//! (an unroutable message is an error, not a silent drop) and confirmed by the broker before
//! the caller moves on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Brokers, Topology, brokers::NoneAnswered};
use crate::{
    retry,
    store::outbox::{self, OutboxMessage},
};

/// With two nodes of three down, a publish to a queue led from one of them is neither
/// confirmed nor refused until the majority returns (minutes): the channel is given up after
/// this and the message left to the outbox relay, which publishes through another node.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long declaring the topology and selecting confirms may take on a new connection: a
/// node that answers the handshake but cannot serve the queues (its cluster lost its
/// majority) would otherwise hold every publish, and the outbox relay's claimed rows with them.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Messages waiting for the background publisher; when it is full (or the background publisher
/// is not running), a message is left to the outbox relay instead (it is committed, so nothing
/// is lost, only delayed).
const PENDING: usize = 4096;
/// Most messages one background round publishes and clears together.
const ROUND: usize = 256;

pub struct Publisher {
    brokers: Brokers,
    name: String,
    topology: Topology,
    state: Mutex<State>,
    pending: mpsc::Sender<OutboxMessage>,
    /// The other end of `pending`, taken by [`Publisher::publish_in_background`].
    pending_rx: std::sync::Mutex<Option<mpsc::Receiver<OutboxMessage>>>,
}

/// The publisher's connection, if any, and where the next one goes.
struct State {
    live: Option<Live>,
    /// The node to try first: the head of the list, then the one after whichever failed.
    from: usize,
    /// After a round in which no node answered, none is tried again before this; the delays
    /// come from `retry::reconnect_delays`, so a broker that is away is not hammered by every
    /// publish (the outbox keeps what could not be published).
    not_before: Option<Instant>,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    /// Counts connections, so that giving up a channel never drops its successor.
    generation: u64,
}

struct Live {
    conn: Connection,
    ch: Channel,
    node: usize,
    generation: u64,
}

/// A channel to publish on, and which connection it belongs to.
struct Lease {
    ch: Channel,
    generation: u64,
}

impl Publisher {
    pub fn new(brokers: impl Into<Brokers>, name: &str, topology: Topology) -> Self {
        let (pending, pending_rx) = mpsc::channel(PENDING);
        Self {
            brokers: brokers.into(),
            name: name.into(),
            topology,
            state: Mutex::new(State {
                live: None,
                from: 0,
                not_before: None,
                delays: Box::new(retry::reconnect_delays()),
                generation: 0,
            }),
            pending,
            pending_rx: std::sync::Mutex::new(Some(pending_rx)),
        }
    }

    /// Publishes a committed outbox message soon, in the background
    /// ([`Publisher::publish_in_background`]), together with whatever else is waiting: one round
    /// publishes them all with pipelined confirms and deletes the confirmed ones in one
    /// statement, so a busy intake pays one clean-up statement per round rather than per call.
    /// If the process dies first, the queue is full or the service is stopping, the outbox relay
    /// publishes the message instead.
    pub fn publish_soon(&self, message: OutboxMessage) {
        // Full or closed: the relay's pass publishes it, and logs that it did.
        let _ = self.pending.try_send(message);
    }

    /// The background publisher of [`Publisher::publish_soon`], run once per publisher (the
    /// service spawns it in its `TaskTracker`; another call returns at once). When `cancel`
    /// fires it takes no more messages, gives those already queued one last round (bounded by
    /// the confirm timeout: shutdown must not hang on a broker that is away) and returns; the
    /// relay publishes whatever that round did not.
    pub async fn publish_in_background(self: Arc<Self>, pool: PgPool, cancel: CancellationToken) {
        let taken = self.pending_rx.lock().expect("pending lock").take();
        let Some(mut rx) = taken else {
            return;
        };
        let mut round = Vec::with_capacity(ROUND);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                n = rx.recv_many(&mut round, ROUND) => {
                    if n == 0 {
                        return;
                    }
                    self.publish_outbox(&pool, &round).await;
                    round.clear();
                }
            }
        }
        rx.close();
        let last = async {
            while rx.recv_many(&mut round, ROUND).await > 0 {
                self.publish_outbox(&pool, &round).await;
                round.clear();
            }
        };
        let _ = tokio::time::timeout(CONFIRM_TIMEOUT, last).await;
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A usable confirming channel, (re)connecting and declaring the topology when needed:
    /// to the next node that answers after the one whose connection was lost.
    async fn channel(&self) -> anyhow::Result<Lease> {
        let mut state = self.state.lock().await;
        if let Some(live) = &state.live {
            if live.conn.status().connected() && live.ch.status().connected() {
                return Ok(Lease {
                    ch: live.ch.clone(),
                    generation: live.generation,
                });
            }
            let node = live.node;
            tracing::warn!(
                connection = %self.name,
                broker = %self.brokers.address(node),
                "publisher lost its connection"
            );
            Self::drop_live(&mut state, &self.brokers).await;
        }
        if let Some(t) = state.not_before
            && Instant::now() < t
        {
            let wait = (t - Instant::now()).as_millis();
            return Err(NoneAnswered(format!("the last round failed; next in {wait} ms")).into());
        }
        match self.open(state.from).await {
            Ok((conn, ch, node)) => {
                state.generation += 1;
                let lease = Lease {
                    ch: ch.clone(),
                    generation: state.generation,
                };
                state.live = Some(Live {
                    conn,
                    ch,
                    node,
                    generation: state.generation,
                });
                state.not_before = None;
                state.delays = Box::new(retry::reconnect_delays());
                Ok(lease)
            }
            Err(e) => {
                let delay = state.delays.next().unwrap_or(Duration::from_secs(10));
                state.not_before = Some(Instant::now() + delay);
                Err(e)
            }
        }
    }

    /// Connects to the first node that answers from `from`, declares, selects confirms; the
    /// declarations within [`READY_TIMEOUT`].
    async fn open(&self, from: usize) -> anyhow::Result<(Connection, Channel, usize)> {
        let (conn, node) = self.brokers.connect(from, &self.name).await?;
        let ready = async {
            self.topology
                .ensure(&conn)
                .await
                .context("declaring the topology")?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            anyhow::Ok(ch)
        };
        let ready = tokio::time::timeout(READY_TIMEOUT, ready)
            .await
            .unwrap_or_else(|_| Err(anyhow!("not ready within {READY_TIMEOUT:?}")));
        match ready {
            Ok(ch) => Ok((conn, ch, node)),
            Err(e) => {
                super::close(&conn, "not ready").await;
                Err(e.context(format!("on {}", self.brokers.address(node))))
            }
        }
    }

    /// Forgets the connection; the next one starts with the node after it. Closed in the
    /// background, the lock being held here: a dead connection may not close at once.
    async fn drop_live(state: &mut State, brokers: &Brokers) {
        if let Some(live) = state.live.take() {
            state.from = brokers.after(live.node);
            tokio::spawn(async move { super::close(&live.conn, "reconnecting").await });
        }
    }

    /// Gives up the connection of `generation` (if it is still the current one): after a
    /// nack or a confirm that never came, every later publish on its channel would fare the
    /// same (DESIGN.md section 11).
    async fn abandon(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .live
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            Self::drop_live(&mut state, &self.brokers).await;
        }
    }

    /// True when the publisher holds a live connection (or can open one now).
    pub async fn check(&self) -> bool {
        self.channel().await.is_ok()
    }

    /// Publishes one persistent JSON message to the `erasure` exchange and waits for the
    /// broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let lease = self.channel().await?;
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let confirm = self
            .send(
                &lease.ch,
                routing_key,
                message_id,
                payload,
                headers,
                deadline,
            )
            .await;
        self.settle(&lease, routing_key, confirm, deadline).await
    }

    /// Hands one message to the channel (by `deadline`: a broker that blocks publishers, on a
    /// resource alarm, would hold it); the confirm arrives later.
    async fn send(
        &self,
        ch: &Channel,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_headers(headers);
        let sent = ch.basic_publish(
            self.topology.exchange().into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            props,
        );
        Ok(tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| anyhow!("not sent within {CONFIRM_TIMEOUT:?}"))??)
    }

    /// Waits (until `deadline`) for a sent message's confirm; `Ok` only for a routed,
    /// acknowledged message. A nack or a timeout gives the channel up.
    async fn settle(
        &self,
        lease: &Lease,
        routing_key: &str,
        confirm: anyhow::Result<PublisherConfirm>,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        let result = async {
            tokio::time::timeout_at(deadline, confirm?)
                .await
                .map_err(|_| anyhow!("no publisher confirm within {CONFIRM_TIMEOUT:?}"))?
                .map_err(anyhow::Error::from)
        }
        .await;
        match result {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => {
                bail!("message to {routing_key} was unroutable (queue missing?)")
            }
            Ok(Confirmation::Nack(_)) => {
                self.abandon(lease.generation).await;
                bail!("broker refused message to {routing_key}")
            }
            Ok(Confirmation::NotRequested) => bail!("publisher confirms are not enabled"),
            Err(e) => {
                self.abandon(lease.generation).await;
                Err(e)
            }
        }
    }

    /// Publishes messages with pipelined confirms: all are handed to the channel first, then
    /// the confirms are awaited, so N messages cost about one broker round trip (a quorum
    /// queue confirms only after its log is synced to disk), not N. Returns, in order, whether
    /// each was confirmed; sent and confirmed within one [`CONFIRM_TIMEOUT`], not one each.
    pub async fn publish_many(&self, messages: &[OutboxMessage]) -> Vec<anyhow::Result<()>> {
        let lease = match self.channel().await {
            Ok(lease) => lease,
            Err(e) => {
                let reason = format!("{e:#}");
                return messages.iter().map(|_| Err(anyhow!("{reason}"))).collect();
            }
        };
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            confirms.push(
                self.send(
                    &lease.ch,
                    &m.routing_key,
                    &m.message_id,
                    &m.payload,
                    FieldTable::default(),
                    deadline,
                )
                .await,
            );
        }
        let mut results = Vec::with_capacity(messages.len());
        for (m, confirm) in messages.iter().zip(confirms) {
            results.push(self.settle(&lease, &m.routing_key, confirm, deadline).await);
        }
        results
    }

    /// Publishes outbox messages (confirms pipelined) and deletes the confirmed ones in one
    /// statement. Returns how many were published; the rest stay in the outbox for the relay.
    pub async fn publish_outbox(&self, pool: &PgPool, messages: &[OutboxMessage]) -> usize {
        if messages.is_empty() {
            return 0;
        }
        let mut done = Vec::with_capacity(messages.len());
        let mut failure = None;
        for (m, result) in messages.iter().zip(self.publish_many(messages).await) {
            match result {
                Ok(()) => done.push(m.id),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            tracing::warn!(error = %e, "publish failed; the outbox relay will retry");
        }
        // On failure the relay publishes them again: a duplicate, which consumers absorb.
        if !done.is_empty()
            && let Err(e) = outbox::delete(pool, &done).await
        {
            tracing::warn!(error = %crate::store::describe(&e), "could not clear published outbox rows");
        }
        done.len()
    }

    pub async fn close(&self) {
        let live = self.state.lock().await.live.take();
        if let Some(live) = live {
            super::close(&live.conn, "shutting down").await;
        }
    }
}
