//! The small languages of a rule: ID templates (`"zg-{group_id}"`) and
//! group-ID patterns (`"vip-*"`).

use crate::event::Event;

#[derive(Debug, Clone)]
pub(super) struct Template(Vec<Piece>);

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
    pub(super) fn parse(text: &str) -> Result<Template, String> {
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

    pub(super) fn fill(&self, group_id: &str, event: &Event) -> String {
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
pub fn glob(pattern: &str, text: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("vip-*", "vip-1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
    }
}
