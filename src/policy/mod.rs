//! The mute policy: rules that turn a normalized event into actions on
//! targets.
//!
//! A rule matches on scope, kind, appkey and group-ID patterns; each of its
//! `then` entries names a target and where the action goes there
//! (`group = "{group_id}"`, optionally through an ID map). The kind decides
//! the action: `mute_all` mutes everyone, `member_muted` mutes the event's
//! members, and so on. Deciding is pure and cheap; applying is the worker's
//! job. The whole policy is checked against what each target can do
//! ([`Capabilities`], stated by the target itself) when the config is
//! loaded, so a typo is a startup error that names the rule, not a dead
//! letter at 3 a.m.
//!
//! [`config`] is the policy as written, [`compile`] checks and compiles it,
//! [`template`] holds ID templates and group patterns.

pub mod compile;
pub mod config;
mod template;

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::{Event, EventKind, Mute, ReplayScope, Scope};
use crate::state::guard::{Hold, Verdict};
pub use config::{MapConfig, OnUnmapped, PolicyConfig};
pub use template::glob;
use template::Template;

/// What the policy must know of a target to check rules against it. Each
/// target kind states its own (`TargetConfig::capabilities`), so provider
/// facts live with the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The `kind` as written in the config, for messages.
    pub kind: &'static str,
    /// Where its actions go.
    pub addressing: Addressing,
    /// The longest mute it can set, in seconds (`mute_seconds` must fit).
    pub max_mute_seconds: u64,
    /// Whether a mute-all can be given a length.
    pub timed_mute_all: bool,
    /// Whether its chatroom calls can notify members (`need_notify`, `extra`).
    pub chatroom_notify: bool,
}

/// Where a target's actions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// It takes whole events, of any kind (webhook, log, discard).
    Event,
    /// A group: rules give `group`.
    Group,
    /// A group or a chatroom: rules give exactly one of `group`, `chatroom`.
    GroupOrChatroom,
}

/// The kinds a mute target can act on.
const MUTE_KINDS: [EventKind; 4] = EventKind::MUTE;

/// What an action does downstream.
#[derive(Debug, Clone, PartialEq, Eq, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(OpName),
    derive(strum::VariantArray, strum::IntoStaticStr),
    strum(serialize_all = "snake_case")
)]
pub enum Op {
    MuteAll {
        seconds: Option<u64>,
    },
    UnmuteAll,
    MuteMembers {
        length: MuteLength,
    },
    UnmuteMembers,
    /// Hand the event on as it is (webhook, log, discard).
    Forward,
}

/// The `action` label of a step that has no action: the target has none
/// for the event's kind.
pub const NO_ACTION: &str = "none";

impl Op {
    /// The `action` metric label: the variant's name in snake_case.
    pub fn name(&self) -> &'static str {
        OpName::from(self).into()
    }

    /// Every `action` label: each variant's, and [`NO_ACTION`].
    pub fn names() -> impl Iterator<Item = &'static str> {
        <OpName as strum::VariantArray>::VARIANTS
            .iter()
            .map(|&n| n.into())
            .chain([NO_ACTION])
    }
}

/// How long members stay muted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuteLength {
    Permanent,
    /// Until this instant (ms since the epoch): the event's end, or its
    /// time plus the rule's `mute_seconds` (so a mute the provider caps
    /// shorter, renewed, still ends when the rule says); the remaining
    /// time is computed when each request is signed.
    UntilMs(i64),
}

/// Where an action goes at its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Group(String),
    Chatroom(String),
    /// The target takes the whole event (webhook, log, discard).
    Event,
}

/// One decided action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub rule: Arc<str>,
    pub target: Arc<str>,
    pub op: Op,
    pub dest: Dest,
    pub users: Vec<User>,
    pub need_notify: bool,
    pub extra: Option<String>,
}

/// A user an action is about: the provider's ID (through the rule's user
/// map) and the event's member it stands for, so that what the provider
/// answers about a user is recorded against the right member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The ID sent to the provider.
    pub id: String,
    /// The event's member ID.
    pub member: String,
}

impl User {
    /// A member whose provider ID is the same.
    pub fn same(member: &str) -> User {
        User {
            id: member.to_owned(),
            member: member.to_owned(),
        }
    }
}

