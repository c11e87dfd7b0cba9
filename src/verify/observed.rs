//! The read-back of providers whose target module plans, signs and parses
//! its own reads (Tencent, Agora: [`crate::targets::readback`]): running
//! those reads through [`Io`] and turning the [`Observed`] facts into
//! [`Holdings`].
//!
//! A pass reads the mute-all flags in the target's batches first, then the
//! member list of each place that exists (none is read for a place the
//! provider does not have). Both providers hold a mute-all until it is
//! lifted and list every muted member with its end, so nothing mutebridge
//! sets is out of their sight. A place the provider does not have holds
//! nothing; when something should be muted there it is reported unread
//! with why, since no repair can apply it.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};

use super::expect::{End, Expect, Expected, Place, Want};
use super::read::{Answer, Held, HeldAll, HeldMembers, Holdings, Io};
use crate::policy::Dest;
use crate::targets::readback::{MuteEnd, Observed, Read};
use crate::targets::{Outcome, Reply, Request};

/// Reads in flight at once (the limiter spaces them).
const CONCURRENT_READS: usize = 8;

/// What differs between the providers read this way.
pub trait Observer: Sync {
    /// The provider's name, for messages.
    const PROVIDER: &'static str;
    /// Whether the provider has chat rooms besides groups.
    const CHATROOMS: bool;
    /// Whether an id a batch answer leaves out is read again alone (the
    /// provider answers a batch with the ids it knows, and one unknown id
    /// alone with "no such group").
    const ALONE_WHEN_LEFT_OUT: bool;

    /// The reads of a pass over `dests`, in the target's batches.
    fn plan(&self, dests: &[Dest]) -> Vec<Read>;
    /// The read's name in the summary and in
    /// `mutebridge_verify_reads_total`'s log lines.
    fn api(read: &Read) -> &'static str;
    /// One attempt's request, signed for `host` at `now`.
    fn request(&self, read: &Read, host: usize, now: SystemTime) -> Request;
    /// What a reply says, as the target reads it.
    fn parse(
        &self,
        read: &Read,
        reply: &Reply<'_>,
        now: SystemTime,
    ) -> Result<Vec<Observed>, Outcome>;
    /// Whether a failed batch read says nothing about which of its ids
    /// failed, so each is read alone.
    fn split(&self, _reply: &Reply<'_>) -> bool {
        false
    }
}

/// One place's mute-all flag as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    On(bool),
    /// The provider has no such group or chat room.
    Missing,
}

fn place_of(dest: &Dest) -> Option<Place> {
    match dest {
        Dest::Group(id) => Some(Place::Group(id.clone())),
        Dest::Chatroom(id) => Some(Place::Chatroom(id.clone())),
        Dest::Event => None,
    }
}

/// One read; `Ok(None)`: a batch to read again id by id.
async fn call<O: Observer>(o: &O, io: &Io, read: &Read) -> Result<Option<Vec<Observed>>, String> {
    let batch = matches!(read, Read::MuteAll(d) if d.len() > 1);
    io.call(
        O::api(read),
        |host, now| o.request(read, host, now),
        |reply| {
            if batch && o.split(reply) {
                return Answer::Data(None);
            }
            Answer::from_outcome(o.parse(read, reply, SystemTime::now())).map(Some)
        },
    )
    .await
}

/// Whether anything should be muted at the place at `now_ms`.
fn wants_a_mute(want: &Want, now_ms: i64) -> bool {
    let on = |e: Expect| match e {
        Expect::On(End::At(t)) => t > now_ms,
        Expect::On(_) => true,
        Expect::Off { .. } => false,
    };
    want.mute_all.as_ref().is_some_and(|d| on(d.expect))
        || want.members.values().any(|d| on(d.expect))
}

