//! RabbitMQ: the topology (names, arguments), a confirming publisher, and the consumer loop
//! that survives lost connections.

pub mod consumer;
pub mod publisher;
pub mod redrive;

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::contract::{DEAD_ROUTING_KEY, ERASE_ROUTING_KEY, TASK_ROUTING_KEY};

/// Every exchange and queue name, with the configured prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    /// The broker's own backstop on redeliveries (`x-delivery-limit`); the service dead-letters
    /// a message itself well before this, recording why.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, max_deliveries: u32) -> Self {
        Self {
            prefix: prefix.to_string(),
            delivery_limit: max_deliveries.saturating_mul(2).max(max_deliveries + 5),
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

    /// Declares the exchange, the quorum queues and their bindings (idempotent).
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        ch.exchange_declare(
            self.exchange().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        for (queue, key) in self.queues() {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
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
            ch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
            ch.queue_bind(
                queue.as_str().into(),
                self.exchange().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }
}

/// Opens a connection named for the role using it.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props =
        ConnectionProperties::default().with_connection_name(format!("erasure-{name}").into());
    Connection::connect(url, props).await
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
    }
}
