//! Channel's native connection engine: sockets, TLS 1.3 (rustls), MMTP per
//! device (the `mmtp` crate), MQTT framing, write queues, deadlines, fan-out and
//! ACK batching on one I/O thread, driven by Python in batches.
//!
//! The Python face is `channel._engine.Engine` (`py.rs`, built with the `python`
//! feature by maturin); everything else is plain Rust, tested by `cargo test`.
//! The contract with Python is `BOUNDARY.md` in this directory.

pub mod admission;
pub mod boundary;
pub mod clienthello;
pub mod config;
pub mod deadlines;
pub mod engine;
pub mod h1;
pub mod ids;
pub mod mqtt;
pub mod mqttout;
pub mod proxy;
pub mod resume;
pub mod runtime;
pub mod sig;
pub mod singleuse;
pub mod stats;
pub mod sys;
pub mod ticketer;
pub mod tls;

#[cfg(feature = "python")]
mod py;