/// What a place the provider does not have holds: nothing, which agrees
/// when nothing should be muted there.
fn missing<O: Observer>(place: &Place, want: Option<&Want>, now_ms: i64) -> Result<Held, String> {
    if want.is_some_and(|w| wants_a_mute(w, now_ms)) {
        return Err(format!(
            "{} has no {place} (dismissed, or never created): what should be muted there cannot be applied until it exists",
            O::PROVIDER
        ));
    }
    Ok(Held {
        mute_all: Some(HeldAll {
            muted: false,
            end: Some(End::Permanent),
        }),
        members: HeldMembers::Exact(BTreeMap::new()),
        roles: Vec::new(),
    })
}

/// What the provider holds at each place of `expected`.
pub async fn read<O: Observer>(o: &O, io: &Io, expected: &Expected) -> Holdings {
    let mut holdings = Holdings::default();
    let mut dests = Vec::new();
    for place in expected.places.keys() {
        match place {
            Place::Chatroom(_) if !O::CHATROOMS => {
                holdings.places.insert(
                    place.clone(),
                    Err(format!("{} has no chat rooms", O::PROVIDER)),
                );
            }
            Place::Group(id) => dests.push(Dest::Group(id.clone())),
            Place::Chatroom(id) => dests.push(Dest::Chatroom(id.clone())),
        }
    }
    let (mut round, lists): (Vec<Read>, Vec<Read>) = o
        .plan(&dests)
        .into_iter()
        .partition(|r| matches!(r, Read::MuteAll(_)));

    // The flags, batch by batch; what a batch cannot tell is read alone.
    let mut flags: HashMap<Place, Result<Flag, String>> = HashMap::new();
    while !round.is_empty() {
        let reads = std::mem::take(&mut round)
            .into_iter()
            .map(|read| async move {
                let got = call(o, io, &read).await;
                (read, got)
            });
        let answers: Vec<_> = stream::iter(reads)
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        for (read, got) in answers {
            let Read::MuteAll(batch) = &read else {
                continue;
            };
            let observed = match got {
                Err(e) => {
                    for place in batch.iter().filter_map(place_of) {
                        flags.insert(place, Err(e.clone()));
                    }
                    continue;
                }
                Ok(None) => {
                    round.extend(batch.iter().map(|d| Read::MuteAll(vec![d.clone()])));
                    continue;
                }
                Ok(Some(observed)) => observed,
            };
            for fact in observed {
                let (dest, flag) = match fact {
                    Observed::MuteAll { dest, on: Some(on) } => (dest, Ok(Flag::On(on))),
                    Observed::Missing { dest } => (dest, Ok(Flag::Missing)),
                    Observed::MuteAll { dest, on: None }
                        if O::ALONE_WHEN_LEFT_OUT && batch.len() > 1 =>
                    {
                        round.push(Read::MuteAll(vec![dest]));
                        continue;
                    }
                    Observed::MuteAll { dest, on: None } => {
                        let why = format!(
                            "{}: the answer does not say whether everyone is muted there",
                            O::api(&read)
                        );
                        (dest, Err(why))
                    }
                    Observed::Members { .. } => continue,
                };
                if let Some(place) = place_of(&dest) {
                    flags.insert(place, flag);
                }
            }
        }
    }

    // The member lists of the places that exist.
    let lists = lists.into_iter().filter(|r| match r {
        Read::Members(d) => {
            place_of(d).is_some_and(|p| matches!(flags.get(&p), Some(Ok(Flag::On(_)))))
        }
        Read::MuteAll(_) => false,
    });
    let reads = lists.map(|read| async move {
        let got = call(o, io, &read).await;
        (read, got)
    });
    let answers: Vec<_> = stream::iter(reads)
        .buffer_unordered(CONCURRENT_READS)
        .collect()
        .await;
    let mut members: HashMap<Place, Result<Option<BTreeMap<String, End>>, String>> = HashMap::new();
    for (read, got) in answers {
        let Read::Members(dest) = &read else {
            continue;
        };
        let Some(place) = place_of(dest) else {
            continue;
        };
        let held = got.and_then(|observed| {
            let facts = observed.unwrap_or_default();
            let mut out = Err(format!(
                "{}: the answer does not list {place}",
                O::api(&read)
            ));
            for fact in facts {
                match fact {
                    Observed::Members { muted, .. } => {
                        out = Ok(Some(
                            muted
                                .into_iter()
                                .map(|m| {
                                    let end = match m.end {
                                        MuteEnd::Permanent => End::Permanent,
                                        MuteEnd::UntilMs(t) => End::At(t),
                                    };
                                    (m.user, end)
                                })
                                .collect(),
                        ))
                    }
                    Observed::Missing { .. } => out = Ok(None),
                    Observed::MuteAll { .. } => {}
                }
            }
            out
        });
        members.insert(place, held);
    }

    let now_ms = crate::time::now_ms();
    for dest in &dests {
        let Some(place) = place_of(dest) else {
            continue;
        };
        let want = expected.places.get(&place);
        let held = match flags.remove(&place) {
            None => Err(format!("{} did not answer for {place}", O::PROVIDER)),
            Some(Err(e)) => Err(e),
            Some(Ok(Flag::Missing)) => missing::<O>(&place, want, now_ms),
            Some(Ok(Flag::On(on))) => match members.remove(&place) {
                None => Err(format!("{place}: its members were not read")),
                Some(Err(e)) => Err(e),
                // Gone between the two reads.
                Some(Ok(None)) => missing::<O>(&place, want, now_ms),
                Some(Ok(Some(muted))) => Ok(Held {
                    // A mute-all has no length at these providers.
                    mute_all: Some(HeldAll {
                        muted: on,
                        end: Some(End::Permanent),
                    }),
                    members: HeldMembers::Exact(muted),
                    roles: Vec::new(),
                }),
            },
        };
        holdings.places.insert(place, held);
    }
    holdings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::expect::{Dim, Origin};

    struct Tencentish;

    impl Observer for Tencentish {
        const PROVIDER: &'static str = "Tencent";
        const CHATROOMS: bool = false;
        const ALONE_WHEN_LEFT_OUT: bool = false;
        fn plan(&self, _: &[Dest]) -> Vec<Read> {
            Vec::new()
        }
        fn api(_: &Read) -> &'static str {
            "get_group_info"
        }
        fn request(&self, _: &Read, _: usize, _: SystemTime) -> Request {
            unreachable!("not sent in these tests")
        }
        fn parse(&self, _: &Read, _: &Reply<'_>, _: SystemTime) -> Result<Vec<Observed>, Outcome> {
            unreachable!("not sent in these tests")
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn dim(expect: Expect) -> Dim {
        Dim {
            expect,
            origin: Origin::Newest,
            member: Some("u".into()),
            event_id: None,
            until_hint: None,
            source: 0,
        }
    }

    #[test]
    fn a_place_the_provider_lacks_agrees_only_when_nothing_should_be_muted_there() {
        let place = Place::Group("g".into());
        let mut want = Want::default();
        want.members.insert(
            "u".into(),
            dim(Expect::Off {
                since: Some(NOW - 1),
            }),
        );
        let held = missing::<Tencentish>(&place, Some(&want), NOW).unwrap();
        assert_eq!(held.members, HeldMembers::Exact(BTreeMap::new()));
        assert_eq!(held.mute_all.map(|a| a.muted), Some(false));
        // A timed mute that has ended is not expected either.
        want.members
            .insert("v".into(), dim(Expect::On(End::At(NOW - 1))));
        assert!(missing::<Tencentish>(&place, Some(&want), NOW).is_ok());
        want.members
            .insert("w".into(), dim(Expect::On(End::At(NOW + 60_000))));
        let why = missing::<Tencentish>(&place, Some(&want), NOW).unwrap_err();
        assert!(why.starts_with("Tencent has no group g"), "{why}");
    }
}
