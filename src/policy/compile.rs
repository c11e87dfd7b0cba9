//! Checking a [`PolicyConfig`] against the targets' [`Capabilities`] and
//! the ID maps, and compiling it into a [`Policy`]. Every mistake is an
//! [`Invalid`] whose key is the dotted path of the setting at fault
//! (`policy.rules[1].then[0].target`) and whose message names the rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::config::{MapConfig, PolicyConfig, RuleConfig, ThenConfig};
use super::template::Template;
use super::{Addressing, Capabilities, DestTemplate, Policy, Rule, Then, MUTE_KINDS};
use crate::config::error::Invalid;
use crate::event::EventKind;

type Map = Arc<HashMap<String, String>>;

impl Policy {
    /// Checks and compiles the policy. `targets` are the configured target
    /// names with what each can do; `base_dir` resolves relative map files.
    pub fn build(
        config: &PolicyConfig,
        targets: &BTreeMap<&str, Capabilities>,
        maps: &BTreeMap<String, MapConfig>,
        base_dir: &Path,
    ) -> Result<Policy, Invalid> {
        let mut loaded: HashMap<&str, Map> = HashMap::new();
        for (name, m) in maps {
            let table = load(m, base_dir).map_err(|e| e.under(&format!("maps.{name}")))?;
            loaded.insert(name, Arc::new(table));
        }
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in config.rules.iter().enumerate() {
            let rule = compile_rule(r, targets, &loaded, &mut names)
                .map_err(|e| e.under(&format!("policy.rules[{i}]")))?;
            rules.push(rule);
        }
        Ok(Policy { rules })
    }
}

fn compile_rule<'a>(
    r: &'a RuleConfig,
    targets: &BTreeMap<&str, Capabilities>,
    maps: &HashMap<&str, Map>,
    names: &mut HashSet<&'a str>,
) -> Result<Rule, Invalid> {
    if r.name.trim().is_empty() {
        return Err(Invalid::new("name", "must not be empty"));
    }
    // Every later message names the rule, so a reader finds it by name.
    let fail =
        |key: String, message: String| Invalid::new(key, format!("rule {:?}: {message}", r.name));
    if !names.insert(r.name.as_str()) {
        return Err(fail("name".into(), "two rules have this name".into()));
    }
    if r.then.is_empty() {
        return Err(fail("then".into(), "needs at least one action".into()));
    }
    if let Some(j) = r.when.groups.iter().position(String::is_empty) {
        return Err(fail(format!("when.groups[{j}]"), "empty pattern".into()));
    }
    if let Some(j) = r.when.kinds.iter().position(|k| *k == EventKind::Resync) {
        return Err(fail(
            format!("when.kinds[{j}]"),
            "`resync` markers never reach the rules: the worker re-applies the group's mute state through the rules that match mute kinds".into(),
        ));
    }
    let mut then = Vec::new();
    for (j, t) in r.then.iter().enumerate() {
        let compiled = compile_then(r, t, targets, maps).map_err(|e| {
            let under = e.under(&format!("then[{j}]"));
            fail(under.key, under.message)
        })?;
        then.push(compiled);
    }
    Ok(Rule {
        name: Arc::from(r.name.as_str()),
        scope: r.when.scope,
        kinds: r.when.kinds.clone(),
        appkeys: r.when.appkeys.clone(),
        groups: r.when.groups.clone(),
        then,
        on_unmapped: r.on_unmapped,
    })
}

/// One `then` entry; keys relative to it, messages without the rule name.
fn compile_then(
    r: &RuleConfig,
    t: &ThenConfig,
    targets: &BTreeMap<&str, Capabilities>,
    maps: &HashMap<&str, Map>,
) -> Result<Then, Invalid> {
    let Some(caps) = targets.get(t.target.as_str()) else {
        let known: Vec<&str> = targets.keys().copied().collect();
        let known = if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        };
        let why = format!("no [targets.{}]; defined: {known}", t.target);
        return Err(Invalid::new("target", why));
    };
    let dest = destination(t, caps)?;
    let forwards = caps.addressing == Addressing::Event;
    check_kinds(r, t, caps, forwards)?;
    let chatroom_dest = matches!(dest, DestTemplate::Chatroom(_));
    if (t.need_notify.is_some() || t.extra.is_some()) && !(caps.chatroom_notify && chatroom_dest) {
        return Err(Invalid::new(
            "need_notify",
            "`need_notify` and `extra` apply to RongCloud chatroom actions only",
        ));
    }
    if let Some(s) = t.mute_seconds {
        check_mute_seconds(r, t, caps, forwards, s)?;
    }
    let map = |key: &str, name: &Option<String>| match name {
        None => Ok(None),
        Some(n) => maps
            .get(n.as_str())
            .cloned()
            .map(Some)
            .ok_or_else(|| Invalid::new(key, format!("no [maps.{n}]"))),
    };
    Ok(Then {
        target: Arc::from(t.target.as_str()),
        forwards,
        dest,
        need_notify: t.need_notify.unwrap_or(false),
        extra: t.extra.clone(),
        mute_seconds: t.mute_seconds,
        group_map: map("group_map", &t.group_map)?,
        user_map: map("user_map", &t.user_map)?,
    })
}

