//! The targets that send nothing: `log` prints each action (as the exact
//! request of the target named in its `as` table, or as JSON), `discard`
//! accepts every action and does nothing (benchmarks, dry runs).

use serde::Deserialize;

use super::{Request, TargetConfig};
use crate::config::error::Invalid;
use crate::event::Event;
use crate::policy::Action;

/// `kind = "log"`: prints what would be sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The target whose requests are printed (`[targets.NAME.as]`, with
    /// its own `kind`); without it the action is printed as JSON.
    #[serde(rename = "as", default)]
    pub render_as: Option<Box<TargetConfig>>,
}

/// `kind = "discard"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardConfig {}

impl LogConfig {
    /// Keys relative to the target.
    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(inner) = &self.render_as else {
            return Ok(());
        };
        match **inner {
            TargetConfig::Log(_) | TargetConfig::Discard(_) => Err(Invalid::new(
                "as.kind",
                "must be zego, rongcloud, tencent, agora or webhook (the target whose requests are printed)",
            )),
            _ => inner.validate().map_err(|e| e.under("as")),
        }
    }
}

/// Prints what the `log` target `name` would have sent for `call`: the
/// request of its `as` target with the signatures masked, or, without
/// `as`, the action and its event as one JSON line.
pub fn print(name: &str, call: &Action, request: Option<&Request>, event: &Event) {
    match request {
        Some(r) => println!(
            "[{name}] rule {:?} would send:\n{}\n",
            &*call.rule,
            r.redacted()
        ),
        None => println!("[{name}] {}", super::Target::describe(call, event)),
    }
}
