//! RongCloud's read-back: the whole app's muted groups
//! (`/group/ban/query.json`, 200 a page) and muted chatrooms
//! (`/chatroom/ban/query.json`, 1,000 a page), then one gag list per group
//! (`/group/user/gag/list.json`, always with its `groupId`: without one the
//! list spans every group and names none) or chatroom
//! (`/chatroom/user/gag/list.json`). There is no whole-app member list, so
//! member mutes cost one read per place.
//!
//! Every read is a form POST signed in headers like the writes, with the
//! same hosts and failover. The lists give each gag's end as a wall-clock
//! string (`YYYY-MM-DD HH:MM:SS`) in the data centre's zone (the target's
//! `time_zone`), to the second, for gags set in whole minutes.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use super::expect::{End, Expected, Place};
use super::read::{
    Answer, Held, HeldAll, HeldMembers, Holdings, Io, ReadBack, Sight, PERMANENT_AFTER_MS,
};
use crate::targets::rongcloud::{self as rc, signature, RongCloudConfig, TimestampUnit};
use crate::targets::{Method, Outcome, Reply, Request};
use crate::time::unix_ms;

/// Gag lists read at once (the limiter spaces them).
const CONCURRENT_READS: usize = 8;
/// The largest page of `/group/ban/query.json`.
pub const GROUP_PAGE: usize = 200;
/// The largest page of `/chatroom/ban/query.json`.
pub const CHATROOM_PAGE: usize = 1000;

/// The RongCloud read-back of one target.
pub struct RongReads {
    config: RongCloudConfig,
    /// Seconds east of UTC of the times the lists show.
    offset: time::UtcOffset,
}

impl RongReads {
    /// Fails when the zone of the lists' times is neither configured nor
    /// told by the host.
    pub fn new(config: RongCloudConfig) -> Result<RongReads, String> {
        let zone = config.list_time_zone().ok_or_else(|| {
            format!(
                "time_zone: RongCloud lists end times in its data centre's clock and the host ({}) does not tell which; set time_zone = \"beijing\" (the Beijing data centre) or \"utc\" (the global ones)",
                config.base_urls.first().map(|u| crate::targets::host_of(u)).unwrap_or_default()
            )
        })?;
        let offset = time::UtcOffset::from_whole_seconds(zone.utc_offset_seconds())
            .map_err(|e| e.to_string())?;
        Ok(RongReads { config, offset })
    }
}

/// A signed form POST of `path` with `form` to host `host`, for `now`.
pub fn request(
    config: &RongCloudConfig,
    path: &str,
    form: &[(&str, &str)],
    host: usize,
    now: SystemTime,
    nonce: &str,
) -> Request {
    let ms = unix_ms(now);
    let timestamp = match config.timestamp_unit {
        TimestampUnit::Seconds => (ms / 1000).to_string(),
        TimestampUnit::Milliseconds => ms.to_string(),
    };
    let sig = signature(config.app_secret.expose(), nonce, &timestamp);
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    let base = &config.base_urls[host % config.base_urls.len()];
    Request {
        method: Method::Post,
        url: format!("{}{path}", base.trim_end_matches('/')),
        headers: vec![
            ("App-Key", config.app_key.clone()),
            ("Nonce", nonce.to_owned()),
            ("Timestamp", timestamp),
            ("Signature", sig),
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ],
        body: Some(body.finish()),
    }
}

#[derive(Deserialize)]
struct Code {
    code: i64,
}

