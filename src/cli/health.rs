//! `mutebridge health`: the container health check (the runtime image has
//! no curl). Exit 0 when the URL answers 200 in time, 1 otherwise.

use std::time::Duration;

/// True when `url` answered 200 within `timeout`; says why not on stderr.
pub async fn run(url: &str, timeout: Duration) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    match client.get(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(true),
        Ok(r) => {
            eprintln!("{url}: {}", r.status());
            Ok(false)
        }
        Err(e) => {
            eprintln!("{url}: {:#}", anyhow::Error::from(e));
            Ok(false)
        }
    }
}
