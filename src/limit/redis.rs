//! The exact limit: one GCRA schedule in Redis, shared by every worker
//! replica (and every mutebridge deployment) that calls the same provider
//! app. One atomic Lua script (`gcra.lua`, run by EVALSHA) reserves the
//! next slot and says how long to wait for it, so a caller sleeps exactly
//! that long and never polls.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};

/// The GCRA script (EVALSHA; loaded on the first NOSCRIPT).
const SCRIPT: &str = include_str!("gcra.lua");

/// A GCRA schedule kept in Redis under one key.
pub struct Gcra {
    client: redis::Client,
    key: String,
    timeout: Duration,
    script: redis::Script,
    /// The open connection; `None` after an error, reopened on next use.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// The key of a provider app's schedule: callers of the same app share it.
pub fn key(target_kind: &str, app: &str) -> String {
    format!("mutebridge:rl:{target_kind}:{app}")
}

impl Gcra {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str, key: String, timeout: Duration) -> RedisResult<Gcra> {
        Ok(Gcra {
            client: redis::Client::open(url)?,
            key,
            timeout,
            script: redis::Script::new(SCRIPT),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reserves the next call at one per `interval` with `burst` back to
    /// back; the wait before that call may go.
    pub async fn reserve(&self, interval: Duration, burst: u32) -> RedisResult<Duration> {
        let t = micros(interval).max(1);
        let tau = t.saturating_mul(u64::from(burst.saturating_sub(1)));
        self.run(t, tau, 0).await
    }

    /// Holds the schedule: nobody's next call goes before `pause` from now.
    /// Returns how long the schedule is held.
    pub async fn pause(&self, pause: Duration) -> RedisResult<Duration> {
        self.run(1, 0, micros(pause).max(1)).await
    }

    /// Whether Redis answers (and loads the script, so the next EVALSHA
    /// finds it).
    pub async fn ping(&self) -> RedisResult<()> {
        let mut conn = self.connection().await?;
        let loaded: RedisResult<String> = self.script.prepare_invoke().load_async(&mut conn).await;
        self.forget_on_error(loaded).await.map(drop)
    }

    async fn run(&self, interval: u64, tau: u64, pause: u64) -> RedisResult<Duration> {
        let mut conn = self.connection().await?;
        let result: RedisResult<i64> = self
            .script
            .key(&self.key)
            .arg(interval)
            .arg(tau)
            .arg(pause)
            .invoke_async(&mut conn)
            .await;
        let us = self.forget_on_error(result).await?;
        Ok(Duration::from_micros(us.max(0) as u64))
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            // Clones share one connection; the lock is only for opening it.
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// A broken connection is not reused: the next call reconnects.
    async fn forget_on_error<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
