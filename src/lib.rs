//! erasure: erases a customer's data from a conversational-bot platform on request, durably,
//! and proves it did.
//!
//! The flow, one module per step: [`intake`] (HTTP, auth) → [`queue`] (RabbitMQ) →
//! [`worker`] (planning, tasks) → [`erase`] (batched deletes) → [`store`] (the service's own
//! state). [`contract`] holds the wire types every side shares, [`domain`] the identifiers and
//! states, [`rules`] the rules of erasure. Proof of erasure: [`verify`] (the verification job)
//! and [`receipt`] (signed receipts).

pub mod callback;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod contract;
pub mod domain;
pub mod erase;
pub mod intake;
pub mod queue;
pub mod receipt;
pub mod relay;
pub mod retention;
pub mod retry;
pub mod rules;
pub mod secrets;
pub mod seed;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod worker;
