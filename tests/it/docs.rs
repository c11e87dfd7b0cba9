//! The documents a stranger reads first stay true: every relative link and
//! anchor in the READMEs resolves, every source path the READMEs and the
//! code's comments name exists, the code map in `src/lib.rs` names every
//! module, the README stays short, and the alert table in
//! `deploy/README.md` is the one `deploy/prometheus/alerts.yml` gives
//! (`MUTEBRIDGE_BLESS=1` rewrites it).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_norway::Value as Yaml;

const DOCS: [&str; 3] = ["README.md", "deploy/README.md", "benches/README.md"];

/// The document's lines outside code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fence = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fence = !fence;
                return false;
            }
            !fence
        })
        .collect()
}

/// GitHub's anchors for the document's headings: lowercased, punctuation
/// dropped, spaces as `-`, repeats numbered `-1`, `-2`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the document's `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_link_and_anchor_in_the_readmes_resolves() {
    let mut broken = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(doc).unwrap();
        let dir = Path::new(doc).parent().unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let file: PathBuf = if path.is_empty() {
                PathBuf::from(doc)
            } else {
                dir.join(path)
            };
            if !file.exists() {
                broken.push(format!("{doc}: {link}: no such file"));
                continue;
            }
            if !anchor.is_empty() {
                let target = std::fs::read_to_string(&file).unwrap();
                if !anchors(&target).contains(anchor) {
                    broken.push(format!("{doc}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The repository paths a text names (`src/...`, `tests/...`, `benches/...`,
/// `deploy/...`, `.ci/...`), as written: relative to the repository's root.
/// Paths with a placeholder in them (`*`, `{`, an upper-case `NAME`) are
/// patterns, not paths, and are left out.
fn source_paths(text: &str) -> Vec<String> {
    const ROOTS: [&str; 5] = ["src/", "tests/", "benches/", "deploy/", ".ci/"];
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./-*{}".contains(c);
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let rest = &text[i..];
        let Some(root) = ROOTS.iter().find(|r| rest.starts_with(**r)) else {
            continue;
        };
        // Only where a path starts: not inside a longer one (`../benches/`
        // is a link, checked as one).
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| path_char(c) || c == '/') {
            continue;
        }
        let end = rest.find(|c: char| !path_char(c)).unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(['.', '-']);
        if path.len() == root.len()
            || path.contains(['*', '{'])
            || path
                .split(['/', '.', '-', '_'])
                .any(|w| w.len() > 1 && w != "README" && w.chars().all(|c| c.is_ascii_uppercase()))
        {
            continue;
        }
        out.push(path.to_owned());
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_path_the_docs_and_comments_name_exists() {
    let mut texts: Vec<(String, String)> = DOCS
        .iter()
        .chain(["deploy/config/mutebridge.toml", "Cargo.toml"].iter())
        .map(|d| (d.to_string(), std::fs::read_to_string(d).unwrap()))
        .collect();
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(Path::new(dir), &mut files);
    }
    for file in files {
        // Comments only: a string in code may name a path on purpose
        // (a test's missing file).
        let comments: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        texts.push((file.display().to_string(), comments));
    }
    let missing: Vec<String> = texts
        .iter()
        .flat_map(|(name, text)| {
            source_paths(text)
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .map(move |p| format!("{name}: {p}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "paths named but not in the repository:\n{}",
        missing.join("\n")
    );
}

#[test]
fn source_paths_are_found_where_prose_names_them() {
    let found = source_paths(
        "see `src/server/mod.rs`, src/lib.rs. and [x](../benches/README.md) or deploy/k8s/ \
         but not target/src/x.rs, `tests/it/*.rs`, src/NAME.rs or src/{a,b}.rs",
    );
    assert_eq!(found, ["src/server/mod.rs", "src/lib.rs", "deploy/k8s/"]);
}

/// Every module of the crate as a path (`worker::engine`), from the files
/// under `src/` (`mod.rs` is its directory's module).
fn modules() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut out: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix("src").unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            // The crate root and the binary are the map's page, not entries.
            (parts != ["lib"] && parts != ["main"]).then(|| parts.join("::"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_code_map_names_every_module() {
    let map: String = std::fs::read_to_string("src/lib.rs")
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|m| !map.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "src/lib.rs's code map does not name these modules (as `path::to::module`): {missing:?}"
    );
}

#[test]
fn anchors_are_github_s() {
    let a = anchors("# A title\n## The endpoint: `POST /webhooks/easemob`\n### Alerts\n## Alerts\n```\n# not a heading\n```\n");
    for slug in [
        "a-title",
        "the-endpoint-post-webhookseasemob",
        "alerts",
        "alerts-1",
    ] {
        assert!(a.contains(slug), "{slug} in {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
}

#[test]
fn the_readme_is_read_in_ten_minutes() {
    let lines = std::fs::read_to_string("README.md")
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 400,
        "README.md has {lines} lines; move operator detail to deploy/README.md"
    );
}

const BEGIN: &str = "<!-- alerts:begin -->\n";
const END: &str = "<!-- alerts:end -->";

/// The alert table, as `alerts.yml` has it.
fn alert_table() -> String {
    let rules: Yaml =
        serde_norway::from_str(&std::fs::read_to_string("deploy/prometheus/alerts.yml").unwrap())
            .unwrap();
    let cell = |v: &Yaml| v.as_str().unwrap_or("").replace('|', "\\|");
    let mut out =
        String::from("| alert | severity | for | says | check first |\n|---|---|---|---|---|\n");
    for group in rules["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                cell(&r["alert"]),
                cell(&r["labels"]["severity"]),
                r["for"].as_str().unwrap_or("—"),
                cell(&r["annotations"]["summary"]),
                cell(&r["annotations"]["runbook"]),
            ));
        }
    }
    out
}

#[test]
fn the_alert_table_is_alerts_yml() {
    let path = "deploy/README.md";
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find(BEGIN).expect("the alerts:begin marker") + BEGIN.len();
    let end = text.find(END).expect("the alerts:end marker");
    let table = alert_table();
    if std::env::var_os("MUTEBRIDGE_BLESS").is_some() {
        let blessed = format!("{}{table}{}", &text[..start], &text[end..]);
        std::fs::write(path, blessed).unwrap();
        return;
    }
    assert_eq!(
        &text[start..end],
        table,
        "{path}'s alert table differs from deploy/prometheus/alerts.yml: run `MUTEBRIDGE_BLESS=1 cargo test --test it docs`"
    );
}

#[test]
fn every_metric_is_in_the_operators_table() {
    let table = std::fs::read_to_string("deploy/README.md").unwrap();
    let rendered = mutebridge::Metrics::new().render();
    let missing: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("mutebridge_"))
        .filter(|name| !table.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in deploy/README.md's Metrics: {missing:?}"
    );
}
