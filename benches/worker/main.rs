//! `cargo bench --bench worker`: how fast the worker turns events into
//! finished, committed work, measured on the embedded Kafka cluster. One
//! module per measurement, each repeated `--runs` times on a fresh cluster
//! and summarised by its median (method and results: benches/README.md):
//!
//! - [`throughput`]: events/s to a `discard` target, against a bare
//!   consumer in the same run, with the mute state off and on;
//! - [`targets`]: events/s of each target with three targets against one,
//!   alternating which goes first;
//! - [`catchup`]: a target down while events of many groups pile up, then
//!   back: calls sent and seconds until every group is right;
//! - [`rate`]: the rate achieved against a provider that enforces its
//!   limit, for 1 and 2 replicas in both rate-limit modes, and the pacing
//!   alone;
//! - [`state`]: rebuilding group states from the state topic, and the heap
//!   they take.

#[path = "../../tests/it/fixtures.rs"]
mod fixtures;
#[path = "../../tests/it/held.rs"]
mod held;
#[path = "../../tests/it/providers.rs"]
mod providers;

mod catchup;
mod common;
mod rate;
mod state;
mod targets;
mod throughput;

use clap::Parser;

// The allocator the binary runs with, counting live bytes (for the heap
// the group states take).
#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

#[derive(Parser, Debug)]
#[command(about = "Worker benchmark (see benches/README.md)")]
pub struct Args {
    /// Events preloaded for the throughput measurements.
    /// At most about 130 000: the embedded cluster keeps 5 MiB per partition.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Distinct group IDs they are spread over.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Mute-all events sent through the 20 req/s target (20 per partition).
    #[arg(long, default_value_t = 240)]
    rate_events: usize,
    /// The provider's limit and the target's `rate_per_second`.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Events queued for the catch-up measurement.
    #[arg(long, default_value_t = 100_000)]
    catchup_events: usize,
    /// Distinct groups they are spread over.
    #[arg(long, default_value_t = 10_000)]
    catchup_groups: usize,
    /// The limit of the provider that catches up (calls/s).
    #[arg(long, default_value_t = 500)]
    catchup_rate: u32,
    /// A real Kafka cluster (`host:port,...`): the throughput measurement
    /// runs on it too, beside the embedded cluster, in the same runs.
    #[arg(long)]
    kafka: Option<String>,
    /// Repetitions of each measurement; summaries are medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the throughput measurement.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the three-targets-against-one measurement.
    #[arg(long)]
    no_targets: bool,
    /// Skip the catch-up measurement.
    #[arg(long)]
    no_catchup: bool,
    /// Skip the rate measurement.
    #[arg(long)]
    no_rate: bool,
    /// Group states preloaded for the rebuild measurement.
    #[arg(long, default_value_t = 100_000)]
    state_groups: usize,
    /// Skip the state rebuild and memory measurement.
    #[arg(long)]
    no_state: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The worker's log, with RUST_LOG=info (or debug) on stderr.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        println!("worker benchmark: {} run(s) per measurement", args.runs);
        if !args.no_throughput {
            throughput::run(&args).await?;
        }
        if !args.no_targets {
            targets::run(&args).await?;
        }
        if !args.no_catchup {
            catchup::run(&args).await?;
        }
        if !args.no_rate {
            rate::run(&args).await?;
        }
        if !args.no_state {
            state::run(&args).await?;
        }
        Ok(())
    })
}
