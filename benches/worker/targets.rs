//! Three targets against one. The same `--events` preloaded mute-alls go
//! through a worker with one `discard` target and through one with three,
//! each in consumer groups of its own, with the mute state on (the
//! default); the two passes alternate which goes first. Each target is a
//! consumer group of its own, so with three the worker reads and judges
//! every event four times (three targets and the state keeper). Reported:
//! each target's events/s, and the slowest of the three against the
//! single target of the same run.

use mutebridge::Cluster;

use crate::common::*;
use crate::throughput::{discard_config, worker_pass};
use crate::Args;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## three targets against one: {} events over {} groups, discard targets, state on",
        args.events, args.groups
    );
    println!("run | one target ev/s | three targets ev/s (a / b / c) | slowest of three / one");
    let mut ratios = Vec::new();
    let mut singles = Vec::new();
    let mut slowest = Vec::new();
    for i in 1..=args.runs {
        let one = discard_config("bench-one", &["sink"], true)?;
        let three = discard_config("bench-three", &["a", "b", "c"], true)?;
        let cluster = Cluster::connect(&one.kafka).await?;
        preload(&one, cluster.bootstrap_servers(), args.events, args.groups)?;
        let (single, trio) = if i % 2 == 0 {
            let trio = worker_pass(args.events, &cluster, &three, &["a", "b", "c"]).await?;
            (
                worker_pass(args.events, &cluster, &one, &["sink"]).await?,
                trio,
            )
        } else {
            let single = worker_pass(args.events, &cluster, &one, &["sink"]).await?;
            (
                single,
                worker_pass(args.events, &cluster, &three, &["a", "b", "c"]).await?,
            )
        };
        let single = single[0].per_s;
        let low = trio.iter().map(|p| p.per_s).fold(f64::INFINITY, f64::min);
        println!(
            "{i} | {single:.0} | {:.0} / {:.0} / {:.0} | {:.2}",
            trio[0].per_s,
            trio[1].per_s,
            trio[2].per_s,
            low / single
        );
        ratios.push(low / single);
        singles.push(single);
        slowest.push(low);
    }
    println!(
        "median | {:.0} | slowest {:.0} | {:.2}",
        median(singles.into_iter()),
        median(slowest.into_iter()),
        median(ratios.into_iter())
    );
    Ok(())
}
