//! RabbitMQ: the topology (names, arguments), the broker address list, a confirming
//! publisher, the consumer loop that survives lost connections and nodes, and the accounting
//! that tells a crash loop from deliveries returned by a lost connection.

pub mod brokers;
pub mod consumer;
pub mod publisher;
pub mod redelivery;
pub mod redrive;

pub use brokers::Brokers;

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{
    config::QueueSettings,
    contract::{DEAD_ROUTING_KEY, ERASE_ROUTING_KEY, TASK_ROUTING_KEY},
};

/// `ERASURE_QUORUM_SIZE`'s default: three nodes survive the loss of one.
pub const DEFAULT_QUORUM_SIZE: u32 = 3;

/// Every exchange and queue name, with the configured prefix, and the queues' arguments.
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    /// The broker's own backstop on redeliveries (`x-delivery-limit`); the service dead-letters
    /// a message itself well before this, recording why.
    pub delivery_limit: u32,
    /// Replicas of each quorum queue at its creation (`x-quorum-initial-group-size`).
    pub quorum_size: u32,
}

impl Topology {
    pub fn new(prefix: &str, max_deliveries: u32) -> Self {
        Self {
            prefix: prefix.to_string(),
            delivery_limit: max_deliveries.saturating_mul(2).max(max_deliveries + 5),
            quorum_size: DEFAULT_QUORUM_SIZE,
        }
    }

    /// The topology the settings describe.
    pub fn from_settings(queue: &QueueSettings) -> Self {
        Self {
            quorum_size: queue.quorum_size,
            ..Self::new(&queue.prefix, queue.max_deliveries)
        }
    }
    pub fn exchange(&self) -> String {
        format!("{}erasure", self.prefix)
    }
    pub fn requests_queue(&self) -> String {
        format!("{}erasure.requests", self.prefix)
    }
    pub fn tasks_queue(&self) -> String {
        format!("{}erasure.tasks", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}erasure.dead", self.prefix)
    }
    /// Every queue with its routing key.
    pub fn queues(&self) -> [(String, &'static str); 3] {
        [
            (self.requests_queue(), ERASE_ROUTING_KEY),
            (self.tasks_queue(), TASK_ROUTING_KEY),
            (self.dead_queue(), DEAD_ROUTING_KEY),
        ]
    }

    /// Declares the exchange, the quorum queues and their bindings (idempotent) on `ch`,
    /// asserting every argument: a queue that exists with other arguments is an error (and
    /// closes the channel). The service itself declares through [`Topology::ensure`].
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        self.declare_exchange(ch).await?;
        for (queue, key) in self.queues() {
            self.declare_queue(ch, &queue, key).await?;
        }
        Ok(())
    }

    /// [`Topology::declare`] on channels of its own, tolerating one difference: a queue that
    /// exists with another `x-quorum-initial-group-size` (declared before the setting existed,
    /// or under another `ERASURE_QUORUM_SIZE`) is used as it is. The size only matters when a
    /// queue is created, and refusing to start over it would stop every process after an
    /// upgrade; the warning says how to change an existing queue's replicas.
    pub async fn ensure(&self, conn: &Connection) -> lapin::Result<()> {
        let mut ch = conn.create_channel().await?;
        self.declare_exchange(&ch).await?;
        for (queue, key) in self.queues() {
            match self.declare_queue(&ch, &queue, key).await {
                Ok(()) => {}
                Err(e) if other_group_size(&e) => {
                    tracing::warn!(
                        queue = %queue,
                        quorum_size = self.quorum_size,
                        "the queue exists with another x-quorum-initial-group-size: using it as \
                         it is (rabbitmq-queues grow/shrink change its replicas)"
                    );
                    // The refusal closed the channel.
                    ch = conn.create_channel().await?;
                    ch.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                    self.bind(&ch, &queue, key).await?;
                }
                Err(e) => return Err(e),
            }
        }
        close_channel(&ch, "declared").await;
        Ok(())
    }

