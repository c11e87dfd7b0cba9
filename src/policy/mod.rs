//! The mute policy: rules that turn a normalized event into actions on
//! targets.
//!
//! A rule matches on scope, kind, appkey and group-ID patterns; each of its
//! `then` entries names a target and where the action goes there
//! (`group = "{group_id}"`, optionally through an ID map). The kind decides
//! the action: `mute_all` mutes everyone, `member_muted` mutes the event's
//! members, and so on. Deciding is pure and cheap; applying is
//! [`crate::worker::deliver`]'s job. The whole policy is checked when the config is
//! loaded, so a typo is a startup error that names the rule, not a dead
//! letter at 3 a.m.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::event::{Event, EventKind, Mute, Scope};
use crate::target::{rongcloud, zego, TargetConfig};

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Evaluated in order; every matching rule applies.
    pub rules: Vec<RuleConfig>,
}

/// `[[policy.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in logs, metrics-free dead letters and `policy explain`.
    pub name: String,
    #[serde(default)]
    pub when: WhenConfig,
    pub then: Vec<ThenConfig>,
    /// What to do with an event whose group or members have no entry in
    /// the ID map: `skip` (counted) or `dead_letter`.
    #[serde(default)]
    pub on_unmapped: OnUnmapped,
}

/// A rule's conditions; an empty list matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhenConfig {
    pub scope: Option<Scope>,
    pub kinds: Vec<EventKind>,
    pub appkeys: Vec<String>,
    /// Group-ID patterns; `*` matches any run of characters.
    pub groups: Vec<String>,
}

/// One action of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThenConfig {
    /// A `[targets.NAME]`.
    pub target: String,
    /// Downstream group ID template: `{group_id}`, `{appkey}`, `{org}`,
    /// `{app}`, `{scope}`.
    pub group: Option<String>,
    /// Downstream chatroom ID template (RongCloud chatroom endpoints).
    pub chatroom: Option<String>,
    /// RongCloud chatroom calls: notify the members.
    pub need_notify: Option<bool>,
    /// RongCloud chatroom calls: the notification's `extra` JSON.
    pub extra: Option<String>,
    /// Mute length for `mute_all`, and for `member_muted` events that do
    /// not say until when. Unset = permanent (as long as the target allows).
    pub mute_seconds: Option<u64>,
    /// `[maps.NAME]` translating group IDs before `{group_id}` is filled in.
    pub group_map: Option<String>,
    /// `[maps.NAME]` translating member IDs.
    pub user_map: Option<String>,
}

/// What to do when an ID has no mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnmapped {
    #[default]
    Skip,
    DeadLetter,
}

/// `[maps.NAME]`: an inline table or a file (JSON object or TOML table of
/// `"source-id" = "downstream-id"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    pub ids: Option<BTreeMap<String, String>>,
    /// Relative paths are relative to the config file.
    pub file: Option<PathBuf>,
}

/// What an action does downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Op {
    /// The `action` metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Op::MuteAll { .. } => "mute_all",
            Op::UnmuteAll => "unmute_all",
            Op::MuteMembers { .. } => "mute_members",
            Op::UnmuteMembers => "unmute_members",
            Op::Forward => "forward",
        }
    }

    /// Every `action` label (`none`: the target has no action for the kind).
    pub const NAMES: [&'static str; 6] = [
        "mute_all",
        "unmute_all",
        "mute_members",
        "unmute_members",
        "forward",
        "none",
    ];
}

/// How long members stay muted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuteLength {
    Permanent,
    Seconds(u64),
    /// Until this instant (ms since the epoch); the remaining time is
    /// computed when each request is signed.
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
    pub users: Vec<String>,
    pub need_notify: bool,
    pub extra: Option<String>,
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

/// Why a rule did or did not match, for `policy explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub rule: Arc<str>,
    pub mismatch: Option<String>,
    pub planned: Vec<Planned>,
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
    shape: Shape,
    dest: DestTemplate,
    need_notify: bool,
    extra: Option<String>,
    mute_seconds: Option<u64>,
    group_map: Option<Arc<HashMap<String, String>>>,
    user_map: Option<Arc<HashMap<String, String>>>,
}

/// What kind of request a target makes, which decides what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Zego,
    RongCloud,
    /// Takes any event as it is.
    Forward,
}

