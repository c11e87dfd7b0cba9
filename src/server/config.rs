//! `[http]`: the listener both roles serve on, its limits and clocks, and
//! what a reply may promise.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::error::{invalid, within, Invalid, DAY};

/// `[http]`: the listener and what a reply may promise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on for callbacks and `/healthz`, `/readyz`; also
    /// `/metrics` unless `[ops] listen` is set.
    pub listen: SocketAddr,
    /// Larger bodies get 413 without being read.
    pub max_body_bytes: usize,
    /// Longest request head (request line and headers); a longer one is
    /// answered 431 and the connection closed, so a client cannot make the
    /// server buffer an endless header.
    pub max_header_bytes: usize,
    /// Most bytes of unfinished requests (heads and bodies still arriving)
    /// held at once over all connections. Past it, the connection that has
    /// been receiving longest without finishing is closed (`memory`).
    pub max_buffered_bytes: usize,
    /// How long a callback waits for Kafka's acknowledgement before 503.
    /// Keep it below the sender's own timeout so its retry gets an answer.
    pub ack_timeout_ms: u64,
    /// Value of the `Retry-After` header on 503.
    pub retry_after_seconds: u64,
    /// On SIGTERM, how long in-flight requests and the producer flush may take.
    pub shutdown_grace_seconds: u64,
    /// A connection must deliver a whole request head this soon after it
    /// opens, or after the head's first byte.
    pub header_timeout_seconds: u64,
    /// A request body must arrive this soon after its head (else 408).
    pub body_timeout_seconds: u64,
    /// A keep-alive connection with no new request this long after the last
    /// reply is closed. Keep it above your load balancer's idle timeout, so
    /// that the balancer closes first and never reuses a closed connection.
    pub idle_timeout_seconds: u64,
    /// Most connections open at once; lowered at start to fit the process's
    /// file-descriptor limit (less 128 kept for Kafka and files).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: 65536,
            max_header_bytes: 32 * 1024,
            max_buffered_bytes: 32 * 1024 * 1024,
            ack_timeout_ms: 3000,
            retry_after_seconds: 1,
            shutdown_grace_seconds: 10,
            header_timeout_seconds: 10,
            body_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            max_connections: 10_000,
        }
    }
}

impl HttpConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "must be at least 1024 bytes");
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        within(
            "max_header_bytes",
            self.max_header_bytes as u64,
            8192..=1 << 20,
            "bytes",
        )?;
        let one_request = (self.max_header_bytes + self.max_body_bytes) as u64;
        within(
            "max_buffered_bytes",
            self.max_buffered_bytes as u64,
            (one_request * 16).max(1 << 20)..=1 << 36,
            "bytes (at least 16 requests of max_header_bytes + max_body_bytes)",
        )?;
        within("ack_timeout_ms", self.ack_timeout_ms, 1..=300_000, "ms")?;
        within(
            "retry_after_seconds",
            self.retry_after_seconds,
            0..=DAY,
            "seconds",
        )?;
        within(
            "shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0..=3600,
            "seconds",
        )?;
        for (key, value) in [
            ("header_timeout_seconds", self.header_timeout_seconds),
            ("body_timeout_seconds", self.body_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
        ] {
            within(key, value, 1..=3600, "seconds")?;
        }
        within(
            "max_connections",
            self.max_connections as u64,
            16..=1_000_000,
            "connections",
        )?;
        Ok(())
    }
}