/// The policy's verdict for one `then` entry of a matching rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    Act(Action),
    /// Nothing to do, by policy (counted as skipped).
    Skip {
        rule: Arc<str>,
        target: Arc<str>,
        /// [`Op::name`], or `none` when the target has no action for the kind.
        action: &'static str,
        why: String,
    },
    /// An ID had no mapping and the rule says to dead-letter.
    Unmapped {
        rule: Arc<str>,
        target: Arc<str>,
        action: &'static str,
        why: String,
    },
}

/// One step of carrying out an event at its targets: a verdict of the
/// policy with the event it is carried out with, or nothing, because the
/// stale-event guard held everything the action would change.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'e> {
    Carry {
        planned: Planned,
        /// The whole event, or (mute targets) the part the guard let through.
        event: &'e Event,
    },
    Held {
        rule: Arc<str>,
        target: Arc<str>,
        /// [`Op::name`] of the action it would have been.
        action: &'static str,
        hold: Hold,
    },
}

impl Planned {
    /// The `action` label: [`Op::name`], or `none`.
    pub fn action(&self) -> &'static str {
        match self {
            Planned::Act(a) => a.op.name(),
            Planned::Skip { action, .. } | Planned::Unmapped { action, .. } => action,
        }
    }

    /// The rule and the target this verdict is for.
    pub fn rule_and_target(&self) -> (&str, &str) {
        match self {
            Planned::Act(a) => (&a.rule, &a.target),
            Planned::Skip { rule, target, .. } | Planned::Unmapped { rule, target, .. } => {
                (rule, target)
            }
        }
    }
}

/// Why a rule did or did not match, for `policy explain`.
#[derive(Debug, Clone)]
pub struct Explanation<'e> {
    pub rule: Arc<str>,
    pub mismatch: Option<String>,
    pub steps: Vec<Step<'e>>,
}

/// A checked, ready-to-use policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: Arc<str>,
    scope: Option<Scope>,
    kinds: Vec<EventKind>,
    appkeys: Vec<String>,
    groups: Vec<String>,
    then: Vec<Then>,
    on_unmapped: OnUnmapped,
}

#[derive(Debug, Clone)]
struct Then {
    target: Arc<str>,
    /// The target takes whole events (webhook, log, discard).
    forwards: bool,
    dest: DestTemplate,
    need_notify: bool,
    extra: Option<String>,
    mute_seconds: Option<u64>,
    group_map: Option<Arc<HashMap<String, String>>>,
    user_map: Option<Arc<HashMap<String, String>>>,
}

#[derive(Debug, Clone)]
enum DestTemplate {
    Group(Template),
    Chatroom(Template),
    Event,
}

impl Policy {
    /// True when there are no rules (every event is committed untouched).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The part of the policy that sends to `target`: its rules with only
    /// their `then` entries for it (rules without one are left out). Each
    /// target's consumer group decides with its own part.
    pub fn only(&self, target: &str) -> Policy {
        let rules = self
            .rules
            .iter()
            .filter_map(|r| {
                let then: Vec<Then> = r
                    .then
                    .iter()
                    .filter(|t| &*t.target == target)
                    .cloned()
                    .collect();
                (!then.is_empty()).then(|| Rule { then, ..r.clone() })
            })
            .collect();
        Policy { rules }
    }

