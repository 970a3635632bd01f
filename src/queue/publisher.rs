//! A publisher with confirms. Every message the service publishes is persistent, mandatory
//! (an unroutable message is an error, not a silent drop) and confirmed by the broker before
//! the caller moves on.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, anyhow, bail};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::store::outbox::{self, OutboxMessage};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages waiting for the background publisher; when it is full (or the background publisher
/// is not running), a message is left to the outbox relay instead (it is committed, so nothing
/// is lost, only delayed).
const PENDING: usize = 4096;
/// Most messages one background round publishes and clears together.
const ROUND: usize = 256;

pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    state: Mutex<Option<(Connection, Channel)>>,
    pending: mpsc::Sender<OutboxMessage>,
    /// The other end of `pending`, taken by [`Publisher::publish_in_background`].
    pending_rx: std::sync::Mutex<Option<mpsc::Receiver<OutboxMessage>>>,
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        let (pending, pending_rx) = mpsc::channel(PENDING);
        Self {
            url: url.into(),
            name: name.into(),
            topology,
            state: Mutex::new(None),
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

    /// A usable confirming channel, (re)connecting and declaring the topology when needed.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut state = self.state.lock().await;
        if let Some((conn, ch)) = state.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        if let Some((conn, _)) = state.take() {
            let _ = conn.close(200, "reconnecting".into()).await;
        }
        let conn = super::connect(&self.url, &self.name)
            .await
            .context("connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology
            .declare(&ch)
            .await
            .context("declaring the topology")?;
        *state = Some((conn, ch.clone()));
        Ok(ch)
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
        let ch = self.channel().await?;
        let confirm = self
            .send(&ch, routing_key, message_id, payload, headers)
            .await;
        self.settle(routing_key, confirm).await
    }

    /// Hands one message to the channel; the confirm arrives later.
    async fn send(
        &self,
        ch: &Channel,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_headers(headers);
        Ok(ch
            .basic_publish(
                self.topology.exchange().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                props,
            )
            .await?)
    }

    /// Waits for a sent message's confirm; `Ok` only for a routed, acknowledged message.
    async fn settle(
        &self,
        routing_key: &str,
        confirm: anyhow::Result<PublisherConfirm>,
    ) -> anyhow::Result<()> {
        let result = async {
            tokio::time::timeout(CONFIRM_TIMEOUT, confirm?)
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
            Ok(Confirmation::Nack(_)) => bail!("broker refused message to {routing_key}"),
            Ok(Confirmation::NotRequested) => bail!("publisher confirms are not enabled"),
            Err(e) => {
                // Drop the channel so that the next call reconnects.
                self.state.lock().await.take();
                Err(e)
            }
        }
    }

    /// Publishes messages with pipelined confirms: all are handed to the channel first, then
    /// the confirms are awaited, so N messages cost about one broker round trip (a quorum
    /// queue confirms only after its log is synced to disk), not N. Returns, in order, whether
    /// each was confirmed.
    pub async fn publish_many(&self, messages: &[OutboxMessage]) -> Vec<anyhow::Result<()>> {
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                let reason = format!("{e:#}");
                return messages.iter().map(|_| Err(anyhow!("{reason}"))).collect();
            }
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            confirms.push(
                self.send(
                    &ch,
                    &m.routing_key,
                    &m.message_id,
                    &m.payload,
                    FieldTable::default(),
                )
                .await,
            );
        }
        let mut results = Vec::with_capacity(messages.len());
        for (m, confirm) in messages.iter().zip(confirms) {
            results.push(self.settle(&m.routing_key, confirm).await);
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
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}
