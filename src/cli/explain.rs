//! `mutebridge policy explain`: which rules match a normalized event, and
//! the exact requests their actions would send; with `--state`, first
//! what the stale-event guard lets through against a group's state.
//! Calls nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::config::{Config, Secrets};
use crate::event::{self, Event, EventKind};
use crate::policy::{Planned, Policy, Step};
use crate::state::guard::{self, Hold, Verdict};
use crate::state::{self, GroupState};
use crate::targets::{Target, TargetConfig, Unsendable};

/// `mutebridge policy ...`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print which rules match a normalized event (JSON, as read from the
    /// topic) and the exact requests they would send. Calls nothing.
    Explain {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A `mutebridge.event/v1` JSON file.
        event: PathBuf,
        /// A group state (`mutebridge state get` output): also show what
        /// the stale-event guard would let through against it.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Runs `mutebridge policy ...`.
pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Explain {
        config,
        event,
        state,
    } = args.command;
    explain(config.as_deref(), &event, state.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the explanation of the event in `event_file` under `config`,
/// judged first against the group state in `state_file` when given.
fn explain(
    config: Option<&Path>,
    event_file: &Path,
    state_file: Option<&Path>,
) -> anyhow::Result<()> {
    // The targets' secrets, to sign the requests it prints; no Kafka.
    let (config, _) = Config::load(config, Secrets::TARGETS)?;
    let policy = config.policy();
    let text = std::fs::read_to_string(event_file)
        .with_context(|| format!("cannot read {}", event_file.display()))?;
    let event: Event = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a normalized event ({}); save one from the topic, e.g. with kcat",
            event_file.display(),
            event::SCHEMA_V1
        )
    })?;
    if event.kind == EventKind::Resync {
        let target = event.attributes.get("target").and_then(|t| t.as_str());
        println!(
            "event {}: a resync marker for {} {}: the worker that owns the group applies its current mute state to target {} (see `mutebridge state get`); no rule sees the marker itself",
            event.id,
            event.scope.as_str(),
            event.group_id,
            target.unwrap_or("(none named)")
        );
        return Ok(());
    }
    let Some(state_file) = state_file else {
        print!("{}", explain_text(policy, &config.targets, &event, None));
        return Ok(());
    };
    let text = std::fs::read_to_string(state_file)
        .with_context(|| format!("cannot read {}", state_file.display()))?;
    let state: GroupState = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a group state ({}); save one with `mutebridge state get`",
            state_file.display(),
            state::STATE_SCHEMA_V1
        )
    })?;
    let event_key = state::key(&event.appkey, event.scope, &event.group_id);
    if state.key() != event_key {
        bail!(
            "{} is the state of {}, and the event is about {event_key}",
            state_file.display(),
            state.key()
        );
    }
    if !event.kind.is_mute() {
        println!(
            "guard: {} is not a mute kind; it is not judged against the state\n",
            event.kind
        );
        print!("{}", explain_text(policy, &config.targets, &event, None));
        return Ok(());
    }
    let verdict = guard::judge(Some(&state), &event, false);
    print!("{}", guard_text(&state, &event, &verdict));
    print!(
        "{}",
        explain_text(policy, &config.targets, &event, Some(&verdict))
    );
    Ok(())
}

/// The guard's verdict on a mute `event` against `state`, one line per
/// dimension.
fn guard_text(state: &GroupState, event: &Event, verdict: &Verdict<'_>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "guard: event {} at {} ms against the state of {}",
        event.id,
        event.occurred_at_ms,
        state.key()
    );
    let fresh = verdict.fresh.as_ref();
    if event.kind == EventKind::MuteAll || event.kind == EventKind::UnmuteAll {
        if fresh.is_some() {
            let _ = writeln!(out, "  mute_all: fresh (sent, then recorded)");
        }
    } else if let Some(f) = fresh {
        for m in &f.members {
            let _ = writeln!(out, "  member:{m}: fresh (sent, then recorded)");
        }
    }
    for h in &verdict.held {
        match &h.hold {
            Hold::Stale {
                newer_at_ms,
                newer_event,
            } => {
                let _ = writeln!(
                    out,
                    "  {}: stale (event {newer_event} at {newer_at_ms} ms set it later; not sent)",
                    h.dimension
                );
            }
            Hold::Duplicate => {
                let _ = writeln!(
                    out,
                    "  {}: duplicate (this event set it already; not sent again)",
                    h.dimension
                );
            }
            Hold::Superseded {
                newer_at_ms,
                newer_event,
            } => {
                let _ = writeln!(
                    out,
                    "  {}: superseded (event {newer_event} at {newer_at_ms} ms set it since; only that one is sent)",
                    h.dimension
                );
            }
        }
    }
    out.push('\n');
    out
}

/// The text `mutebridge policy explain` prints: each rule, whether it
/// matches, and the exact requests its actions would send now: the steps
/// of the worker's own plan ([`Policy::plan`]), so a mute target is shown
/// the part the guard let through (`verdict`) and a forwarding target the
/// whole event.
fn explain_text(
    policy: &Policy,
    targets: &BTreeMap<String, TargetConfig>,
    event: &Event,
    verdict: Option<&Verdict<'_>>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {}: {} in {} {} (appkey {}, {} member(s))",
        event.id,
        event.kind.as_str(),
        event.scope.as_str(),
        event.group_id,
        event.appkey,
        event.members.len()
    );
    let explanations = policy.explain(event, verdict);
    if explanations.is_empty() {
        out.push_str("no rules are configured: the event would be committed without action\n");
    }
    for e in explanations {
        match &e.mismatch {
            Some(why) => {
                let _ = writeln!(out, "\nrule {:?}: no match ({why})", &*e.rule);
                continue;
            }
            None => {
                let _ = writeln!(out, "\nrule {:?}: matches", &*e.rule);
            }
        }
        for step in e.steps {
            step_text(&mut out, targets, step);
        }
    }
    out
}

/// One step of the plan: what it sends, or why nothing.
fn step_text(out: &mut String, targets: &BTreeMap<String, TargetConfig>, step: Step<'_>) {
    use std::fmt::Write;
    let (planned, event) = match step {
        Step::Held {
            target,
            action,
            hold,
            ..
        } => {
            let _ = writeln!(out, "  -> {target}, {action}: not sent ({})", hold.name());
            return;
        }
        Step::Carry { planned, event } => (planned, event),
    };
    let action = match planned {
        Planned::Skip { target, why, .. } => {
            let _ = writeln!(out, "  -> {target}: skipped ({why})");
            return;
        }
        Planned::Unmapped { target, why, .. } => {
            let _ = writeln!(out, "  -> {target}: dead-lettered as unmapped ({why})");
            return;
        }
        Planned::Act(action) => action,
    };
    let Some(cfg) = targets.get(&*action.target) else {
        return;
    };
    let target = Target::new(cfg);
    let kind = cfg.kind();
    let now = std::time::SystemTime::now();
    for call in target.split(action) {
        let _ = write!(out, "  -> {} ({kind}), {}: ", call.target, call.op.name());
        match target.render(&call, event, 0, now) {
            Ok(Some(request)) => {
                let _ = writeln!(out, "would send");
                for line in request.redacted().to_string().lines() {
                    let _ = writeln!(out, "     {line}");
                }
            }
            Ok(None) => {
                let _ = writeln!(out, "nothing is sent ({kind} target)");
            }
            Err(Unsendable::Moot(why)) => {
                let _ = writeln!(out, "nothing to do ({why})");
            }
            Err(Unsendable::Invalid(why)) => {
                let _ = writeln!(out, "would be dead-lettered ({why})");
            }
        }
    }
}