#[derive(Deserialize)]
struct GroupBans {
    #[serde(default)]
    groupinfo: Vec<GroupBan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupBan {
    group_id: String,
    #[serde(default)]
    stat: i64,
}

/// The docs spell it `chatroomIds`; the official Go SDK decodes
/// `chatroomids` (case-insensitively, so that proves nothing): both.
#[derive(Deserialize)]
struct ChatroomBans {
    #[serde(default, rename = "chatroomIds", alias = "chatroomids")]
    chatroom_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Gags {
    #[serde(default)]
    users: Vec<Gag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gag {
    user_id: String,
    /// The end, `YYYY-MM-DD HH:MM:SS` in the data centre's zone.
    #[serde(default)]
    time: Option<String>,
}

/// The envelope's verdict, with the writes' classification of errors
/// (1000, 1008/429 and 1050 retried, 5xx on the other host).
fn classify<T>(reply: &Reply<'_>) -> Result<(), Answer<T>> {
    match serde_json::from_slice::<Code>(reply.body) {
        Ok(c) if c.code == 200 => Ok(()),
        _ => Err(match rc::read(reply) {
            Outcome::Retry {
                error,
                kind,
                switch_host,
                after,
            } => Answer::Retry {
                error,
                kind,
                switch_host,
                after,
            },
            Outcome::Permanent { error } => Answer::Fail(error),
            // A 200 envelope without the data's shape.
            _ => Answer::Fail(format!("HTTP {}: not a RongCloud reply", reply.status)),
        }),
    }
}

fn data<T: serde::de::DeserializeOwned>(reply: &Reply<'_>, what: &str) -> Answer<T> {
    if let Err(a) = classify(reply) {
        return a;
    }
    match serde_json::from_slice(reply.body) {
        Ok(t) => Answer::Data(t),
        Err(e) => Answer::Fail(format!("not the documented {what} reply: {e}")),
    }
}

/// `/group/ban/query.json` by page: the muted groups on it.
pub fn parse_group_bans(reply: &Reply<'_>) -> Answer<Vec<String>> {
    data::<GroupBans>(reply, "/group/ban/query.json").map(|b| {
        b.groupinfo
            .into_iter()
            .filter(|g| g.stat == 1)
            .map(|g| g.group_id)
            .collect()
    })
}

/// `/chatroom/ban/query.json` by page: the muted chatrooms on it.
pub fn parse_chatroom_bans(reply: &Reply<'_>) -> Answer<Vec<String>> {
    data::<ChatroomBans>(reply, "/chatroom/ban/query.json").map(|b| b.chatroom_ids)
}

/// A gag list: each user's end. What a permanent group gag (`minute=0`)
/// shows is not documented: an empty, unreadable or far-future time is
/// taken for permanent.
pub fn parse_gags(
    reply: &Reply<'_>,
    offset: time::UtcOffset,
    now_ms: i64,
) -> Answer<BTreeMap<String, End>> {
    data::<Gags>(reply, "gag list").map(|g| {
        g.users
            .into_iter()
            .map(|u| {
                let end = u
                    .time
                    .as_deref()
                    .and_then(|t| wall_clock_ms(t, offset))
                    .filter(|t| *t <= now_ms + PERMANENT_AFTER_MS)
                    .map_or(End::Permanent, End::At);
                (u.user_id, end)
            })
            .collect()
    })
}

const WALL_CLOCK: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// `YYYY-MM-DD HH:MM:SS` at `offset`, as ms since the epoch.
pub fn wall_clock_ms(text: &str, offset: time::UtcOffset) -> Option<i64> {
    let t = time::PrimitiveDateTime::parse(text.trim(), WALL_CLOCK).ok()?;
    Some((t.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as i64)
}

/// ms since the epoch as `YYYY-MM-DD HH:MM:SS` at `offset` (the stand-in's
/// lists, and messages).
pub fn wall_clock(ms: i64, offset: time::UtcOffset) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| t.to_offset(offset).format(WALL_CLOCK).unwrap_or_default())
        .unwrap_or_default()
}

impl ReadBack for RongReads {
    fn sight(&self) -> Sight {
        Sight {
            // Gags are set in whole minutes, rounded up, and listed to the
            // second.
            tolerance_ms: 120_000,
            blind: None,
        }
    }

