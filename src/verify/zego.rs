//! ZEGO ZIM's read-back: `FetchForbidGroupList` over the whole app (a
//! page of up to 10,000 groups a call, each with its `ForbidType` bit sum:
//! 1 mute-all, 2 role mute, 4 user-ID mute), then `QueryGroupInfo` (one
//! group's `IsAllForbid`, `ForbidList`, `ForbidExpireTime`) only for the
//! groups whose mute-all the list contradicts, whose timed mute-all's end
//! is to be compared, or that carry a role mute.
//!
//! Both reads are POSTs with a JSON body; the common parameters and the
//! signature stay in the query, as for the writes. ZEGO has no server API
//! that lists muted members: bit 4 only says whether a group has any
//! user-ID mute, so member mutes are verified by that flag alone.

use std::collections::HashMap;
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use super::expect::{End, Expect, Expected, Place};
use super::read::{end_from_ms, Answer, Held, HeldAll, HeldMembers, Holdings, Io, ReadBack, Sight};
use crate::targets::zego::{signature, ZegoCode, ZegoConfig};
use crate::targets::{Method, Reply, Request, Transient};
use crate::time::unix_ms;

/// `QueryGroupInfo` calls at once (the limiter spaces them).
const CONCURRENT_READS: usize = 8;
/// ZEGO's "logic error, retry" code of the read endpoints.
const LOGIC_ERROR_RETRY: i64 = 660_000_003;
/// The operator (`FromUserId`) is not a registered user.
const OPERATOR_NOT_REGISTERED: i64 = 660_500_002;

/// `ForbidType` bits.
pub const ALL: u32 = 1;
pub const ROLES: u32 = 2;
pub const USERS: u32 = 4;

/// The ZEGO read-back of one target.
pub struct ZegoReads {
    config: ZegoConfig,
}

impl ZegoReads {
    pub fn new(config: ZegoConfig) -> ZegoReads {
        ZegoReads { config }
    }
}

/// One page of `FetchForbidGroupList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `(GroupId, ForbidType)`.
    pub groups: Vec<(String, u32)>,
    /// The `StartFlag` of the next page; `None` at the end.
    pub next: Option<u64>,
}

/// One group's mute settings from `QueryGroupInfo`; `None` when ZEGO
/// answers that the group does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub all: bool,
    pub roles: Vec<i64>,
    /// `ForbidExpireTime` (ms), as sent.
    pub expire_ms: Option<i64>,
}

/// A POST of `action` with `body`, the common parameters signed in the
/// query for `now`.
fn post(
    config: &ZegoConfig,
    action: &str,
    body: serde_json::Value,
    now: SystemTime,
    nonce: &str,
) -> Request {
    let timestamp = (unix_ms(now) / 1000) as u64;
    let sig = signature(
        config.app_id,
        nonce,
        config.server_secret.expose(),
        timestamp,
    );
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("Action", action)
        .append_pair("AppId", &config.app_id.to_string())
        .append_pair("SignatureNonce", nonce)
        .append_pair("Timestamp", &timestamp.to_string())
        .append_pair("SignatureVersion", "2.0")
        .append_pair("Signature", &sig);
    Request {
        method: Method::Post,
        url: format!("{}/?{}", config.base_url.trim_end_matches('/'), q.finish()),
        headers: vec![("Content-Type", "application/json".to_owned())],
        body: Some(body.to_string()),
    }
}

/// `FetchForbidGroupList` from `start_flag` (0 for the first page).
pub fn forbid_list_request(
    config: &ZegoConfig,
    start_flag: u64,
    now: SystemTime,
    nonce: &str,
) -> Request {
    let body = serde_json::json!({"FromUserId": config.from_user_id, "StartFlag": start_flag});
    post(config, "FetchForbidGroupList", body, now, nonce)
}

