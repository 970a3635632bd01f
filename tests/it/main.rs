//! Integration tests against the real PostgreSQL and RabbitMQ (one binary, one module per
//! part of the contract). Each test gets its own database and queue prefix.

mod helpers;

mod bench_smoke;
mod callbacks;
mod cancel;
mod catalog;
mod cli;
mod cluster;
mod deploy;
mod erase_flow;
mod faults;
mod fleet;
mod fuzz;
mod intake;
mod jobs;
mod load;
mod migrations;
mod openapi;
mod ops;
mod parsers;
mod pgbouncer;
mod privacy;
mod process;
mod producer;
mod proxy;
mod readme;
mod receipt;
mod rules;
mod security;
mod verify;