    async fn read(&self, io: &Io, expected: &Expected) -> Holdings {
        let mut holdings = Holdings::default();
        let has = |chatroom: bool| {
            expected
                .places
                .keys()
                .any(|p| matches!(p, Place::Chatroom(_)) == chatroom)
        };
        let groups_banned = match has(false) {
            true => Some(self.banned(io, false).await),
            false => None,
        };
        let rooms_banned = match has(true) {
            true => Some(self.banned(io, true).await),
            false => None,
        };
        let config = &self.config;
        let offset = self.offset;
        let places: Vec<Place> = expected.places.keys().cloned().collect();
        let reads = places.into_iter().map(|place| async move {
            let (path, key, api) = match place {
                Place::Group(_) => (
                    "/group/user/gag/list.json",
                    "groupId",
                    "/group/user/gag/list.json",
                ),
                Place::Chatroom(_) => (
                    "/chatroom/user/gag/list.json",
                    "chatroomId",
                    "/chatroom/user/gag/list.json",
                ),
            };
            let id = place.id().to_owned();
            let gags = io
                .call(
                    api,
                    |host, now| {
                        request(
                            config,
                            path,
                            &[(key, &id)],
                            host,
                            now,
                            &crate::targets::nonce(),
                        )
                    },
                    |reply| parse_gags(reply, offset, crate::time::now_ms()),
                )
                .await;
            (place, gags)
        });
        let answers: Vec<_> = stream::iter(reads)
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        for (place, gags) in answers {
            let banned = match place {
                Place::Group(_) => &groups_banned,
                Place::Chatroom(_) => &rooms_banned,
            };
            let held = match (banned.as_ref().expect("read for every kind of place"), gags) {
                (Err(e), _) => Err(e.clone()),
                (_, Err(e)) => Err(e),
                (Ok(set), Ok(gags)) => Ok(Held {
                    mute_all: Some(HeldAll {
                        muted: set.contains(place.id()),
                        end: Some(End::Permanent),
                    }),
                    members: HeldMembers::Exact(gags),
                    roles: Vec::new(),
                }),
            };
            holdings.places.insert(place, held);
        }
        holdings
    }
}

impl RongReads {
    /// Every muted group (or chatroom) of the app, page by page until a
    /// page comes back short (the lists give no total).
    async fn banned(&self, io: &Io, chatroom: bool) -> Result<HashSet<String>, String> {
        let (path, size) = match chatroom {
            true => ("/chatroom/ban/query.json", CHATROOM_PAGE),
            false => ("/group/ban/query.json", GROUP_PAGE),
        };
        let mut out = HashSet::new();
        for page in 1.. {
            let (p, s) = (page.to_string(), size.to_string());
            let config = &self.config;
            let build = |host, now| {
                request(
                    config,
                    path,
                    &[("page", &p), ("size", &s)],
                    host,
                    now,
                    &crate::targets::nonce(),
                )
            };
            let ids = match chatroom {
                true => io.call(path, build, parse_chatroom_bans).await?,
                false => io.call(path, build, parse_group_bans).await?,
            };
            let n = ids.len();
            let before = out.len();
            out.extend(ids);
            // A short page ends it; so does a page of nothing new (a host
            // that ignores paging would repeat the first page for ever).
            if n < size || out.len() == before {
                return Ok(out);
            }
        }
        unreachable!("the pages end")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Transient;
    use std::time::{Duration, UNIX_EPOCH};

    fn reply(status: u16, body: &str) -> Reply<'_> {
        Reply {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn list_times_are_read_in_the_data_centre_zone() {
        let beijing = time::UtcOffset::from_whole_seconds(8 * 3600).unwrap();
        // 2026-01-01 08:00:00 in Beijing is midnight UTC.
        assert_eq!(
            wall_clock_ms("2026-01-01 08:00:00", beijing),
            Some(1_767_225_600_000)
        );
        assert_eq!(
            wall_clock_ms("2026-01-01 00:00:00", time::UtcOffset::UTC),
            Some(1_767_225_600_000)
        );
        assert_eq!(
            wall_clock(1_767_225_600_000, beijing),
            "2026-01-01 08:00:00"
        );
        assert_eq!(wall_clock_ms("", beijing), None);
        let now = 1_767_225_600_000;
        let gags = |body: &str| match parse_gags(&reply(200, body), beijing, now) {
            Answer::Data(g) => g,
            other => panic!("{other:?}"),
        };
        let g = gags(
            r#"{"code":200,"users":[{"userId":"a","time":"2026-01-01 09:00:00"},{"userId":"b","time":""},{"userId":"c","time":"2099-12-31 23:59:59"}]}"#,
        );
        assert_eq!(g["a"], End::At(now + 3_600_000));
        assert_eq!(g["b"], End::Permanent);
        assert_eq!(g["c"], End::Permanent);
    }

    #[test]
    fn ban_lists_take_either_spelling_and_errors_are_classified() {
        let rooms = parse_chatroom_bans(&reply(200, r#"{"code":200,"chatroomids":["r1"]}"#));
        assert_eq!(rooms, Answer::Data(vec!["r1".to_owned()]));
        let rooms = parse_chatroom_bans(&reply(200, r#"{"code":200,"chatroomIds":["r2"]}"#));
        assert_eq!(rooms, Answer::Data(vec!["r2".to_owned()]));
        let groups = parse_group_bans(&reply(
            200,
            r#"{"code":200,"groupinfo":[{"groupId":"g1","stat":1},{"groupId":"g2","stat":0}]}"#,
        ));
        assert_eq!(groups, Answer::Data(vec!["g1".to_owned()]));
        assert!(matches!(
            parse_group_bans(&reply(429, r#"{"code":1008,"errorMessage":"too many"}"#)),
            Answer::Retry {
                kind: Transient::RateLimited,
                ..
            }
        ));
        assert!(matches!(
            parse_group_bans(&reply(500, r#"{"code":1000}"#)),
            Answer::Retry {
                kind: Transient::Outage,
                switch_host: true,
                ..
            }
        ));
        assert!(matches!(
            parse_group_bans(&reply(401, r#"{"code":1004}"#)),
            Answer::Fail(_)
        ));
    }

    #[test]
    fn reads_are_signed_form_posts_on_the_chosen_host() {
        let config: RongCloudConfig = toml::from_str(
            "app_key = \"uwd1c0sxdlx2\"\napp_secret = \"Y1W2MeFwwwRxa0\"\ntimestamp_unit = \"milliseconds\"\n",
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_millis(1408710653000);
        let r = request(
            &config,
            "/group/user/gag/list.json",
            &[("groupId", "g 1")],
            1,
            now,
            "14314",
        );
        assert_eq!(r.url, "https://api-b.rong-api.com/group/user/gag/list.json");
        assert_eq!(r.body.as_deref(), Some("groupId=g+1"));
        assert!(r.headers.contains(&(
            "Signature",
            "30be0bbca9c9b2e27578701e9fda2358a814c88f".into()
        )));
        assert!(
            RongReads::new(config.clone()).is_ok(),
            "rong-api.com is Beijing"
        );
        let mut elsewhere = config;
        elsewhere.base_urls = vec!["http://127.0.0.1:1".into()];
        let e = RongReads::new(elsewhere).err().unwrap();
        assert!(e.contains("time_zone"), "{e}");
    }
}
