//! `mutebridge check-config FILE [--resolve ROLE]`: load a config file as
//! the services would and say what it holds, or which key in it is wrong.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::config::{Config, Secrets};

/// `mutebridge check-config`: the file, and whose secrets to read.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    file: PathBuf,
    /// Also read the `env:` secrets the given role uses, as it would at
    /// start: ingest (apps, [kafka.client]), worker (targets, Redis
    /// URLs, [kafka.client]) or all.
    #[arg(long, value_enum)]
    resolve: Option<Resolve>,
}

/// Which secrets `check-config --resolve` reads from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Resolve {
    /// What `mutebridge ingest` reads: the apps' secrets and `[kafka.client]`'s.
    Ingest,
    /// What `mutebridge worker` reads: the targets' secrets, Redis URLs and `[kafka.client]`'s.
    Worker,
    /// What `mutebridge reconcile` reads: the apps' REST credentials and `[kafka.client]`'s
    /// (and the targets', when it schedules verify passes).
    Reconcile,
    /// Every secret (`mutebridge run` reads ingest's and the worker's).
    All,
}

impl Resolve {
    fn secrets(self) -> Secrets {
        match self {
            Resolve::Ingest => Secrets::INGEST,
            Resolve::Worker => Secrets::WORKER,
            Resolve::Reconcile => Secrets::RECONCILE,
            Resolve::All => Secrets::ALL,
        }
    }
}

/// Runs `mutebridge check-config`.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    check(&args.file, args.resolve)?;
    Ok(ExitCode::SUCCESS)
}

/// Loads `file` as the services would; without `resolve`, `env:` secrets
/// are only checked to name a variable (a deployment repository's CI has
/// none of them).
fn check(file: &Path, resolve: Option<Resolve>) -> anyhow::Result<()> {
    let secrets = resolve.map_or(Secrets::NONE, Resolve::secrets);
    let (mut config, _) = Config::load(Some(file), secrets)?;
    // A reconcile role that schedules verify passes reads the targets' too.
    if resolve == Some(Resolve::Reconcile) && config.verify.interval_seconds > 0 {
        let with_targets = Secrets {
            targets: true,
            ..secrets
        };
        config = Config::load(Some(file), with_targets)?.0;
    }
    let resolved = match resolve {
        None => "secrets not read; --resolve ROLE reads them",
        Some(Resolve::Ingest) => "the ingest role's secrets read",
        Some(Resolve::Worker) => "the worker role's secrets read",
        Some(Resolve::Reconcile) => "the reconcile role's secrets read",
        Some(Resolve::All) => "every secret read",
    };
    println!(
        "{}: OK ({} app(s), kafka {} topic {}, {} target(s), {} rule(s); {resolved})",
        file.display(),
        config.easemob.apps.len(),
        config.kafka.brokers,
        config.kafka.topic,
        config.targets.len(),
        config.policy.rules.len()
    );
    if config.easemob.apps.is_empty() {
        println!("  no [[easemob.apps]]: usable for `mutebridge worker` only");
    }
    // What each limit means, since it is the whole group's, not a pod's.
    for (name, target) in &config.targets {
        let Some(spec) = target.limit_spec(name) else {
            continue;
        };
        let Some(rate) = spec.rate_per_second else {
            continue;
        };
        let how = match spec.config.mode {
            crate::limit::Mode::PartitionShare => {
                "each worker replica takes its partition share".to_owned()
            }
            crate::limit::Mode::Redis => format!(
                "kept exactly in Redis under {}",
                crate::limit::redis::key(spec.kind, &spec.app)
            ),
        };
        println!(
            "  {name}: {rate}/s for the whole worker group, {:.2}/s used (headroom {}); {how}",
            rate * spec.config.headroom,
            spec.config.headroom
        );
    }
    Ok(())
}
