//! Catch-up after an outage. A ZEGO stand-in (tests/it/providers.rs) is
//! down (HTTP 503) while `--catchup-events` mute-all / unmute-all events of
//! `--catchup-groups` groups (each group's events alternating, newer ones
//! later) pile up; the target's circuit breaker opens and the state keeper
//! records every group's newest state meanwhile. Then the provider comes
//! back (its limit `--catchup-rate` calls/s, the target's `rate_per_second`
//! the same). Reported: the calls it accepted after recovery, against the
//! distinct (group, dimension) pairs (one per group here: the group-wide
//! mute), and the seconds from recovery until every group is in its final
//! state there, against the time the rate limit alone needs for one call
//! per group.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use mutebridge::{Cluster, Config};

use crate::common::*;
use crate::providers::{FakeZego, Provider};
use crate::Args;

struct Run {
    calls: usize,
    seconds: f64,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let (n, groups, rate) = (args.catchup_events, args.catchup_groups, args.catchup_rate);
    let floor = groups as f64 / (f64::from(rate) * 0.95);
    println!(
        "\n## catch-up: {n} events over {groups} groups queued while ZEGO is down, then back at {rate} calls/s (headroom 0.95: one call per group takes {floor:.1} s)"
    );
    println!("run | calls after recovery | distinct (group, dimension) | seconds until every group is right");
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let r = one(n, groups, rate).await?;
        println!("{i} | {} | {groups} | {:.1}", r.calls, r.seconds);
        runs.push(r);
    }
    println!(
        "median | {:.0} | {groups} | {:.1}",
        median(runs.iter().map(|r| r.calls as f64)),
        median(runs.iter().map(|r| r.seconds))
    );
    Ok(())
}

async fn one(n: usize, groups: usize, rate: u32) -> anyhow::Result<Run> {
    let zego = Arc::new(FakeZego::start(ZEGO_APP, ZEGO_SECRET, f64::from(rate)).await);
    zego.set_down(true);
    let text = format!(
        r#"
[kafka]
topic = "{TOPIC}"
partitions = {PARTITIONS}

[worker]
group_id = "bench-catchup"
commit_interval_ms = 100
[worker.circuit_breaker]
probe_interval_seconds = 1
max_probe_interval_seconds = 2

[targets.zego]
kind = "zego"
base_url = "{}"
app_id = {ZEGO_APP}
server_secret = "{ZEGO_SECRET}"
from_user_id = "moderation-bot"
rate_per_second = {rate}

[[policy.rules]]
name = "mirror group mutes to ZEGO"
when = {{ scope = "group", kinds = ["mute_all", "unmute_all"] }}
then = [{{ target = "zego", group = "{{group_id}}" }}]
"#,
        zego.base_url(),
    );
    let config = Config::parse(&text, Path::new("bench-catchup.toml"))?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let worker = RunningWorker::start(&config, &cluster).await?;
    // Each group's events alternate mute / unmute, every one newer than
    // the last; the final state is its last event's.
    let base = now_ms() - 3_600_000;
    let group = |i: usize| format!("{}", 264_000_000_000_000u64 + (i % groups) as u64);
    let mut last: HashMap<String, bool> = HashMap::new();
    for i in 0..n {
        last.insert(group(i), (i / groups).is_multiple_of(2));
    }
    preload_events(&config, cluster.bootstrap_servers(), n, |i| {
        group_mute(
            i,
            &group(i),
            (i / groups).is_multiple_of(2),
            base + i as i64,
        )
    })?;
    // Wait for the keeper to have every group's newest state.
    let deadline = Instant::now() + Duration::from_secs(300);
    let recorded = || {
        worker
            .metrics
            .worker
            .events
            .state_events
            .with_label_values(&["recorded"])
            .get()
    };
    while recorded() < n as u64 {
        ensure_before(deadline, "the state keeper did not record every event")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = zego.calls().len();
    if before != 0 {
        bail!("{before} calls accepted while the provider was down");
    }
    zego.set_down(false);
    let back = Instant::now();
    let right = |calls: &[crate::providers::Call]| {
        let mut at: HashMap<&str, i64> = HashMap::new();
        for c in calls {
            at.insert(c.id.as_str(), c.duration.unwrap_or(0));
        }
        last.iter()
            .all(|(g, muted)| at.get(g.as_str()) == Some(&if *muted { -1 } else { 0 }))
    };
    let deadline = Instant::now() + Duration::from_secs(60 + 4 * (groups as u64) / u64::from(rate));
    while !right(&zego.calls()) {
        ensure_before(deadline, "not every group reached its final state")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = back.elapsed().as_secs_f64();
    // Anything still to come would be counted too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = zego.calls().len();
    worker.stop().await?;
    if !zego.rejected().is_empty() {
        bail!("the provider rejected calls: {:?}", &zego.rejected()[..1]);
    }
    Ok(Run { calls, seconds })
}