/// `QueryGroupInfo` of `group`.
pub fn group_info_request(
    config: &ZegoConfig,
    group: &str,
    now: SystemTime,
    nonce: &str,
) -> Request {
    let body = serde_json::json!({"FromUserId": config.from_user_id, "GroupId": group});
    post(config, "QueryGroupInfo", body, now, nonce)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListReply {
    #[serde(default)]
    fetch_end: Option<i64>,
    #[serde(default)]
    next_flag: Option<u64>,
    #[serde(default)]
    group_list: Vec<ListedGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedGroup {
    group_id: String,
    #[serde(default)]
    forbid_type: u32,
}

/// `ForbidList` is typed "Number" in the docs and shown as `[2,3]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Roles {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InfoReply {
    #[serde(default)]
    is_all_forbid: bool,
    #[serde(default)]
    forbid_list: Option<Roles>,
    #[serde(default)]
    forbid_expire_time: Option<i64>,
}

/// The envelope's verdict: `Ok` to read the data, else the answer.
fn classify<T>(reply: &Reply<'_>) -> Result<(), Answer<T>> {
    let Ok(env) = serde_json::from_slice::<Envelope>(reply.body) else {
        let error = format!("HTTP {} without a ZEGO reply body", reply.status);
        return Err(match reply.status {
            429 => Answer::Retry {
                error,
                kind: Transient::RateLimited,
                switch_host: false,
                after: reply.retry_after,
            },
            s if s >= 500 || (200..300).contains(&s) => Answer::Retry {
                error,
                kind: Transient::Outage,
                switch_host: false,
                after: None,
            },
            _ => Answer::Fail(error),
        });
    };
    if env.code == 0 {
        return Ok(());
    }
    let code = ZegoCode::from_code(env.code);
    let what = match env.code {
        LOGIC_ERROR_RETRY => "logic error, retry",
        OPERATOR_NOT_REGISTERED => "from_user_id is not a registered user",
        _ => code.describe(),
    };
    let error = format!("ZEGO code {} ({what}): {}", env.code, env.message);
    let kind = match (code.transient(), env.code) {
        (Some(kind), _) => Some(kind),
        (None, LOGIC_ERROR_RETRY) => Some(Transient::Outage),
        _ if reply.status >= 500 => Some(Transient::Outage),
        _ => None,
    };
    Err(match kind {
        Some(kind) => Answer::Retry {
            error,
            kind,
            switch_host: false,
            after: reply.retry_after,
        },
        None => Answer::Fail(error),
    })
}

/// Reads a `FetchForbidGroupList` reply. The docs contradict themselves on
/// the end of the list (`NextFlag` 0 in one table, `FetchEnd` 1 in another,
/// and an example with both `FetchEnd: 1` and `NextFlag: 100000`): either
/// ends it.
pub fn parse_forbid_list(reply: &Reply<'_>) -> Answer<Page> {
    if let Err(a) = classify(reply) {
        return a;
    }
    match serde_json::from_slice::<ListReply>(reply.body) {
        Ok(r) => {
            let end = r.fetch_end == Some(1) || r.next_flag.is_none_or(|f| f == 0);
            Answer::Data(Page {
                groups: r
                    .group_list
                    .into_iter()
                    .map(|g| (g.group_id, g.forbid_type))
                    .collect(),
                next: if end { None } else { r.next_flag },
            })
        }
        Err(e) => Answer::Fail(format!(
            "not the documented FetchForbidGroupList reply: {e}"
        )),
    }
}

/// Reads a `QueryGroupInfo` reply; `Data(None)` when the group does not
/// exist. `IsAllForbid` and `ForbidList` are documented never to come
/// together, and shown together: both are read.
pub fn parse_group_info(reply: &Reply<'_>) -> Answer<Option<GroupInfo>> {
    if let Ok(env) = serde_json::from_slice::<Envelope>(reply.body) {
        if ZegoCode::from_code(env.code) == ZegoCode::NoSuchGroup {
            return Answer::Data(None);
        }
    }
    if let Err(a) = classify(reply) {
        return a;
    }
    match serde_json::from_slice::<InfoReply>(reply.body) {
        Ok(r) => Answer::Data(Some(GroupInfo {
            all: r.is_all_forbid,
            roles: match r.forbid_list {
                None => Vec::new(),
                Some(Roles::One(0)) => Vec::new(),
                Some(Roles::One(r)) => vec![r],
                Some(Roles::Many(v)) => v,
            },
            expire_ms: r.forbid_expire_time,
        })),
        Err(e) => Answer::Fail(format!("not the documented QueryGroupInfo reply: {e}")),
    }
}

/// Why a group's details are read: the list cannot answer it alone.
fn needs_detail(want_on: Option<bool>, timed: bool, bits: u32) -> bool {
    let listed_on = bits & ALL != 0;
    want_on.is_some_and(|on| on != listed_on) || (timed && listed_on) || bits & ROLES != 0
}

impl ReadBack for ZegoReads {
    fn sight(&self) -> Sight {
        Sight {
            // Ends are in ms; a repair's ceil to whole seconds and the
            // clocks of two hosts stay within this.
            tolerance_ms: 5_000,
            blind: Some("ZEGO has no server API that lists muted members: member mutes are verified by its per-group \"has user-ID mutes\" flag only (a group with member mutes expected and the flag set is counted unverified; which members are muted, and until when, is not read)"),
        }
    }

    async fn read(&self, io: &Io, expected: &Expected) -> Holdings {
        let mut holdings = Holdings::default();
        let groups: Vec<&Place> = expected.places.keys().collect();
        for place in &groups {
            if let Place::Chatroom(_) = place {
                holdings
                    .places
                    .insert((*place).clone(), Err("ZEGO has no chatrooms".into()));
            }
        }
        if groups.iter().all(|p| matches!(p, Place::Chatroom(_))) {
            return holdings;
        }
        let listed = match self.list(io).await {
            Ok(l) => l,
            Err(e) => {
                for place in groups {
                    holdings.places.insert(place.clone(), Err(e.clone()));
                }
                return holdings;
            }
        };
        let mut detail = Vec::new();
        for (place, want) in &expected.places {
            let Place::Group(id) = place else { continue };
            let bits = listed.get(id).copied().unwrap_or(0);
            let want_all = want.mute_all.as_ref().map(|d| d.expect);
            let timed = matches!(want_all, Some(Expect::On(End::At(_))));
            let want_on = want_all.map(|e| matches!(e, Expect::On(_)));
            holdings.places.insert(
                place.clone(),
                Ok(Held {
                    mute_all: Some(HeldAll {
                        muted: bits & ALL != 0,
                        end: None,
                    }),
                    members: HeldMembers::Flag(bits & USERS != 0),
                    roles: Vec::new(),
                }),
            );
            if needs_detail(want_on, timed, bits) {
                detail.push(id.clone());
            }
        }
        let config = &self.config;
        let reads = detail.into_iter().map(|id| async move {
            let info = io
                .call(
                    "QueryGroupInfo",
                    |_, now| group_info_request(config, &id, now, &crate::targets::nonce()),
                    parse_group_info,
                )
                .await;
            (id, info)
        });
        let answers: Vec<_> = stream::iter(reads)
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        let now = crate::time::now_ms();
        for (id, info) in answers {
            let place = Place::Group(id);
            match info {
                Err(e) => {
                    holdings.places.insert(place, Err(e));
                }
                Ok(info) => {
                    if let Some(Ok(held)) = holdings.places.get_mut(&place) {
                        // The group's own read is the later, and the exact one.
                        let info = info.unwrap_or(GroupInfo {
                            all: false,
                            roles: Vec::new(),
                            expire_ms: None,
                        });
                        held.mute_all = Some(HeldAll {
                            muted: info.all,
                            end: info.all.then(|| end_from_ms(info.expire_ms, now)),
                        });
                        held.roles = info.roles;
                    }
                }
            }
        }
        holdings
    }
}

impl ZegoReads {
    /// Every page of `FetchForbidGroupList`: each muted group's bits.
    async fn list(&self, io: &Io) -> Result<HashMap<String, u32>, String> {
        let mut out = HashMap::new();
        let mut flag = 0u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            let config = &self.config;
            let page = io
                .call(
                    "FetchForbidGroupList",
                    |_, now| forbid_list_request(config, flag, now, &crate::targets::nonce()),
                    parse_forbid_list,
                )
                .await?;
            for (id, bits) in page.groups {
                *out.entry(id).or_insert(0) |= bits;
            }
            match page.next {
                // A flag seen before would page forever.
                Some(next) if seen.insert(next) => flag = next,
                Some(next) => {
                    return Err(format!(
                        "FetchForbidGroupList: NextFlag {next} came back twice; the listing does not end"
                    ))
                }
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::time::{Duration, UNIX_EPOCH};

    fn config() -> ZegoConfig {
        toml::from_str::<ZegoConfig>(
            "base_url = \"https://zim-api.zego.im\"\napp_id = 12345\nserver_secret = \"9193cc662a4c0ec135ec71fb57194b38\"\nfrom_user_id = \"bot\"\n",
        )
        .unwrap()
    }

    fn reply(body: &str) -> Reply<'_> {
        Reply {
            status: 200,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn reads_are_posts_signed_in_the_query_with_a_json_body() {
        let now = UNIX_EPOCH + Duration::from_secs(1615186943);
        let r = forbid_list_request(&config(), 0, now, "4fd24687296dd9f3");
        assert_eq!(r.method, Method::Post);
        assert_eq!(
            r.url,
            "https://zim-api.zego.im/?Action=FetchForbidGroupList&AppId=12345&SignatureNonce=4fd24687296dd9f3\
             &Timestamp=1615186943&SignatureVersion=2.0&Signature=43e5cfcca828314675f91b001390566a"
        );
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"FromUserId":"bot","StartFlag":0}"#)
        );
        let r = group_info_request(&config(), "g1", now, "n");
        assert!(r.url.contains("Action=QueryGroupInfo"));
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"FromUserId":"bot","GroupId":"g1"}"#)
        );
        assert!(!format!("{:?}", Secret::new("x")).contains('x'));
    }

    #[test]
    fn the_list_ends_on_fetch_end_or_a_zero_next_flag() {
        let page = |body: &str| match parse_forbid_list(&reply(body)) {
            Answer::Data(p) => p,
            other => panic!("{other:?}"),
        };
        // The documented example: FetchEnd 1 with a NextFlag.
        let p = page(
            r#"{"Code":0,"FetchEnd":1,"NextFlag":100000,"GroupList":[{"GroupId":"g","ForbidType":5}]}"#,
        );
        assert_eq!(
            p,
            Page {
                groups: vec![("g".into(), 5)],
                next: None
            }
        );
        let p = page(r#"{"Code":0,"FetchEnd":0,"NextFlag":0,"GroupList":[]}"#);
        assert_eq!(p.next, None);
        let p = page(r#"{"Code":0,"FetchEnd":0,"NextFlag":7,"GroupList":[]}"#);
        assert_eq!(p.next, Some(7));
        assert!(matches!(
            parse_forbid_list(&reply(r#"{"Code":660300005,"Message":"limit"}"#)),
            Answer::Retry {
                kind: Transient::RateLimited,
                ..
            }
        ));
        assert!(matches!(
            parse_forbid_list(&reply(r#"{"Code":660000003,"Message":"retry"}"#)),
            Answer::Retry {
                kind: Transient::Outage,
                ..
            }
        ));
        assert!(matches!(
            parse_forbid_list(&reply(r#"{"Code":660000002,"Message":"bad"}"#)),
            Answer::Fail(_)
        ));
    }

    #[test]
    fn group_info_takes_roles_as_a_number_or_a_list() {
        let info = |body: &str| match parse_group_info(&reply(body)) {
            Answer::Data(i) => i,
            other => panic!("{other:?}"),
        };
        let i = info(
            r#"{"Code":0,"IsAllForbid":true,"ForbidList":[2,3],"ForbidExpireTime":1700000000000}"#,
        )
        .unwrap();
        assert!(i.all);
        assert_eq!(i.roles, [2, 3]);
        assert_eq!(i.expire_ms, Some(1_700_000_000_000));
        assert_eq!(info(r#"{"Code":0,"ForbidList":3}"#).unwrap().roles, [3]);
        assert_eq!(info(r#"{"Code":660600001,"Message":"no group"}"#), None);
        assert!(matches!(
            parse_group_info(&reply(r#"{"Code":660500002,"Message":"who"}"#)),
            Answer::Fail(e) if e.contains("registered")
        ));
    }

    #[test]
    fn details_are_read_only_where_the_list_cannot_answer() {
        assert!(!needs_detail(Some(true), false, ALL | USERS));
        assert!(!needs_detail(Some(false), false, USERS));
        assert!(!needs_detail(None, false, ALL));
        assert!(
            needs_detail(Some(true), false, 0),
            "confirm a missing mute-all"
        );
        assert!(
            needs_detail(Some(false), false, ALL),
            "confirm an extra mute-all"
        );
        assert!(
            needs_detail(Some(true), true, ALL),
            "compare a timed mute-all's end"
        );
        assert!(needs_detail(Some(false), false, ROLES));
    }
}
