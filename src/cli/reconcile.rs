//! `mutebridge reconcile`: compare the groups' mute state with Easemob's
//! own and publish corrections for what differs ([`crate::reconcile`]).
//! `--once` (the first sync of a deployment, or a repair on demand) runs
//! one pass with progress on stderr and a summary; without it, the role
//! passes every `reconcile.interval_seconds` and serves its metrics, and
//! reads the targets back every `verify.interval_seconds` when set
//! ([`crate::verify`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::config::{Config, Secrets};
use crate::kafka::Cluster;
use crate::metrics::Metrics;
use crate::reconcile::{describe, Options, Reconciler};
use crate::verify::Verifier;

/// `mutebridge reconcile`: a pass or the role, over which groups.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// One pass, progress on stderr, a summary, then exit (the first
    /// sync of a deployment); exits 1 if some groups or apps could not
    /// be read, or were held back (the summary names them).
    #[arg(long)]
    once: bool,
    /// Only groups whose ID matches this pattern (`*` matches any run
    /// of characters).
    #[arg(long)]
    groups: Option<String>,
    /// Print the differences; publish nothing (implies --once).
    #[arg(long)]
    dry_run: bool,
}

/// Runs `mutebridge reconcile`: one pass with `--once` or `--dry-run`,
/// else the role until SIGTERM or Ctrl-C.
pub async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let Some(file) = args.config.as_deref() else {
        bail!("reconcile needs --config: the app's [easemob.apps.rest] and the cluster the workers use");
    };
    let (config, _) = Config::load(Some(file), Secrets::RECONCILE)?;
    let once = args.once || args.dry_run;
    // Scheduled verify passes sign their reads: the targets' secrets too.
    let verifies = !once && config.verify.interval_seconds > 0;
    let config = match verifies {
        true => {
            Config::load(
                Some(file),
                Secrets {
                    targets: true,
                    ..Secrets::RECONCILE
                },
            )?
            .0
        }
        false => config,
    };
    if config.kafka.is_embedded() {
        bail!("kafka.brokers is \"embedded\": the embedded cluster lives inside a running mutebridge; point --config at the cluster the workers use");
    }
    if !once && config.reconcile.interval_seconds == 0 && !verifies {
        bail!("reconcile.interval_seconds is 0 (only on demand): run `mutebridge reconcile --once`, or set an interval to run the role");
    }
    // Warnings (a group left unread, a token refused) reach stderr in
    // --once too, beside the progress lines.
    super::run::init_logging();
    let metrics = Metrics::new();
    let cluster = Cluster::connect(&config.kafka).await?;
    let options = Options {
        groups: args.groups,
        dry_run: args.dry_run,
        progress: once,
    };
    if once {
        let reconciler = Reconciler::start(&config, &cluster, &metrics).await?;
        return one_pass(&reconciler, &options, &config.kafka.topic).await;
    }
    // The role: reconcile passes when an interval and an app's REST API are
    // set, verify passes when `[verify] interval_seconds` is.
    let reconciles = config.reconcile.interval_seconds > 0
        && config.easemob.apps.iter().any(|a| a.rest.is_some());
    let reconciler = match reconciles || !verifies {
        true => Some(Reconciler::start(&config, &cluster, &metrics).await?),
        false => None,
    };
    let verifier = match verifies {
        true => Some(Verifier::start(&config, &cluster, &metrics, None, true).await?),
        false => None,
    };
    serve(reconciler, verifier, options, &config, &metrics).await
}

/// `--once` and `--dry-run`: one pass, the differences (dry run) on stdout,
/// the summary on stderr; exits 1 when some groups or apps could not be
/// read or were held back (the summary names them).
async fn one_pass(
    reconciler: &Reconciler,
    options: &Options,
    topic: &str,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "reading Easemob's mute state{}",
        if options.dry_run {
            " (dry run: nothing is published)"
        } else {
            ""
        }
    );
    // A dry run prints each difference as it is found: a first sync may
    // find one per group, more than is worth holding.
    let print = |e: &crate::event::Event| {
        if !options.dry_run {
            return;
        }
        let what = match (&e.mute, e.members.is_empty()) {
            (Some(crate::event::Mute::Until { until_ms: Some(u) }), _) => {
                format!(" {} until {u}", e.members.join(","))
            }
            (_, false) => format!(" {}", e.members.join(",")),
            (_, true) => String::new(),
        };
        println!(
            "would publish {} {} {} {}{what} (read at {})",
            e.kind,
            e.appkey,
            e.scope.as_str(),
            e.group_id,
            e.occurred_at_ms
        );
    };
    let summary = reconciler.pass_with(options, &print).await?;
    for line in describe(&summary, options.dry_run, topic) {
        eprintln!("{line}");
    }
    if !summary.complete() {
        let failed: Vec<&str> = summary
            .apps
            .iter()
            .filter(|(_, a)| !a.failures.is_empty())
            .map(|(app, _)| app.as_str())
            .collect();
        eprintln!(
            "incomplete: {} group(s) not read, {} held back, {} app(s) not read to the end{}; running reconcile again reads them",
            summary.unread,
            summary.held_back,
            failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" ({})", failed.join(", "))
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The role: passes until SIGTERM, `/metrics` `/healthz` `/readyz` on
/// `ops.listen` (or `http.listen`: the role has no other port).
async fn serve(
    reconciler: Option<Reconciler>,
    verifier: Option<Verifier>,
    options: Options,
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<ExitCode> {
    let (listen, key) = match config.ops.listen {
        Some(l) => (l, "ops.listen"),
        None => (config.http.listen, "http.listen"),
    };
    let listener = crate::ops::bind(listen, key).await?;
    let bound = listener.local_addr().unwrap_or(listen);
    println!("mutebridge {}", env!("CARGO_PKG_VERSION"));
    println!("  reconcile: http://{bound}  (GET /metrics /healthz /readyz)");
    if reconciler.is_some() {
        println!(
            "  every {} s, scope {:?}; corrections to {}",
            config.reconcile.interval_seconds, config.reconcile.scope, config.kafka.topic
        );
    }
    if let Some(v) = &verifier {
        println!(
            "  verify every {} s: {}{}",
            config.verify.interval_seconds,
            v.target_names().join(", "),
            if config.verify.repair {
                " (repairing)"
            } else {
                " (report only)"
            }
        );
    }
    let ready = crate::ops::Readiness::ready();
    let router = crate::ops::router(metrics.clone(), ready, || {}).fallback(crate::ops::not_found);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let limits = crate::server::Limits::new(&config.http, crate::server::raise_fd_limit());
    let http = tokio::spawn(crate::server::serve(
        listener,
        router,
        limits,
        metrics.http.clone(),
        stopped(stop_rx.clone()),
    ));
    let verifying = verifier.map(|v| tokio::spawn(v.run(stopped(stop_rx.clone()))));
    let mut passes = match reconciler {
        Some(r) => tokio::spawn(r.run(options, stopped(stop_rx))),
        // Verify only: this task ends with the role.
        None => tokio::spawn(async move {
            stopped(stop_rx).await;
            Ok(())
        }),
    };
    let ended = tokio::select! {
        _ = crate::ops::shutdown_signal() => {
            let _ = stop_tx.send(true);
            passes.await
        }
        ended = &mut passes => ended,
    };
    let _ = stop_tx.send(true);
    let _ = http.await;
    if let Some(v) = verifying {
        match v.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => bail!("the verify task failed: {e}"),
        }
    }
    match ended {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e),
        Err(e) => bail!("the reconcile task failed: {e}"),
    }
}
