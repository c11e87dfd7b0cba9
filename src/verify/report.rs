//! A pass as people and programs read it: one line per difference (text,
//! or a JSON object per line with `--json`), then a summary per target.

use serde_json::{json, Value};

use super::diff::Finding;
use super::expect::{End, Expect, Source};
use super::repair::{Fix, Plan, Repair};
use super::{Summary, TargetReport};

/// An instant for people: RFC 3339, UTC, to the second.
fn instant(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn end_text(end: End) -> String {
    match end {
        End::Permanent => "permanently".into(),
        End::At(t) => format!("until {}", instant(t)),
        End::Unknown => "(end not known)".into(),
    }
}

fn expected_text(e: Option<Expect>) -> String {
    match e {
        None => "not muted".into(),
        Some(Expect::On(end)) => format!("muted {}", end_text(end)),
        Some(Expect::Off { since: Some(t) }) => format!("not muted (ended {})", instant(t)),
        Some(Expect::Off { since: None }) => "not muted".into(),
    }
}

fn held_text(h: Option<End>) -> String {
    match h {
        None => "not muted".into(),
        Some(End::Unknown) => "muted".into(),
        Some(end) => format!("muted {}", end_text(end)),
    }
}

fn end_json(end: End) -> Value {
    match end {
        End::Permanent => json!("permanent"),
        End::At(t) => json!(t),
        End::Unknown => Value::Null,
    }
}

/// What a finding's repair is, in a word or a sentence.
fn repair_text(plan: &Plan, s: &Summary, t: &TargetReport) -> String {
    match plan {
        Plan::Cannot(why) => format!("not repairable: {why}"),
        Plan::Fix(_) if s.repair && !s.dry_run && t.published > 0 => "repair published".into(),
        Plan::Fix(_) if s.dry_run || s.repair => "would be repaired".into(),
        Plan::Fix(_) => "repairable (--repair)".into(),
    }
}

fn source_text(source: &Option<Source>) -> String {
    match source {
        Some(s) => format!("{} {} {}", s.appkey, s.scope.as_str(), s.group_id),
        None => "-".into(),
    }
}

/// One line per difference, unread place and (dry run) planned repair.
pub fn lines(s: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for t in &s.targets {
        for ((f, plan), source) in t.compared.findings.iter().zip(&t.plans).zip(&t.sources) {
            out.push(format!(
                "{}: {} ({}): {}{} {}: expected {}, held {}; {}",
                t.target,
                f.place,
                source_text(source),
                <&str>::from(f.dimension),
                f.user
                    .as_deref()
                    .map(|u| format!(" {u}"))
                    .unwrap_or_else(|| {
                        if f.dimension == super::diff::Dimension::Member {
                            " (who is not known)".into()
                        } else {
                            String::new()
                        }
                    }),
                <&str>::from(f.difference).replace('_', " "),
                expected_text(f.expected),
                held_text(f.held),
                repair_text(plan, s, t),
            ));
        }
        for (place, why) in &t.compared.unread {
            out.push(format!("{}: {place}: not read: {why}", t.target));
        }
        if s.dry_run {
            for (source, repair) in &t.repairs {
                out.push(format!(
                    "would publish a repair marker for {} -> {}: {}",
                    source_text(&Some(source.clone())),
                    t.target,
                    repair_summary(repair)
                ));
            }
        }
    }
    out
}

/// `mute_all apply, members u1 apply (until ...), u2 lift`.
fn repair_summary(r: &Repair) -> String {
    let fix = |f: &Fix| match f {
        Fix::Apply {
            until_ms: Some(u), ..
        } => format!("apply (ends {})", instant(*u)),
        Fix::Apply { .. } => "apply".into(),
        Fix::Lift => "lift".into(),
    };
    let mut parts = Vec::new();
    if let Some(f) = &r.mute_all {
        parts.push(format!("mute_all {}", fix(f)));
    }
    for (m, f) in &r.members {
        parts.push(format!("member {m} {}", fix(f)));
    }
    parts.join(", ")
}

/// One JSON object per difference and unread place, then one summary
/// object per target.
pub fn json_lines(s: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for t in &s.targets {
        for ((f, plan), source) in t.compared.findings.iter().zip(&t.plans).zip(&t.sources) {
            out.push(finding_json(t, f, plan, source, s).to_string());
        }
        for (place, why) in &t.compared.unread {
            out.push(json!({"target": t.target, "place": place, "unread": why}).to_string());
        }
        out.push(json!({"summary": summary_json(t, s)}).to_string());
    }
    out
}

fn finding_json(
    t: &TargetReport,
    f: &Finding,
    plan: &Plan,
    source: &Option<Source>,
    s: &Summary,
) -> Value {
    let expected = match f.expected {
        None | Some(Expect::Off { .. }) => json!({"muted": false}),
        Some(Expect::On(end)) => json!({"muted": true, "end": end_json(end)}),
    };
    let held = match f.held {
        None => json!({"muted": false}),
        Some(end) => json!({"muted": true, "end": end_json(end)}),
    };
    let repair = match plan {
        Plan::Cannot(why) => json!({"repairable": false, "why": why}),
        Plan::Fix(_) => json!({
            "repairable": true,
            "published": s.repair && !s.dry_run && t.published > 0,
        }),
    };
    json!({
        "target": t.target,
        "kind": t.kind,
        "source": source,
        "place": f.place,
        "dimension": f.dimension,
        "member": f.dim.as_ref().and_then(|d| d.member.clone()),
        "user": f.user,
        "difference": f.difference,
        "expected": expected,
        "held": held,
        "repair": repair,
    })
}

fn summary_json(t: &TargetReport, s: &Summary) -> Value {
    let mut by: serde_json::Map<String, Value> = serde_json::Map::new();
    for f in &t.compared.findings {
        let key = format!(
            "{}.{}",
            <&str>::from(f.dimension),
            <&str>::from(f.difference)
        );
        let n = by.get(&key).and_then(Value::as_u64).unwrap_or(0);
        by.insert(key, json!(n + 1));
    }
    json!({
        "target": t.target,
        "kind": t.kind,
        "places": t.places,
        "agreed": t.compared.agreed,
        "differed": t.compared.differed,
        "unread": t.compared.unread.len(),
        "pending": t.pending,
        "unverified": t.compared.unverified,
        "differences": by,
        "repairs": t.repairs.len(),
        "published": t.published,
        "dry_run": s.dry_run,
        "reads": t.reads,
        "seconds": (t.seconds * 1000.0).round() / 1000.0,
        "cannot_see": t.blind,
    })
}

/// The summary lines (stderr).
pub fn describe(s: &Summary) -> Vec<String> {
    let mut out = vec![format!(
        "{} group state(s), {} target(s) read back in {:.1} s",
        s.states,
        s.targets.len(),
        s.seconds
    )];
    for t in &s.targets {
        let reads: Vec<String> = t
            .reads
            .iter()
            .map(|(api, n)| format!("{api} x{n}"))
            .collect();
        out.push(format!(
            "{} ({}): {} place(s) compared in {:.1} s: {} agreed, {} differed, {} unread; {} dimension(s) pending (not applied by the target yet)",
            t.target,
            t.kind,
            t.places,
            t.seconds,
            t.compared.agreed,
            t.compared.differed,
            t.compared.unread.len(),
            t.pending
        ));
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for f in &t.compared.findings {
            *by.entry(format!(
                "{} {}",
                <&str>::from(f.dimension),
                <&str>::from(f.difference)
            ))
            .or_default() += 1;
        }
        out.push(if by.is_empty() {
            "  differences: none".into()
        } else {
            let d: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("  differences: {}", d.join(", "))
        });
        out.push(format!(
            "  reads: {} ({} per place)",
            if reads.is_empty() {
                "none".into()
            } else {
                reads.join(", ")
            },
            if t.places == 0 {
                "-".into()
            } else {
                format!(
                    "{:.2}",
                    t.reads.values().sum::<usize>() as f64 / t.places as f64
                )
            }
        ));
        if let Some(blind) = t.blind {
            out.push(format!(
                "  cannot see: {blind}; {} member mute(s) unverified this pass",
                t.compared.unverified
            ));
        }
        out.push(match (s.repair, s.dry_run) {
            (_, true) => format!("  dry run: {} repair marker(s) would be published", t.repairs.len()),
            (true, false) => format!(
                "  published {} repair marker(s); the worker applies each in its group's order (mutebridge_actions_total{{target=\"{}\"}})",
                t.published, t.target
            ),
            (false, false) => format!("  {} group(s) to repair: run again with --repair", t.repairs.len()),
        });
        let cannot = t
            .plans
            .iter()
            .filter(|p| matches!(p, Plan::Cannot(_)))
            .count();
        if cannot > 0 {
            out.push(format!(
                "  {cannot} difference(s) cannot be repaired by mutebridge (see each line)"
            ));
        }
    }
    for (name, why) in &s.skipped {
        out.push(format!("{name}: not read back: {why}"));
    }
    out
}
