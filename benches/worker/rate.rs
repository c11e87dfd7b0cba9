//! The rate achieved against a limited provider, 1 and 2 replicas, both
//! modes. `--rate-events` mute-alls on distinct groups (evenly spread over
//! the partitions) go to the local ZEGO server from tests/it/providers.rs,
//! which admits at most `--rate` requests in any sliding second and refuses
//! the rest with ZEGO's rate-limit code 660300005. The target has
//! `rate_per_second = --rate` (the whole group's limit) and the default
//! headroom 0.95. It runs with 1 and with 2 workers in one consumer group,
//! in `partition_share` mode and in `redis` mode (against a `redis-server`
//! the benchmark starts on a free loopback port; skipped with a note when
//! none is installed). The events are produced once the group has settled.
//! Reported: calls/s between the first and the last call the server
//! accepted. Then the pacing alone (no Kafka, no provider): governor's
//! `until_ready` against sleeping to fixed slots, at the single-replica
//! share.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use mutebridge::{Cluster, Config};

use crate::common::*;
use crate::fixtures;
use crate::providers::{FakeZego, Provider};
use crate::Args;

/// How the replicas keep to the limit, as `rate_limit.mode` names it.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    PartitionShare,
    Redis,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PartitionShare => "partition_share",
            Mode::Redis => "redis",
        }
    }
}

struct RateRun {
    calls: usize,
    per_s: f64,
    rejected_for_rate: u64,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## achieved rate: {} mute-alls (distinct groups, evenly spread over {PARTITIONS} partitions) to a ZEGO server allowing {}/s in any sliding second; target rate_per_second = {}, headroom 0.95",
        args.rate_events, args.rate, args.rate
    );
    // The record size the sizing in the README multiplies out.
    let sample = serde_json::to_vec(&mute_all(0, "262246968131585"))?;
    println!(
        "(one normalized mute-all event: {} bytes of JSON value, a 15-byte key)",
        sample.len()
    );
    let redis = if fixtures::redis_installed() {
        Some(fixtures::RedisServer::start())
    } else {
        println!("(redis mode skipped: no redis-server; apt-get install redis-server)");
        None
    };
    println!("mode | replicas | run | calls accepted | calls/s | of the limit | rejected for rate (660300005)");
    let mut summary = Vec::new();
    for mode in [Mode::PartitionShare, Mode::Redis] {
        let url = match (mode, &redis) {
            (Mode::PartitionShare, _) => None,
            (Mode::Redis, Some(r)) => Some(r.url()),
            (Mode::Redis, None) => continue,
        };
        for replicas in [1, 2] {
            let mut runs = Vec::new();
            for i in 1..=args.runs {
                let r = rate_run(args, mode, url.as_deref(), replicas).await?;
                println!(
                    "{} | {replicas} | {i} | {} | {:.2} | {:.1} % | {}",
                    mode.name(),
                    r.calls,
                    r.per_s,
                    100.0 * r.per_s / f64::from(args.rate),
                    r.rejected_for_rate
                );
                runs.push(r);
            }
            summary.push((mode, replicas, runs));
        }
    }
    println!("\nmode | replicas | median calls/s | of the limit | rejected for rate (all runs)");
    for (mode, replicas, runs) in &summary {
        let per_s = median(runs.iter().map(|r| r.per_s));
        println!(
            "{} | {replicas} | {per_s:.2} | {:.1} % | {}",
            mode.name(),
            100.0 * per_s / f64::from(args.rate),
            runs.iter().map(|r| r.rejected_for_rate).sum::<u64>()
        );
    }
    pacing(args).await;
    Ok(())
}

