//! The broker address list (`AMQP_URL`, comma-separated: the nodes of a cluster, or one load
//! balancer). A connection goes to the first node that answers; a connection that is lost is
//! replaced by one to the next node that answers, round the list, so that a dead node is tried
//! last (DESIGN.md section 11). Pacing between rounds is the caller's, through `retry`.

use std::{fmt, sync::Arc, time::Duration};

use lapin::Connection;

use crate::config::AmqpUrls;

/// How long one node gets to complete the AMQP handshake. A node that is down refuses at
/// once; one that is unreachable (a powered-off host, a partition) would otherwise hold the
/// attempt for the kernel's SYN timeout, minutes, while the next node could answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The URLs of the broker's nodes, in the order given; cheap to clone.
#[derive(Clone)]
pub struct Brokers(Arc<[String]>);

impl Brokers {
    pub fn new(urls: Vec<String>) -> Self {
        assert!(!urls.is_empty(), "a broker list names at least one URL");
        Self(urls.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Node `i`'s `host:port` (its URL without scheme, credentials, vhost or options): what
    /// logs and errors name, never the password.
    pub fn address(&self, i: usize) -> String {
        address(&self.0[i % self.len()])
    }

    /// The node after node `i`: where to start once `i` failed.
    pub fn after(&self, i: usize) -> usize {
        (i + 1) % self.len()
    }

    /// Connects to the first node that answers, starting at node `from` and going round the
    /// list once; returns the connection and the node's index. The error names every node
    /// tried and why it did not answer.
    pub async fn connect(&self, from: usize, name: &str) -> anyhow::Result<(Connection, usize)> {
        let mut failures = Vec::with_capacity(self.len());
        for k in 0..self.len() {
            let i = (from + k) % self.len();
            match tokio::time::timeout(CONNECT_TIMEOUT, super::connect(&self.0[i], name)).await {
                Ok(Ok(conn)) => {
                    tracing::info!(broker = %self.address(i), connection = name, "connected to RabbitMQ");
                    return Ok((conn, i));
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", self.address(i))),
                Err(_) => failures.push(format!(
                    "{}: no handshake within {CONNECT_TIMEOUT:?}",
                    self.address(i)
                )),
            }
        }
        Err(NoneAnswered(failures.join("; ")).into())
    }
}

/// No node of the list answered: each with why.
#[derive(Debug, thiserror::Error)]
#[error("no RabbitMQ node answered ({0})")]
pub struct NoneAnswered(pub(crate) String);

fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|i| self.address(i)))
            .finish()
    }
}

impl From<&AmqpUrls> for Brokers {
    fn from(urls: &AmqpUrls) -> Self {
        Self::new(urls.all().to_vec())
    }
}

/// One URL (the tests' and the bench's single broker).
impl From<&str> for Brokers {
    fn from(url: &str) -> Self {
        Self::new(vec![url.to_string()])
    }
}

impl From<&Brokers> for Brokers {
    fn from(b: &Brokers) -> Self {
        b.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_host_and_port_only() {
        let b = Brokers::new(vec![
            "amqp://guest:s3cret@10.0.0.1:5672/%2f".into(),
            "amqps://u:p@rabbit-2.example:5671/vhost?heartbeat=10".into(),
            "amqp://localhost".into(),
        ]);
        assert_eq!(b.address(0), "10.0.0.1:5672");
        assert_eq!(b.address(1), "rabbit-2.example:5671");
        assert_eq!(b.address(2), "localhost");
        assert!(!format!("{b:?}").contains("s3cret"));
    }

    #[test]
    fn after_a_failed_node_comes_the_next_round_the_list() {
        let b = Brokers::new(vec![
            "amqp://a".into(),
            "amqp://b".into(),
            "amqp://c".into(),
        ]);
        assert_eq!([b.after(0), b.after(1), b.after(2)], [1, 2, 0]);
        let one = Brokers::from("amqp://a");
        assert_eq!(one.after(0), 0);
    }

    #[tokio::test]
    async fn a_list_where_no_node_answers_names_each_without_credentials() {
        // Port 9 (discard) is closed on loopback: refused at once.
        let b = Brokers::new(vec![
            "amqp://u:hunter2@127.0.0.1:9/%2f".into(),
            "amqp://u:hunter2@127.0.0.1:9/%2f".into(),
        ]);
        let e = b.connect(1, "test").await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:9"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