    async fn declare_exchange(&self, ch: &Channel) -> lapin::Result<()> {
        ch.exchange_declare(
            self.exchange().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    }

    /// The arguments of a queue bound with `key`.
    fn queue_arguments(&self, key: &str) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongInt(i32::try_from(self.quorum_size).unwrap_or(i32::MAX)),
        );
        if key != DEAD_ROUTING_KEY {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.exchange().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(DEAD_ROUTING_KEY.into()),
            );
        }
        args
    }

    async fn declare_queue(&self, ch: &Channel, queue: &str, key: &str) -> lapin::Result<()> {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            self.queue_arguments(key),
        )
        .await?;
        self.bind(ch, queue, key).await
    }

    async fn bind(&self, ch: &Channel, queue: &str, key: &str) -> lapin::Result<()> {
        ch.queue_bind(
            queue.into(),
            self.exchange().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }
}

/// The broker refused a queue declaration because the queue exists with another
/// `x-quorum-initial-group-size` (PRECONDITION_FAILED naming that argument).
fn other_group_size(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if amqp.get_id() == 406
            && amqp.get_message().as_str().contains("x-quorum-initial-group-size"))
}

/// How long closing a connection or channel may take. On a connection that died, lapin may
/// wait for the broker's close-ok forever (seen: a publisher that closed its connection after
/// its node was SIGKILLed never returned, holding its lock, and the outbox relay with it).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes a connection, giving up after [`CLOSE_TIMEOUT`].
pub async fn close(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await;
}

/// Closes a channel, giving up after [`CLOSE_TIMEOUT`].
pub async fn close_channel(ch: &Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, reason.into())).await;
}

/// Opens a connection named for the role using it.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props =
        ConnectionProperties::default().with_connection_name(format!("erasure-{name}").into());
    Connection::connect(url, props).await
}

/// Whether an error means the broker connection was lost (or no node answered), so that the
/// same work may succeed on another node: an I/O error, a missed heartbeat, a channel or
/// connection already closed, or the broker closing the connection (a node shutting down).
pub fn connection_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if cause.is::<brokers::NoneAnswered>() {
            return true;
        }
        let Some(e) = cause.downcast_ref::<lapin::Error>() else {
            return false;
        };
        match e.kind() {
            lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::MissingHeartbeatError
            | lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::InvalidConnectionState(_) => true,
            lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 320, // CONNECTION_FORCED
            _ => false,
        }
    })
}

/// A header value as text, if present.
pub fn header_str(props: &lapin::BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Deliveries a message has had, counting this one (quorum queues count redeliveries in
/// `x-delivery-count`).
pub fn delivery_number(props: &lapin::BasicProperties) -> u64 {
    header_u64(props, "x-delivery-count").unwrap_or(0) + 1
}

/// The message id a delivery carries (ours are request or task ids).
pub fn message_id(props: &lapin::BasicProperties) -> String {
    props
        .message_id()
        .as_ref()
        .map_or_else(|| "unidentified".into(), |m| m.as_str().to_string())
}

/// A numeric header value, if present (`x-delivery-count` and our own counters).
pub fn header_u64(props: &lapin::BasicProperties, name: &str) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_prefix() {
        let t = Topology::new("p.", 5);
        assert_eq!(t.exchange(), "p.erasure");
        assert_eq!(t.requests_queue(), "p.erasure.requests");
        assert_eq!(t.dead_queue(), "p.erasure.dead");
        assert!(t.delivery_limit > 5);
        assert_eq!(t.quorum_size, DEFAULT_QUORUM_SIZE);
    }

    #[test]
    fn every_queue_is_a_quorum_queue_of_the_configured_size() {
        let t = Topology {
            quorum_size: 5,
            ..Topology::new("", 5)
        };
        for (_, key) in t.queues() {
            let args = t.queue_arguments(key);
            let args = args.inner();
            assert_eq!(
                args.get(&ShortString::from("x-queue-type")),
                Some(&AMQPValue::LongString("quorum".into()))
            );
            assert_eq!(
                args.get(&ShortString::from("x-quorum-initial-group-size")),
                Some(&AMQPValue::LongInt(5))
            );
        }
    }
}