/// Why one replica on its share paces a little under its rate: governor
/// counts the next cell from when the caller actually woke, so each
/// wake-up's lateness (tokio's timer rounds up to the millisecond) is lost;
/// sleeping to fixed slots (what the Redis schedule hands out) loses none.
/// The same rate, the same calls, no Kafka and no provider.
async fn pacing(args: &Args) {
    use governor::{Quota, RateLimiter};
    const CALLS: u32 = 100;
    let per_s = f64::from(args.rate) * 0.95;
    let period = Duration::from_secs_f64(1.0 / per_s);
    println!(
        "\n## pacing alone: {CALLS} waits at {per_s:.2}/s (the single-replica share)\nrun | governor until_ready, calls/s | sleep_until fixed slots, calls/s"
    );
    let (mut governed, mut slotted) = (Vec::new(), Vec::new());
    for i in 1..=args.runs {
        let limiter = RateLimiter::direct(Quota::with_period(period).expect("positive period"));
        let start = Instant::now();
        for _ in 0..CALLS {
            limiter.until_ready().await;
        }
        let g = f64::from(CALLS - 1) / start.elapsed().as_secs_f64();
        let start = tokio::time::Instant::now();
        for k in 0..CALLS {
            tokio::time::sleep_until(start + period * k).await;
        }
        let f = f64::from(CALLS - 1) / start.elapsed().as_secs_f64();
        println!("{i} | {g:.2} | {f:.2}");
        governed.push(g);
        slotted.push(f);
    }
    println!(
        "median | {:.2} | {:.2}",
        median(governed.into_iter()),
        median(slotted.into_iter())
    );
}

async fn rate_run(
    args: &Args,
    mode: Mode,
    redis_url: Option<&str>,
    replicas: usize,
) -> anyhow::Result<RateRun> {
    let limit = usize::try_from(args.rate)?;
    let zego = Arc::new(FakeZego::start_sliding(ZEGO_APP, ZEGO_SECRET, limit).await);
    let redis = redis_url
        .map(|u| format!("url = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[kafka]
topic = "{TOPIC}"
partitions = {PARTITIONS}

# The mock coordinator holds a join for max.poll.interval.ms: keep the
# second replica's rebalance quick, as the tests do.
[kafka.client]
"max.poll.interval.ms" = "7000"
"session.timeout.ms" = "6000"

[worker]
group_id = "bench-rate"
commit_interval_ms = 100

[targets.zego]
kind = "zego"
base_url = "{}"
app_id = {ZEGO_APP}
server_secret = "{ZEGO_SECRET}"
from_user_id = "moderation-bot"
rate_per_second = {}
[targets.zego.rate_limit]
mode = "{}"
{redis}
[[policy.rules]]
name = "mirror group mutes to ZEGO"
when = {{ scope = "group", kinds = ["mute_all"] }}
then = [{{ target = "zego", group = "{{group_id}}" }}]
"#,
        zego.base_url(),
        args.rate,
        mode.name(),
    );
    let config = Config::parse(&text, Path::new("bench-rate.toml"))?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let mut workers = Vec::new();
    for _ in 0..replicas {
        workers.push(RunningWorker::start(&config, &cluster).await?);
    }
    // The events go in once the group has settled, so every replica works
    // from the first call on.
    let share = f64::from(args.rate) * 0.95 / replicas as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers.iter().all(|w| {
        let s = w
            .metrics
            .worker
            .limits
            .rate_limit_share
            .with_label_values(&["zego"])
            .get();
        (s - share).abs() < 1e-6
    }) {
        ensure_before(
            deadline,
            "the consumer group did not split the partitions evenly",
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let groups = fixtures::spread_groups(args.rate_events, PARTITIONS, |i| {
        format!("{}", 263_000_000_000_000u64 + i)
    });
    preload_with(&config, cluster.bootstrap_servers(), groups.len(), |i| {
        groups[i].clone()
    })?;
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * args.rate_events as u64);
    let applied = |w: &RunningWorker| events(&w.metrics, "zego", "applied");
    while workers.iter().map(applied).sum::<u64>() < args.rate_events as u64 {
        ensure_before(deadline, "the workers did not apply every event")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.stop().await?;
    }
    let calls = zego.calls();
    if calls.len() != args.rate_events {
        bail!(
            "the provider accepted {} calls for {} events",
            calls.len(),
            args.rate_events
        );
    }
    let span = calls
        .last()
        .expect("calls")
        .at
        .duration_since(calls[0].at)
        .as_secs_f64();
    Ok(RateRun {
        calls: calls.len(),
        per_s: (calls.len() - 1) as f64 / span,
        rejected_for_rate: zego.rate_limited(),
    })
}