/// Where the entry's actions go, as the target addresses them: a group, a
/// chatroom, or (a forwarding target) the whole event.
fn destination(t: &ThenConfig, caps: &Capabilities) -> Result<DestTemplate, Invalid> {
    let (name, kind) = (&t.target, caps.kind);
    let template = |key: &str, text: &Option<String>| {
        text.as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|m| Invalid::new(key, m))
    };
    let group = template("group", &t.group)?;
    let chatroom = template("chatroom", &t.chatroom)?;
    let needs = match (caps.addressing, group, chatroom) {
        (Addressing::Group, Some(g), None) => return Ok(DestTemplate::Group(g)),
        (Addressing::GroupOrChatroom, Some(g), None) => return Ok(DestTemplate::Group(g)),
        (Addressing::GroupOrChatroom, None, Some(c)) => return Ok(DestTemplate::Chatroom(c)),
        (Addressing::Event, None, None) => return Ok(DestTemplate::Event),
        (Addressing::Group, _, _) => "needs `group` (e.g. \"{group_id}\") and no `chatroom`",
        (Addressing::GroupOrChatroom, _, _) => "needs exactly one of `group` or `chatroom`",
        (Addressing::Event, _, _) => "takes the whole event; remove `group`/`chatroom`",
    };
    Err(Invalid::new(
        "group",
        format!("target {name} ({kind}) {needs}"),
    ))
}

/// A mute target acts on the mute kinds only.
fn check_kinds(
    r: &RuleConfig,
    t: &ThenConfig,
    caps: &Capabilities,
    forwards: bool,
) -> Result<(), Invalid> {
    if forwards {
        return Ok(());
    }
    match r.when.kinds.iter().find(|k| !MUTE_KINDS.contains(k)) {
        None => Ok(()),
        Some(k) => Err(Invalid::new(
            "target",
            format!(
                "target {} ({}) has no action for `{}`; it applies mute_all, unmute_all, member_muted and member_unmuted (use a webhook target to forward other kinds)",
                t.target,
                caps.kind,
                k.as_str()
            ),
        )),
    }
}

/// `mute_seconds`: for mute targets, within the target's longest mute,
/// and not on a mute-all the target cannot time.
fn check_mute_seconds(
    r: &RuleConfig,
    t: &ThenConfig,
    caps: &Capabilities,
    forwards: bool,
    s: u64,
) -> Result<(), Invalid> {
    let invalid = |why: String| Err(Invalid::new("mute_seconds", why));
    if forwards {
        return invalid(format!(
            "target {} forwards events; it has no mute length",
            t.target
        ));
    }
    let max = caps.max_mute_seconds;
    if s == 0 || s > max {
        return invalid(format!(
            "{s} is not between 1 and {max} (the target's longest mute)"
        ));
    }
    if !caps.timed_mute_all && r.when.kinds.contains(&EventKind::MuteAll) {
        return invalid(format!("{} mute-all has no duration; mute_seconds would only apply to member_muted, so put it on a rule for member_muted only", caps.kind));
    }
    Ok(())
}

/// One `[maps.NAME]`: its inline `ids` or its `file`; keys relative to it.
fn load(m: &MapConfig, base_dir: &Path) -> Result<HashMap<String, String>, Invalid> {
    match (&m.ids, &m.file) {
        (Some(ids), None) => Ok(ids.clone().into_iter().collect()),
        (None, Some(file)) => load_file(&base_dir.join(file)).map_err(|e| Invalid::new("file", e)),
        _ => Err(Invalid::new(
            "",
            "needs exactly one of `ids` (an inline table) or `file`",
        )),
    }
}

fn load_file(path: &Path) -> Result<HashMap<String, String>, String> {
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
