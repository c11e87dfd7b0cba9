//! The ingest role, assembled: listener, verifier, dedup cache, publisher,
//! readiness probe and graceful shutdown.
//!
//! Shutdown order matters for "nothing acknowledged that was not kept": stop
//! accepting, let in-flight requests finish (each waits for its own ack),
//! then flush the producer so late acks are not lost either.

pub mod dedup;
pub mod http;
pub mod normalize;
pub mod publish;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::dedup::Dedup;
use crate::ingest::http::{router, AppState};
use crate::ingest::publish::Publisher;
use crate::ingest::verify::Verifier;
use crate::metrics::Metrics;

/// How often `/readyz` re-checks that Kafka answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A bound, not yet serving, ingest server.
pub struct Ingest {
    state: Arc<AppState>,
    listener: TcpListener,
    grace: Duration,
}

impl Ingest {
    /// Binds `http.listen` and prepares the handlers.
    pub async fn bind(
        config: &Config,
        publisher: Publisher,
        metrics: Metrics,
    ) -> anyhow::Result<Ingest> {
        config.require_ingest()?;
        let listen = config.http.listen;
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen}; is another process using it? Set http.listen to another address")
        })?;
        let e = &config.easemob;
        let state = Arc::new(AppState {
            verifier: Verifier::new(&e.apps, e.replay_window_seconds),
            dedup: Dedup::new(
                Duration::from_secs(e.dedup_window_seconds),
                e.dedup_capacity,
                e.dedup_by_content,
            ),
            publisher,
            metrics,
            kafka_ready: Default::default(),
            ack_timeout: Duration::from_millis(config.http.ack_timeout_ms),
            max_body_bytes: config.http.max_body_bytes,
            retry_after: HeaderValue::from(config.http.retry_after_seconds),
        });
        Ok(Ingest {
            state,
            listener,
            grace: Duration::from_secs(config.http.shutdown_grace_seconds),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains and flushes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Ingest {
            state,
            listener,
            grace,
        } = self;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let probe = tokio::spawn(probe_kafka(state.clone(), stop_rx.clone()));

        let app = router(state.clone());
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
            let _ = stop_tx.send(true);
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signalled);
        tokio::select! {
            result = server => result.context("the HTTP server failed")?,
            _ = async { let _ = stop_rx.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
            }
        }
        probe.abort();
        let publisher = state.publisher.clone();
        let left = publisher.in_flight();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(grace)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!(records = left, "producer flushed"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, records = left, "producer flush did not complete")
            }
            Err(e) => tracing::error!(error = %e, "producer flush task failed"),
        }
        Ok(())
    }
}

async fn probe_kafka(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let ready = state.publisher.probe(PROBE_INTERVAL).await;
        if ready != state.kafka_ready.swap(ready, Ordering::Relaxed) {
            if ready {
                tracing::info!("Kafka is reachable; ready");
            } else {
                tracing::warn!("Kafka metadata is not reachable; /readyz answers 503");
            }
        }
        state.metrics.kafka_ready.set(ready as i64);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