#[derive(Debug, Clone)]
enum DestTemplate {
    Group(Template),
    Chatroom(Template),
    Event,
}

#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    GroupId,
    Appkey,
    Org,
    App,
    Scope,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: `{{` without `}}`"))?;
            let name = &rest[open + 1..open + close];
            pieces.push(match name {
                "group_id" => Piece::GroupId,
                "appkey" => Piece::Appkey,
                "org" => Piece::Org,
                "app" => Piece::App,
                "scope" => Piece::Scope,
                other => {
                    return Err(format!(
                        "{text:?}: unknown placeholder {{{other}}}; use {{group_id}}, {{appkey}}, {{org}}, {{app}} or {{scope}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Template(pieces))
    }

    fn fill(&self, group_id: &str, event: &Event) -> String {
        let (org, app) = event.appkey.split_once('#').unwrap_or((&event.appkey, ""));
        let mut out = String::new();
        for p in &self.0 {
            out.push_str(match p {
                Piece::Text(t) => t,
                Piece::GroupId => group_id,
                Piece::Appkey => &event.appkey,
                Piece::Org => org,
                Piece::App => app,
                Piece::Scope => event.scope.as_str(),
            });
        }
        out
    }
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

const MUTE_KINDS: [EventKind; 4] = [
    EventKind::MuteAll,
    EventKind::UnmuteAll,
    EventKind::MemberMuted,
    EventKind::MemberUnmuted,
];

impl Policy {
    /// Checks and compiles the policy. Errors are `(key, message)` with the
    /// key as a dotted path (`policy.rules[1].then[0].target`) and the
    /// message naming the rule.
    pub fn build(
        config: &PolicyConfig,
        targets: &BTreeMap<String, TargetConfig>,
        maps: &BTreeMap<String, MapConfig>,
        base_dir: &Path,
    ) -> Result<Policy, (String, String)> {
        let mut loaded: HashMap<&str, Arc<HashMap<String, String>>> = HashMap::new();
        for (name, m) in maps {
            let key = format!("maps.{name}");
            let table = match (&m.ids, &m.file) {
                (Some(ids), None) => ids.clone().into_iter().collect(),
                (None, Some(file)) => {
                    load_map(&base_dir.join(file)).map_err(|e| (format!("{key}.file"), e))?
                }
                _ => {
                    return Err((
                        key,
                        "needs exactly one of `ids` (an inline table) or `file`".into(),
                    ))
                }
            };
            loaded.insert(name, Arc::new(table));
        }
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in config.rules.iter().enumerate() {
            let at = format!("policy.rules[{i}]");
            let fail =
                |key: String, message: String| Err((key, format!("rule {:?}: {message}", r.name)));
            if r.name.trim().is_empty() {
                return Err((format!("{at}.name"), "must not be empty".into()));
            }
            if !names.insert(r.name.as_str()) {
                return fail(format!("{at}.name"), "two rules have this name".into());
            }
            if r.then.is_empty() {
                return fail(format!("{at}.then"), "needs at least one action".into());
            }
            for (j, p) in r.when.groups.iter().enumerate() {
                if p.is_empty() {
                    return fail(format!("{at}.when.groups[{j}]"), "empty pattern".into());
                }
            }
            let mut then = Vec::new();
            for (j, t) in r.then.iter().enumerate() {
                let at = format!("{at}.then[{j}]");
                let Some(target) = targets.get(&t.target) else {
                    let known: Vec<&str> = targets.keys().map(String::as_str).collect();
                    return fail(
                        format!("{at}.target"),
                        format!(
                            "no [targets.{}]; defined: {}",
                            t.target,
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                };
                let shape = match target.shape() {
                    TargetConfig::Zego(_) => Shape::Zego,
                    TargetConfig::Rongcloud(_) => Shape::RongCloud,
                    _ => Shape::Forward,
                };
                let template = |key: &str,
                                text: &Option<String>|
                 -> Result<Option<Template>, (String, String)> {
                    text.as_deref()
                        .map(Template::parse)
                        .transpose()
                        .map_err(|m| (format!("{at}.{key}"), format!("rule {:?}: {m}", r.name)))
                };
                let group = template("group", &t.group)?;
                let chatroom = template("chatroom", &t.chatroom)?;
                let dest = match (shape, group, chatroom) {
                    (Shape::Zego, Some(g), None) => DestTemplate::Group(g),
                    (Shape::Zego, _, _) => {
                        return fail(
                            format!("{at}.group"),
                            format!(
                                "target {} (zego) needs `group` (e.g. \"{{group_id}}\") and no `chatroom`",
                                t.target
                            ),
                        )
                    }
                    (Shape::RongCloud, Some(g), None) => DestTemplate::Group(g),
                    (Shape::RongCloud, None, Some(c)) => DestTemplate::Chatroom(c),
                    (Shape::RongCloud, _, _) => {
                        return fail(
                            format!("{at}.group"),
                            format!(
                                "target {} (rongcloud) needs exactly one of `group` or `chatroom`",
                                t.target
                            ),
                        )
                    }
                    (Shape::Forward, None, None) => DestTemplate::Event,
                    (Shape::Forward, _, _) => {
                        return fail(
                            format!("{at}.group"),
                            format!(
                                "target {} ({}) takes the whole event; remove `group`/`chatroom`",
                                t.target,
                                target.kind()
                            ),
                        )
                    }
                };
                if shape != Shape::Forward {
                    if let Some(k) = r.when.kinds.iter().find(|k| !MUTE_KINDS.contains(k)) {
                        return fail(
                            format!("{at}.target"),
                            format!(
                                "target {} ({}) has no action for `{}`; it applies mute_all, unmute_all, member_muted and member_unmuted (use a webhook target to forward other kinds)",
                                t.target,
                                target.kind(),
                                k.as_str()
                            ),
                        );
                    }
                }
                let chatroom_dest = matches!(dest, DestTemplate::Chatroom(_));
                if (t.need_notify.is_some() || t.extra.is_some())
                    && !(shape == Shape::RongCloud && chatroom_dest)
                {
                    return fail(
                        format!("{at}.need_notify"),
                        "`need_notify` and `extra` apply to RongCloud chatroom actions only".into(),
                    );
                }
                if let Some(s) = t.mute_seconds {
                    let max = match (shape, chatroom_dest) {
                        (Shape::Zego, _) => zego::MAX_DURATION_SECONDS,
                        (Shape::RongCloud, _) => rongcloud::MAX_GAG_MINUTES * 60,
                        (Shape::Forward, _) => {
                            return fail(
                                format!("{at}.mute_seconds"),
                                format!(
                                    "target {} forwards events; it has no mute length",
                                    t.target
                                ),
                            )
                        }
                    };
                    if s == 0 || s > max {
                        return fail(
                            format!("{at}.mute_seconds"),
                            format!("{s} is not between 1 and {max} (the target's longest mute)"),
                        );
                    }
                    if shape == Shape::RongCloud && r.when.kinds.contains(&EventKind::MuteAll) {
                        return fail(
                            format!("{at}.mute_seconds"),
                            "RongCloud mute-all has no duration; mute_seconds would only apply to member_muted, so put it on a rule for member_muted only".into(),
                        );
                    }
                }
                let map = |key: &str, name: &Option<String>| match name {
                    None => Ok(None),
                    Some(n) => loaded.get(n.as_str()).cloned().map(Some).ok_or_else(|| {
                        (
                            format!("{at}.{key}"),
                            format!("rule {:?}: no [maps.{n}]", r.name),
                        )
                    }),
                };
                then.push(Then {
                    target: Arc::from(t.target.as_str()),
                    shape,
                    dest,
                    need_notify: t.need_notify.unwrap_or(false),
                    extra: t.extra.clone(),
                    mute_seconds: t.mute_seconds,
                    group_map: map("group_map", &t.group_map)?,
                    user_map: map("user_map", &t.user_map)?,
                });
            }
            rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                scope: r.when.scope,
                kinds: r.when.kinds.clone(),
                appkeys: r.when.appkeys.clone(),
                groups: r.when.groups.clone(),
                then,
                on_unmapped: r.on_unmapped,
            });
        }
        Ok(Policy { rules })
    }

    /// True when there are no rules (every event is committed untouched).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every action the policy wants for `event`, in rule order.
    pub fn decide(&self, event: &Event) -> Vec<Planned> {
        self.rules
            .iter()
            .filter(|r| r.mismatch(event).is_none())
            .flat_map(|r| r.plan(event))
            .collect()
    }

    /// Each rule, whether it matches `event` and what it would do.
    pub fn explain(&self, event: &Event) -> Vec<Explanation> {
        self.rules
            .iter()
            .map(|r| {
                let mismatch = r.mismatch(event);
                Explanation {
                    rule: r.name.clone(),
                    planned: if mismatch.is_none() {
                        r.plan(event)
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

    fn plan(&self, e: &Event) -> Vec<Planned> {
        self.then.iter().map(|t| self.plan_one(t, e)).collect()
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
        let op = if t.shape == Shape::Forward {
            Op::Forward
        } else {
            match (e.kind, e.mute) {
                (EventKind::MuteAll, _) => Op::MuteAll {
                    seconds: t.mute_seconds,
                },
                (EventKind::UnmuteAll, _) => Op::UnmuteAll,
                (EventKind::MemberMuted, mute) => Op::MuteMembers {
                    length: match (mute, t.mute_seconds) {
                        (Some(Mute::Until { until_ms: Some(ms) }), _) => MuteLength::UntilMs(ms),
                        (_, Some(s)) => MuteLength::Seconds(s),
                        _ => MuteLength::Permanent,
                    },
                },
                (EventKind::MemberUnmuted, _) => Op::UnmuteMembers,
                (other, _) => {
                    return skip(
                        "none",
                        format!("target {} has no action for {}", t.target, other.as_str()),
                    )
                }
            }
        };
        let per_user = matches!(op, Op::MuteMembers { .. } | Op::UnmuteMembers);
        if per_user && e.members.is_empty() {
            return skip(op.name(), "the event names no members".into());
        }
        let group_id = match &t.group_map {
            None => e.group_id.clone(),
            Some(m) => match m.get(&e.group_id) {
                Some(id) => id.clone(),
                None => {
                    return unmapped(
                        op.name(),
                        format!("group {} has no entry in the group map", e.group_id),
                    )
                }
            },
        };
        let dest = match &t.dest {
            DestTemplate::Group(tpl) => Dest::Group(tpl.fill(&group_id, e)),
            DestTemplate::Chatroom(tpl) => Dest::Chatroom(tpl.fill(&group_id, e)),
            DestTemplate::Event => Dest::Event,
        };
        let users = if !per_user {
            Vec::new()
        } else {
            match &t.user_map {
                None => e.members.clone(),
                Some(m) => {
                    let mut users = Vec::with_capacity(e.members.len());
                    for u in &e.members {
                        match m.get(u) {
                            Some(id) => users.push(id.clone()),
                            None => {
                                return unmapped(
                                    op.name(),
                                    format!("member {u} has no entry in the user map"),
                                )
                            }
                        }
                    }
                    users
                }
            }
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

fn load_map(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed: Result<BTreeMap<String, String>, String> =
        if path.extension().is_some_and(|x| x == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
    parsed.map(|m| m.into_iter().collect()).map_err(|e| {
        format!(
            "{}: not a table of \"source-id\" = \"downstream-id\": {e}",
            path.display()
        )
    })
}

/// The text `mutebridge policy explain` prints: each rule, whether it
/// matches, and the exact requests its actions would send now.
pub fn explain_text(
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
                    let target = crate::target::Target::new(cfg);
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
                            Err(crate::target::Unsendable::Moot(why)) => {
                                let _ = writeln!(out, "nothing to do ({why})");
                            }
                            Err(crate::target::Unsendable::Invalid(why)) => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        Policy::build(&policy, &targets(), &maps, Path::new("."))
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
    fn globs() {
        assert!(glob("vip-*", "vip-1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
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
        let why = p.explain(&event(EventKind::MuteAll, Scope::Chatroom, "91", &[]));
        assert!(why[0].mismatch.as_deref().unwrap().contains("scope"));
        // member_muted without members is skipped, not sent.
        let planned = p.decide(&event(EventKind::MemberMuted, Scope::Group, "91", &[]));
        assert!(matches!(planned[0], Planned::Skip { .. }));
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
        assert_eq!(
            op(&e),
            Op::MuteMembers {
                length: MuteLength::Seconds(600)
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
