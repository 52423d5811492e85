//! Integration tests of the client against real `shoal` processes.
//!
//! Every test starts its own node (or cluster) on free ports with a fresh
//! data directory through `shoal-testkit`; build the binary first with
//! `cargo build --workspace --bins --tests`.

mod common;
mod config;
mod escape_hatch;
mod kv;
mod lease;
mod logs;
mod pubsub;
mod raw;
mod watch;