    /// Whether some rule sends events of `kind` about this group to a
    /// target (of a policy made by [`Policy::only`]: to that target).
    pub fn routes(&self, kind: EventKind, scope: Scope, appkey: &str, group_id: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches(scope, kind, appkey, group_id))
    }

    /// What the worker does with `event`, one step per `then` entry of
    /// each matching rule, in rule order: the worker and `policy explain`
    /// both call this. Mute targets get what the guard let through
    /// (`verdict`: its fresh part, or a held step when nothing is fresh);
    /// targets that forward whole events get the whole event. A replayed
    /// dead letter (`replay`) re-drives its own rule and target only.
    pub fn plan<'e>(
        &self,
        event: &'e Event,
        verdict: Option<&'e Verdict<'e>>,
        replay: Option<&ReplayScope>,
    ) -> Vec<Step<'e>> {
        self.rules
            .iter()
            .filter(|r| r.mismatch(event).is_none())
            .flat_map(|r| r.steps(event, verdict, replay))
            .collect()
    }

    /// Every action the policy wants for `event` as it is (no guard), in
    /// rule order.
    pub fn decide(&self, event: &Event) -> Vec<Planned> {
        self.rules
            .iter()
            .filter(|r| r.mismatch(event).is_none())
            .flat_map(|r| r.then.iter().map(|t| r.plan_one(t, event)))
            .collect()
    }

    /// Each rule, whether it matches `event` and, when it does, its steps
    /// of [`Policy::plan`] (after the guard's `verdict`, when given).
    pub fn explain<'e>(
        &self,
        event: &'e Event,
        verdict: Option<&'e Verdict<'e>>,
    ) -> Vec<Explanation<'e>> {
        self.rules
            .iter()
            .map(|r| {
                let mismatch = r.mismatch(event);
                Explanation {
                    rule: r.name.clone(),
                    steps: if mismatch.is_none() {
                        r.steps(event, verdict, None)
                    } else {
                        Vec::new()
                    },
                    mismatch,
                }
            })
            .collect()
    }
}

impl Rule {
    fn matches(&self, scope: Scope, kind: EventKind, appkey: &str, group_id: &str) -> bool {
        self.scope.is_none_or(|s| s == scope)
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.appkeys.is_empty() || self.appkeys.iter().any(|a| a == appkey))
            && (self.groups.is_empty() || self.groups.iter().any(|p| glob(p, group_id)))
    }

    fn mismatch(&self, e: &Event) -> Option<String> {
        if let Some(s) = self.scope {
            if s != e.scope {
                return Some(format!("scope is {}, not {}", e.scope.as_str(), s.as_str()));
            }
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return Some(format!("kind {} is not in when.kinds", e.kind.as_str()));
        }
        if !self.appkeys.is_empty() && !self.appkeys.contains(&e.appkey) {
            return Some(format!("appkey {} is not in when.appkeys", e.appkey));
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|p| glob(p, &e.group_id)) {
            return Some(format!(
                "group {} matches no when.groups pattern",
                e.group_id
            ));
        }
        None
    }

    /// This matching rule's steps of [`Policy::plan`].
    fn steps<'e>(
        &self,
        event: &'e Event,
        verdict: Option<&'e Verdict<'e>>,
        replay: Option<&ReplayScope>,
    ) -> Vec<Step<'e>> {
        // Nothing held: the event is fresh as it is.
        let verdict = verdict.filter(|v| !v.held.is_empty());
        let wanted = |t: &&Then| replay.is_none_or(|s| s.wants(&self.name, &t.target));
        self.then
            .iter()
            .filter(wanted)
            .map(|t| match (verdict, t.forwards) {
                (Some(v), false) => match v.fresh.as_deref() {
                    Some(fresh) => Step::Carry {
                        planned: self.plan_one(t, fresh),
                        event: fresh,
                    },
                    None => Step::Held {
                        rule: self.name.clone(),
                        target: t.target.clone(),
                        action: self.plan_one(t, event).action(),
                        hold: v.all_held().cloned().unwrap_or(Hold::Duplicate),
                    },
                },
                _ => Step::Carry {
                    planned: self.plan_one(t, event),
                    event,
                },
            })
            .collect()
    }

    fn plan_one(&self, t: &Then, e: &Event) -> Planned {
        let skip = |action: &'static str, why: String| Planned::Skip {
            rule: self.name.clone(),
            target: t.target.clone(),
            action,
            why,
        };
        let unmapped = |action: &'static str, why: String| match self.on_unmapped {
            OnUnmapped::Skip => skip(action, why),
            OnUnmapped::DeadLetter => Planned::Unmapped {
                rule: self.name.clone(),
                target: t.target.clone(),
                action,
                why,
            },
        };
        let Some(op) = t.op(e) else {
            let why = format!("target {} has no action for {}", t.target, e.kind.as_str());
            return skip(NO_ACTION, why);
        };
        let per_user = matches!(op, Op::MuteMembers { .. } | Op::UnmuteMembers);
        if per_user && e.members.is_empty() {
            return skip(op.name(), "the event names no members".into());
        }
        let group_id = match t.map_group(&e.group_id) {
            Ok(id) => id,
            Err(why) => return unmapped(op.name(), why),
        };
        let users = match per_user.then(|| t.map_users(&e.members)) {
            None => Vec::new(),
            Some(Ok(users)) => users,
            Some(Err(why)) => return unmapped(op.name(), why),
        };
        let dest = match &t.dest {
            DestTemplate::Group(tpl) => Dest::Group(tpl.fill(&group_id, e)),
            DestTemplate::Chatroom(tpl) => Dest::Chatroom(tpl.fill(&group_id, e)),
            DestTemplate::Event => Dest::Event,
        };
        Planned::Act(Action {
            rule: self.name.clone(),
            target: t.target.clone(),
            op,
            dest,
            users,
            need_notify: t.need_notify,
            extra: t.extra.clone(),
        })
    }
}

