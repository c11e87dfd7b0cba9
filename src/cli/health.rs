//! `mutebridge health`: the container health check (the runtime image has
//! no curl). Exit 0 when the URL answers 200 in time, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// `mutebridge health`: what to ask, how long to wait.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

/// Runs `mutebridge health`.
pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let healthy = healthy(&args.url, Duration::from_secs(args.timeout)).await?;
    Ok(super::exit_code(healthy))
}

/// True when `url` answered 200 within `timeout`; says why not on stderr.
async fn healthy(url: &str, timeout: Duration) -> anyhow::Result<bool> {
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
