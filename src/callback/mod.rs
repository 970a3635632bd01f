//! Callbacks (DESIGN.md section 10): when a request settles, its caller is told with a POST
//! signed per Standard Webhooks v1. Durable like the outbox: the settle arrow queues the
//! callback in its own transaction (`crate::store::callbacks`), and [`deliver::run`], in every
//! worker process, delivers it at least once, retrying per `ERASURE_CALLBACK_SCHEDULE`.
//! [`ssrf`] keeps callbacks away from loopback, private, link-local and metadata addresses;
//! [`sign`] makes and checks the signatures.

pub mod deliver;
pub mod sign;
pub mod ssrf;

pub use deliver::Deliverer;