impl Then {
    /// What this entry does with an event of `e`'s kind; `None` when its
    /// target has no action for it.
    fn op(&self, e: &Event) -> Option<Op> {
        if self.forwards {
            return Some(Op::Forward);
        }
        Some(match e.kind {
            EventKind::MuteAll => Op::MuteAll {
                seconds: self.mute_all_seconds(e),
            },
            EventKind::UnmuteAll => Op::UnmuteAll,
            EventKind::MemberMuted => {
                Op::MuteMembers {
                    length: match (e.mute, self.mute_seconds) {
                        (Some(Mute::Until { until_ms: Some(ms) }), _) => MuteLength::UntilMs(ms),
                        (_, Some(s)) => MuteLength::UntilMs(e.occurred_at_ms.saturating_add(
                            i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000),
                        )),
                        _ => MuteLength::Permanent,
                    },
                }
            }
            EventKind::MemberUnmuted => Op::UnmuteMembers,
            _ => return None,
        })
    }

    /// A mute-all's length: the rule's `mute_seconds`, or what is left of
    /// it when the event says until when (a repair of a timed mute-all that
    /// has run for a while: re-sent whole, it would start over). Read at
    /// planning, so a call that waits for its rate-limit slot ends up to
    /// that wait later.
    fn mute_all_seconds(&self, e: &Event) -> Option<u64> {
        let full = self.mute_seconds?;
        match e.mute {
            Some(Mute::Until { until_ms: Some(u) }) => {
                let left = u.saturating_sub(crate::time::now_ms()).max(1000) as u64;
                Some(left.div_ceil(1000).min(full))
            }
            _ => Some(full),
        }
    }

    /// The target's ID of the group, through the group map when there is
    /// one; `Err` names the group missing from it.
    fn map_group(&self, group_id: &str) -> Result<String, String> {
        match &self.group_map {
            None => Ok(group_id.to_owned()),
            Some(m) => m
                .get(group_id)
                .cloned()
                .ok_or_else(|| format!("group {group_id} has no entry in the group map")),
        }
    }

    /// The target's users for the members, through the user map when there
    /// is one; `Err` names the first member missing from it.
    fn map_users(&self, members: &[String]) -> Result<Vec<User>, String> {
        members
            .iter()
            .map(|u| match &self.user_map {
                None => Ok(User::same(u)),
                Some(m) => m
                    .get(u)
                    .map(|id| User {
                        id: id.clone(),
                        member: u.clone(),
                    })
                    .ok_or_else(|| format!("member {u} has no entry in the user map")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::TargetConfig;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn targets() -> BTreeMap<String, TargetConfig> {
        toml::from_str(
            r#"
            [zego]
            kind = "zego"
            app_id = 1
            server_secret = "s"
            from_user_id = "bot"
            [rc]
            kind = "rongcloud"
            app_key = "k"
            app_secret = "s"
            [audit]
            kind = "webhook"
            url = "http://127.0.0.1:9/x"
            secret = "s"
            "#,
        )
        .unwrap()
    }

    fn build(rules: &str, maps: &str) -> Result<Policy, (String, String)> {
        let policy: PolicyConfig = toml::from_str(rules).unwrap();
        let maps: BTreeMap<String, MapConfig> = toml::from_str(maps).unwrap();
        let targets = targets();
        let caps = targets
            .iter()
            .map(|(name, t)| (name.as_str(), t.capabilities()))
            .collect();
        Policy::build(&policy, &caps, &maps, Path::new(".")).map_err(|e| (e.key, e.message))
    }

    fn event(kind: EventKind, scope: Scope, group: &str, members: &[&str]) -> Event {
        Event {
            schema: crate::event::SCHEMA_V1.into(),
            id: "call-1".into(),
            source: crate::event::Source::Easemob,
            format: crate::event::Format::GroupOpEvent,
            appkey: "org#app".into(),
            scope,
            group_id: group.into(),
            kind,
            operation: "x".into(),
            subtype: None,
            operator: None,
            members: members.iter().map(|m| m.to_string()).collect(),
            mute: None,
            occurred_at_ms: 1,
            received_at_ms: 2,
            attributes: Default::default(),
        }
    }

    #[test]
    fn matching_templates_and_maps() {
        let p = build(
            r#"
            [[rules]]
            name = "zego"
            when = { scope = "group", kinds = ["mute_all", "member_muted"], groups = ["9*"] }
            then = [{ target = "zego", group = "zg-{group_id}", group_map = "g" }]
            on_unmapped = "dead_letter"
            [[rules]]
            name = "audit"
            then = [{ target = "audit" }]
            "#,
            r#"g = { ids = { "91" = "one", "92" = "two" } }"#,
        )
        .unwrap();
        let planned = p.decide(&event(EventKind::MuteAll, Scope::Group, "91", &[]));
        assert_eq!(planned.len(), 2);
        let Planned::Act(a) = &planned[0] else {
            panic!("{planned:?}")
        };
        assert_eq!(a.dest, Dest::Group("zg-one".into()));
        assert_eq!(a.op, Op::MuteAll { seconds: None });
        let Planned::Act(b) = &planned[1] else {
            panic!()
        };
        assert_eq!(b.op, Op::Forward);
        // Unmapped group: dead-lettered as the rule says.
        let planned = p.decide(&event(EventKind::MuteAll, Scope::Group, "93", &[]));
        assert!(matches!(planned[0], Planned::Unmapped { .. }));
        // Pattern and scope mismatches.
        assert_eq!(
            p.decide(&event(EventKind::MuteAll, Scope::Group, "81", &[]))
                .len(),
            1
        );
        let room = event(EventKind::MuteAll, Scope::Chatroom, "91", &[]);
        let why = p.explain(&room, None);
        assert!(why[0].mismatch.as_deref().unwrap().contains("scope"));
        // member_muted without members is skipped, not sent.
        let planned = p.decide(&event(EventKind::MemberMuted, Scope::Group, "91", &[]));
        assert!(matches!(planned[0], Planned::Skip { .. }));
    }

    #[test]
    fn a_partly_stale_event_reaches_mute_targets_cut_and_forwarders_whole() {
        use crate::state::guard::{Held, Verdict};
        use std::borrow::Cow;
        let p = build(
            r#"
            [[rules]]
            name = "members"
            when = { kinds = ["member_muted"] }
            then = [{ target = "zego", group = "{group_id}" }, { target = "audit" }]
            "#,
            "",
        )
        .unwrap();
        let whole = event(EventKind::MemberMuted, Scope::Group, "g", &["u1", "u2"]);
        let stale = Hold::Stale {
            newer_at_ms: 5,
            newer_event: "newer".into(),
        };
        let held = vec![Held {
            dimension: "member:u1".into(),
            hold: stale.clone(),
        }];
        let fresh = event(EventKind::MemberMuted, Scope::Group, "g", &["u2"]);
        let partly = Verdict {
            fresh: Some(Cow::Owned(fresh)),
            held: held.clone(),
        };
        let shape = |steps: &[Step<'_>]| -> Vec<(String, Vec<String>)> {
            steps
                .iter()
                .map(|s| match s {
                    Step::Carry { planned, event } => (
                        planned.rule_and_target().1.to_owned(),
                        event.members.clone(),
                    ),
                    Step::Held { target, hold, .. } => {
                        (format!("{target} held {}", hold.name()), Vec::new())
                    }
                })
                .collect()
        };
        let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        // The mute target gets the fresh member only; the webhook the
        // whole event, as it was published.
        let steps = p.plan(&whole, Some(&partly), None);
        assert_eq!(
            shape(&steps),
            [
                ("zego".into(), s(&["u2"])),
                ("audit".into(), s(&["u1", "u2"]))
            ]
        );
        // `policy explain` shows the same steps.
        let explained = p.explain(&whole, Some(&partly));
        assert_eq!(explained[0].steps, steps);
        // Nothing fresh: the mute target is held, the webhook still
        // gets the whole event.
        let none = Verdict { fresh: None, held };
        assert_eq!(
            shape(&p.plan(&whole, Some(&none), None)),
            [
                ("zego held stale".into(), Vec::new()),
                ("audit".into(), s(&["u1", "u2"]))
            ]
        );
        // No verdict (a forwarding-only pipeline, or nothing held): as is.
        assert_eq!(
            shape(&p.plan(&whole, None, None)),
            [
                ("zego".into(), s(&["u1", "u2"])),
                ("audit".into(), s(&["u1", "u2"]))
            ]
        );
    }

    #[test]
    fn action_labels_are_the_variants_names() {
        let names: Vec<&str> = Op::names().collect();
        assert_eq!(
            names,
            [
                "mute_all",
                "unmute_all",
                "mute_members",
                "unmute_members",
                "forward",
                "none"
            ]
        );
        assert_eq!(Op::MuteAll { seconds: None }.name(), "mute_all");
    }

    #[test]
    fn config_errors_name_rule_and_key() {
        let e = build(
            r#"[[rules]]
            name = "typo"
            then = [{ target = "zeg", group = "{group_id}" }]"#,
            "",
        )
        .unwrap_err();
        assert_eq!(e.0, "policy.rules[0].then[0].target");
        assert!(e.1.contains("\"typo\"") && e.1.contains("zego"), "{e:?}");
        let e = build(
            r#"[[rules]]
            name = "bad placeholder"
            then = [{ target = "zego", group = "{group}" }]"#,
            "",
        )
        .unwrap_err();
        assert_eq!(e.0, "policy.rules[0].then[0].group");
        let e = build(
            r#"[[rules]]
            name = "kicks to zego"
            when = { kinds = ["member_kicked"] }
            then = [{ target = "zego", group = "{group_id}" }]"#,
            "",
        )
        .unwrap_err();
        assert!(e.1.contains("member_kicked"), "{e:?}");
        let e = build(
            r#"[[rules]]
            name = "both"
            then = [{ target = "rc", group = "{group_id}", chatroom = "{group_id}" }]"#,
            "",
        )
        .unwrap_err();
        assert!(e.1.contains("exactly one"), "{e:?}");
        let e = build(
            r#"[[rules]]
            name = "too long"
            when = { kinds = ["member_muted"] }
            then = [{ target = "zego", group = "{group_id}", mute_seconds = 2592001 }]"#,
            "",
        )
        .unwrap_err();
        assert_eq!(e.0, "policy.rules[0].then[0].mute_seconds");
        let e = build(
            r#"[[rules]]
            name = "m"
            then = [{ target = "zego", group = "{group_id}", group_map = "nope" }]"#,
            "",
        )
        .unwrap_err();
        assert!(e.1.contains("maps.nope"), "{e:?}");
    }

    #[test]
    fn member_mute_length_comes_from_the_event_then_the_rule() {
        let p = build(
            r#"[[rules]]
            name = "m"
            then = [{ target = "zego", group = "{group_id}", mute_seconds = 600 }]"#,
            "",
        )
        .unwrap();
        let mut e = event(EventKind::MemberMuted, Scope::Group, "g", &["u"]);
        let op = |e: &Event| match &p.decide(e)[0] {
            Planned::Act(a) => a.op.clone(),
            other => panic!("{other:?}"),
        };
        // The rule's length runs from the event's time, whenever (and
        // however often) the mute is sent.
        assert_eq!(
            op(&e),
            Op::MuteMembers {
                length: MuteLength::UntilMs(e.occurred_at_ms + 600_000)
            }
        );
        e.mute = Some(Mute::Until {
            until_ms: Some(5_000),
        });
        assert_eq!(
            op(&e),
            Op::MuteMembers {
                length: MuteLength::UntilMs(5_000)
            }
        );
    }
}
