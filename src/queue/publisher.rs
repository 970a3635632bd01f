//! A publisher with confirms. Every message the service publishes is persistent, mandatory
//! (an unroutable message is an error, not a silent drop) and confirmed by the broker before
//! the caller moves on.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::Topology;
use crate::store::outbox::{self, OutboxMessage};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            topology,
            state: Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A usable confirming channel, (re)connecting and declaring the topology when needed.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut state = self.state.lock().await;
        if let Some((conn, ch)) = state.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
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
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_headers(headers);
        let result = async {
            let confirm = ch
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
                .await?;
            tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
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

    /// Publishes outbox messages and deletes the confirmed ones. Returns how many were
    /// published; the rest stay in the outbox for the relay.
    pub async fn publish_outbox(&self, pool: &PgPool, messages: &[OutboxMessage]) -> usize {
        let mut done = Vec::with_capacity(messages.len());
        for m in messages {
            match self
                .publish(
                    &m.routing_key,
                    &m.message_id,
                    &m.payload,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => done.push(m.id),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed; the outbox relay will retry");
                    break;
                }
            }
        }
        if !done.is_empty() {
            if let Err(e) = outbox::delete(pool, &done).await {
                // The relay would publish them again: a duplicate, which consumers absorb.
                tracing::warn!(error = %crate::store::describe(&e), "could not clear published outbox rows");
            }
        }
        done.len()
    }

    pub async fn close(&self) {
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}
