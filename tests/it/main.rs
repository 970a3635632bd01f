//! Integration tests against the real PostgreSQL and RabbitMQ (one binary, one module per
//! part of the contract). Each test gets its own database and queue prefix.

mod helpers;

mod bench_smoke;
mod erase_flow;
