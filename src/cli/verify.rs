//! `mutebridge verify`: one pass of [`crate::verify`]: read back what each
//! target's provider holds, report each difference (stdout: a line each,
//! or JSON lines), a summary per target (stderr), and with `--repair`
//! publish a repair marker per drifted group for the workers to apply.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::config::{Config, Secrets};
use crate::kafka::Cluster;
use crate::metrics::Metrics;
use crate::verify::{report, Options, Selection, Verifier};

/// `mutebridge verify`: which targets and groups, and what to do about
/// the differences.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this `[targets.NAME]` (default: every target that can be
    /// read back).
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    selection: super::state::Selection,
    /// Print what would be repaired; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Publish a repair marker per drifted group; the worker owning
    /// the group applies it under the target's rate limit.
    #[arg(long)]
    repair: bool,
    /// One JSON object per difference, then a summary per target.
    #[arg(long)]
    json: bool,
}

/// Runs one pass; exits 1 when a place could not be read, a difference
/// cannot be repaired, or differences were found and not repaired.
pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let Some(file) = args.config.as_deref() else {
        bail!("verify needs --config: the targets' credentials and the cluster the workers use");
    };
    // The targets' credentials (it signs its reads) and Kafka's.
    let secrets = Secrets {
        targets: true,
        ..Secrets::KAFKA
    };
    let (config, _) = Config::load(Some(file), secrets)?;
    if config.kafka.is_embedded() {
        bail!("kafka.brokers is \"embedded\": the embedded cluster lives inside a running mutebridge; point --config at the cluster the workers use");
    }
    super::run::init_logging();
    let metrics = Metrics::new();
    let cluster = Cluster::connect(&config.kafka).await?;
    let verifier =
        Verifier::start(&config, &cluster, &metrics, args.target.as_deref(), false).await?;
    eprintln!(
        "reading back {}{}",
        verifier.target_names().join(", "),
        match (args.repair, args.dry_run) {
            (_, true) => " (dry run: nothing is published)",
            (true, false) => " (repairing)",
            (false, false) => " (report only; --repair repairs)",
        }
    );
    let options = Options {
        selection: Selection {
            groups: args.selection.groups,
            appkey: args.selection.appkey,
        },
        repair: args.repair,
        dry_run: args.dry_run,
    };
    let summary = verifier.pass(&options).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let lines = if args.json {
            report::json_lines(&summary)
        } else {
            report::lines(&summary)
        };
        for line in lines {
            // A reader that went away (`| head`) ends the output quietly.
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    }
    for line in report::describe(&summary) {
        eprintln!("{line}");
    }
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
