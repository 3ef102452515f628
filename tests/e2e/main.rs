//! End-to-end tests: the real sup binary, the helper worker, real sockets
//! and real signals. Run with `cargo test --features test-helpers`.

#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot set itself up should fail loudly, where it happened"
)]

mod harness;

mod bad_input;
mod balance;
mod completions;
mod config;
mod control;
mod deploy;
mod draining;
mod hot;
mod inheritance;
mod metrics;
mod notify_socket;
mod one_worker;
mod output;
mod overlap;
mod ready_fd;
mod real_servers;
mod recycling;
mod rolling;
mod stopping;
mod supervision;
mod systemd;
