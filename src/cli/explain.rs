//! `mutebridge policy explain`: which rules match a normalized event, and
//! the exact requests their actions would send. Calls nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::event::{self, Event};
use crate::policy::{Planned, Policy};
use crate::target::{Target, TargetConfig, Unsendable};

/// Prints the explanation of the event in `event_file` under `config`.
pub fn run(config: Option<&Path>, event_file: &Path) -> anyhow::Result<()> {
    let (config, _) = Config::load(config)?;
    let policy = config.policy()?;
    let text = std::fs::read_to_string(event_file)
        .with_context(|| format!("cannot read {}", event_file.display()))?;
    let event: Event = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a normalized event ({}); save one from the topic, e.g. with kcat",
            event_file.display(),
            event::SCHEMA_V1
        )
    })?;
    print!("{}", explain_text(&policy, &config.targets, &event));
    Ok(())
}

/// The text `mutebridge policy explain` prints: each rule, whether it
/// matches, and the exact requests its actions would send now.
fn explain_text(
    policy: &Policy,
    targets: &BTreeMap<String, TargetConfig>,
    event: &Event,
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
    let explanations = policy.explain(event);
    if explanations.is_empty() {
        out.push_str("no rules are configured: the event would be committed without action\n");
    }
    let now = std::time::SystemTime::now();
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
        for p in e.planned {
            match p {
                Planned::Skip { target, why, .. } => {
                    let _ = writeln!(out, "  -> {target}: skipped ({why})");
                }
                Planned::Unmapped { target, why, .. } => {
                    let _ = writeln!(out, "  -> {target}: dead-lettered as unmapped ({why})");
                }
                Planned::Act(action) => {
                    let Some(cfg) = targets.get(&*action.target) else {
                        continue;
                    };
                    let target = Target::new(cfg);
                    let kind = cfg.kind();
                    for call in target.split(action) {
                        let _ = write!(out, "  -> {} ({kind}), {}: ", call.target, call.op.name());
                        match target.render(&call, event, 0, now) {
                            Ok(Some(request)) => {
                                let _ = writeln!(out, "would send");
                                for line in request.to_string().lines() {
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
            }
        }
    }
    out
}
