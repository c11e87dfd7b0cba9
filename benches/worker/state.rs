//! Rebuild and memory of the group states. `--state-groups` group states
//! (a mute-all and two member mutes each, event ids shaped like Easemob's)
//! are preloaded into the state topic, and a worker starts and reads them:
//! the rebuild time is the state keeper's own
//! `mutebridge_worker_state_rebuild_seconds`. The heap the states take,
//! held as the worker holds them (one map per partition from record key to
//! state), is counted by the benchmark's allocator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mutebridge::event::Scope;
use mutebridge::key_partition;
use mutebridge::producer_config;
use mutebridge::state::{GroupState, MemberState, MuteAllState};
use mutebridge::Cluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::*;
use crate::throughput::discard_config;
use crate::Args;

struct RebuildRun {
    rebuild_s: f64,
    bytes_per_group: f64,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let n = args.state_groups;
    println!(
        "\n## state rebuild: {n} group states (mute-all + 2 members each) in the state topic, {PARTITIONS} partitions"
    );
    println!("run | rebuild s | groups/s | heap bytes per group | heap for 1 M groups");
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let r = rebuild_run(n).await?;
        println!(
            "{i} | {:.2} | {:.0} | {:.0} | {:.0} MiB",
            r.rebuild_s,
            n as f64 / r.rebuild_s,
            r.bytes_per_group,
            r.bytes_per_group * 1e6 / 1048576.0
        );
        runs.push(r);
    }
    let rebuild_s = median(runs.iter().map(|r| r.rebuild_s));
    let per_group = median(runs.iter().map(|r| r.bytes_per_group));
    println!(
        "median | {rebuild_s:.2} | {:.0} | {per_group:.0} | {:.0} MiB",
        n as f64 / rebuild_s,
        per_group * 1e6 / 1048576.0
    );
    Ok(())
}

/// A group's state as the worker writes it after a mute-all and a member
/// mute of two members.
fn group_state(i: usize) -> GroupState {
    let now = now_ms();
    let group = format!("{}", 262_000_000_000_000u64 + i as u64);
    let mut state = GroupState::new("bench#app", Scope::Group, &group);
    state.mute_all = Some(MuteAllState {
        muted: true,
        at_ms: now,
        event_id: format!("bench#app_{}", uuid_like(i, 0)),
    });
    for m in 0..2 {
        state.members.insert(
            format!("user-{i}-{m}"),
            MemberState {
                muted: true,
                until_ms: Some(now + 3_600_000),
                at_ms: now,
                event_id: format!("bench#app_{}", uuid_like(i, 1)),
            },
        );
    }
    state.updated_at_ms = now;
    state
}

/// A callId-sized unique string (Easemob's are `{appkey}_{uuid}`).
fn uuid_like(i: usize, salt: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, salt)
}

async fn rebuild_run(n: usize) -> anyhow::Result<RebuildRun> {
    let config = discard_config("bench-rebuild", &["sink"], true)?;
    let cluster = Cluster::connect(&config.kafka).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let state_topic = config.worker.state_topic.clone();
    cluster
        .embedded()
        .expect("embedded")
        .create_topic(&state_topic, PARTITIONS)?;
    let records: Vec<(i32, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let s = group_state(i);
            let p = key_partition(s.group_id.as_bytes(), PARTITIONS);
            (p, s.key(), serde_json::to_vec(&s).expect("state"))
        })
        .collect();
    {
        let producer: BaseProducer = producer_config(&config.kafka, &bootstrap)
            .create()
            .context("bench producer")?;
        for (p, key, payload) in &records {
            let record = BaseRecord::to(&state_topic)
                .partition(*p)
                .key(key.as_str())
                .payload(payload.as_slice());
            send(&producer, record)?;
        }
        producer.flush(Duration::from_secs(60))?;
        for p in 0..PARTITIONS {
            let (low, _) =
                producer
                    .client()
                    .fetch_watermarks(&state_topic, p, Duration::from_secs(5))?;
            if low != 0 {
                bail!("the embedded cluster dropped states of partition {p}: use fewer --state-groups");
            }
        }
    }

    // The heap the states take, held the way the worker holds them: one
    // map per partition from record key to parsed state.
    COUNTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = LIVE.load(std::sync::atomic::Ordering::SeqCst);
    let mut tables: HashMap<i32, HashMap<String, GroupState>> = HashMap::new();
    for (p, key, payload) in &records {
        let state: GroupState = serde_json::from_slice(payload)?;
        tables.entry(*p).or_default().insert(key.clone(), state);
    }
    let bytes_per_group =
        (LIVE.load(std::sync::atomic::Ordering::SeqCst) - before) as f64 / n as f64;
    COUNTING.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(tables);
    drop(records);

    let worker = RunningWorker::start(&config, &cluster).await?;
    let metrics = worker.metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    let held = metrics
        .worker
        .pipelines
        .state_groups
        .with_label_values(&["state"]);
    let rebuilt = metrics
        .worker
        .pipelines
        .state_rebuild
        .with_label_values(&["state"]);
    while held.get() < n as i64 || rebuilt.get_sample_count() == 0 {
        ensure_before(deadline, "the worker did not rebuild every state")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rebuild_s = rebuilt.get_sample_sum();
    worker.stop().await?;
    Ok(RebuildRun {
        rebuild_s,
        bytes_per_group,
    })
}
