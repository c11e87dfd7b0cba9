//! Comparing what a target should hold ([`Expected`]) with what its
//! provider holds ([`Holdings`]), place by place and dimension by
//! dimension. Pure: the time of the comparison is given.

use serde::Serialize;

use super::expect::{Dim, End, Expect, Expected, Place};
use super::read::{HeldMembers, Holdings, PERMANENT_AFTER_MS};

/// What a difference is about, the `dimension` label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Dimension {
    /// The group-wide mute.
    MuteAll,
    /// One member's mute.
    Member,
    /// A group-level mute of roles (ZEGO), which mutebridge never sets.
    Roles,
}

/// How it differs, the `difference` label.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Difference {
    /// Should be muted there and is not.
    Missing,
    /// Is muted there and should not be.
    Extra,
    /// Muted on both sides, ending at another time.
    WrongEnd,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub place: Place,
    pub dimension: Dimension,
    /// The provider's user ID of a member difference; `None` when the
    /// provider cannot say who (ZEGO's flag).
    pub user: Option<String>,
    pub difference: Difference,
    /// What should be there (`None`: nothing was expected of the place).
    pub expected: Option<Expect>,
    /// What the provider shows: muted with this end, or not.
    pub held: Option<End>,
    /// The expectation's dimension, which says how to repair it.
    pub dim: Option<Dim>,
}

/// What one target's comparison found.
#[derive(Debug, Clone, Default)]
pub struct Compared {
    pub findings: Vec<Finding>,
    pub agreed: usize,
    pub differed: usize,
    /// Places that could not be read, with why.
    pub unread: Vec<(Place, String)>,
    /// Member mutes expected where the provider shows only that some
    /// member is muted: not verified one by one.
    pub unverified: usize,
}

/// Compares `expected` with `holdings` at `now_ms`; ends within
/// `tolerance_ms` agree.
pub fn compare(
    expected: &Expected,
    holdings: &Holdings,
    tolerance_ms: i64,
    now_ms: i64,
) -> Compared {
    let mut out = Compared::default();
    for (place, want) in &expected.places {
        let held = match holdings.places.get(place) {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                out.unread.push((place.clone(), e.clone()));
                continue;
            }
            None => {
                out.unread.push((place.clone(), "not read".into()));
                continue;
            }
        };
        let before = out.findings.len();
        let cmp = Cmp {
            tolerance_ms,
            now_ms,
        };
        if let (Some(dim), Some(all)) = (&want.mute_all, held.mute_all) {
            let shown = all.muted.then(|| all.end.unwrap_or(End::Unknown));
            if let Some(d) = cmp.dimension(dim.expect, shown) {
                out.findings.push(Finding {
                    place: place.clone(),
                    dimension: Dimension::MuteAll,
                    user: None,
                    difference: d,
                    expected: Some(dim.expect),
                    held: shown,
                    dim: Some(dim.clone()),
                });
            }
        }
        if !held.roles.is_empty() {
            out.findings.push(Finding {
                place: place.clone(),
                dimension: Dimension::Roles,
                user: None,
                difference: Difference::Extra,
                expected: None,
                held: None,
                dim: want.mute_all.clone(),
            });
        }
        match &held.members {
            HeldMembers::Exact(shown) => {
                let users = want.members.keys().chain(shown.keys());
                let mut seen = std::collections::BTreeSet::new();
                for user in users {
                    if !seen.insert(user) {
                        continue;
                    }
                    let dim = want.members.get(user);
                    let expect = dim.map_or(Expect::Off { since: None }, |d| d.expect);
                    let end = shown.get(user).copied();
                    if let Some(d) = cmp.dimension(expect, end) {
                        out.findings.push(Finding {
                            place: place.clone(),
                            dimension: Dimension::Member,
                            user: Some(user.clone()),
                            difference: d,
                            expected: dim.map(|d| d.expect),
                            held: end,
                            dim: dim.cloned(),
                        });
                    }
                }
            }
            HeldMembers::Flag(any) => {
                let on: Vec<(&String, &Dim)> = want
                    .members
                    .iter()
                    .filter(|(_, d)| cmp.on(d.expect))
                    .collect();
                match (on.is_empty(), any) {
                    // Nobody is muted there: every expected mute is missing.
                    (false, false) => {
                        for (user, dim) in on {
                            out.findings.push(Finding {
                                place: place.clone(),
                                dimension: Dimension::Member,
                                user: Some(user.clone()),
                                difference: Difference::Missing,
                                expected: Some(dim.expect),
                                held: None,
                                dim: Some(dim.clone()),
                            });
                        }
                    }
                    // Somebody is, and nobody should be: who is not known.
                    (true, true) => out.findings.push(Finding {
                        place: place.clone(),
                        dimension: Dimension::Member,
                        user: None,
                        difference: Difference::Extra,
                        expected: None,
                        held: Some(End::Unknown),
                        dim: None,
                    }),
                    (false, true) => out.unverified += on.len(),
                    (true, false) => {}
                }
            }
            HeldMembers::NotRead => {}
        }
        if out.findings.len() > before {
            out.differed += 1;
        } else {
            out.agreed += 1;
        }
    }
    out
}

struct Cmp {
    tolerance_ms: i64,
    now_ms: i64,
}

impl Cmp {
    /// Whether `expect` means muted now.
    fn on(&self, expect: Expect) -> bool {
        match expect {
            Expect::On(End::At(t)) => t > self.now_ms,
            Expect::On(_) => true,
            Expect::Off { .. } => false,
        }
    }

    /// Whether a shown end still mutes now (an end that has passed is a
    /// list that has not caught up: not muted).
    fn shown_on(&self, shown: Option<End>) -> Option<End> {
        shown.filter(|e| !matches!(e, End::At(t) if *t <= self.now_ms))
    }

    /// How `shown` (muted until then, or `None`) differs from `expect`.
    fn dimension(&self, expect: Expect, shown: Option<End>) -> Option<Difference> {
        let shown = self.shown_on(shown);
        let expect = match expect {
            Expect::On(End::At(t)) if t <= self.now_ms => Expect::Off { since: Some(t) },
            e => e,
        };
        match (expect, shown) {
            (Expect::On(_), None) => Some(Difference::Missing),
            (Expect::Off { .. }, None) => None,
            // Ended here, shown a little longer there: the provider rounds
            // up (minutes) or its clock runs behind.
            (Expect::Off { since: Some(s) }, Some(End::At(t)))
                if (t - s).abs() <= self.tolerance_ms =>
            {
                None
            }
            (Expect::Off { .. }, Some(_)) => Some(Difference::Extra),
            (Expect::On(want), Some(held)) => {
                (!self.same_end(want, held)).then_some(Difference::WrongEnd)
            }
        }
    }

    fn same_end(&self, want: End, held: End) -> bool {
        let far = |t: i64| t > self.now_ms + PERMANENT_AFTER_MS;
        match (want, held) {
            (End::Unknown, _) | (_, End::Unknown) => true,
            (End::Permanent, End::Permanent) => true,
            (End::Permanent, End::At(t)) | (End::At(t), End::Permanent) => far(t),
            (End::At(a), End::At(b)) => (a - b).abs() <= self.tolerance_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::expect::{Origin, Want};
    use crate::verify::read::{Held, HeldAll};
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000_000;

    fn dim(expect: Expect, member: Option<&str>) -> Dim {
        Dim {
            expect,
            origin: Origin::Newest,
            member: member.map(str::to_owned),
            event_id: Some("e".into()),
            until_hint: None,
            source: 0,
        }
    }

    fn one(want: Want, held: Held, tolerance: i64) -> Compared {
        let place = Place::Group("g".into());
        let mut expected = Expected::default();
        expected.places.insert(place.clone(), want);
        let mut holdings = Holdings::default();
        holdings.places.insert(place, Ok(held));
        compare(&expected, &holdings, tolerance, NOW)
    }

    fn kinds(c: &Compared) -> Vec<(Dimension, Option<&str>, Difference)> {
        c.findings
            .iter()
            .map(|f| (f.dimension, f.user.as_deref(), f.difference))
            .collect()
    }

    #[test]
    fn members_missing_extra_and_wrong_end_against_an_exact_list() {
        let mut want = Want::default();
        want.members.insert(
            "a".into(),
            dim(Expect::On(End::At(NOW + 600_000)), Some("a")),
        );
        want.members.insert(
            "b".into(),
            dim(Expect::On(End::At(NOW + 600_000)), Some("b")),
        );
        want.members
            .insert("c".into(), dim(Expect::On(End::Permanent), Some("c")));
        want.members.insert(
            "d".into(),
            dim(
                Expect::Off {
                    since: Some(NOW - 30_000),
                },
                Some("d"),
            ),
        );
        want.members
            .insert("e".into(), dim(Expect::On(End::At(NOW - 1)), Some("e")));
        let mut shown = BTreeMap::new();
        shown.insert("a".to_owned(), End::At(NOW + 650_000)); // rounded up: agrees
        shown.insert("c".to_owned(), End::At(NOW + 600_000)); // permanent expected
        shown.insert("d".to_owned(), End::At(NOW + 20_000)); // ended here, rounding there
        shown.insert("e".to_owned(), End::At(NOW + 3_600_000)); // ended here long ago
        shown.insert("x".to_owned(), End::Permanent); // never muted by us
        shown.insert("y".to_owned(), End::At(NOW - 5)); // the list lags: ended
        let held = Held {
            mute_all: Some(HeldAll {
                muted: false,
                end: Some(End::Permanent),
            }),
            members: HeldMembers::Exact(shown),
            roles: Vec::new(),
        };
        let c = one(want, held, 120_000);
        assert_eq!(
            kinds(&c),
            [
                (Dimension::Member, Some("b"), Difference::Missing),
                (Dimension::Member, Some("c"), Difference::WrongEnd),
                (Dimension::Member, Some("e"), Difference::Extra),
                (Dimension::Member, Some("x"), Difference::Extra),
            ]
        );
        assert_eq!((c.agreed, c.differed), (0, 1));
    }

    #[test]
    fn a_flag_finds_all_missing_or_an_unknown_extra_and_otherwise_says_it_cannot_tell() {
        let mut want = Want {
            mute_all: Some(dim(Expect::On(End::Permanent), None)),
            ..Want::default()
        };
        want.members
            .insert("a".into(), dim(Expect::On(End::Permanent), Some("a")));
        let held = |all: bool, flag: bool| Held {
            mute_all: Some(HeldAll {
                muted: all,
                end: None,
            }),
            members: HeldMembers::Flag(flag),
            roles: Vec::new(),
        };
        let c = one(want.clone(), held(false, false), 5000);
        assert_eq!(
            kinds(&c),
            [
                (Dimension::MuteAll, None, Difference::Missing),
                (Dimension::Member, Some("a"), Difference::Missing),
            ]
        );
        let c = one(want.clone(), held(true, true), 5000);
        assert!(c.findings.is_empty());
        assert_eq!((c.unverified, c.agreed), (1, 1));
        let quiet = Want {
            mute_all: Some(dim(Expect::Off { since: None }, None)),
            ..Want::default()
        };
        let c = one(quiet, held(true, true), 5000);
        assert_eq!(
            kinds(&c),
            [
                (Dimension::MuteAll, None, Difference::Extra),
                (Dimension::Member, None, Difference::Extra),
            ]
        );
    }

    #[test]
    fn a_timed_mute_all_compares_its_end_and_roles_are_extra() {
        let want = Want {
            mute_all: Some(dim(Expect::On(End::At(NOW + 60_000)), None)),
            ..Want::default()
        };
        let held = Held {
            mute_all: Some(HeldAll {
                muted: true,
                end: Some(End::At(NOW + 600_000)),
            }),
            members: HeldMembers::NotRead,
            roles: vec![3],
        };
        let c = one(want, held, 5000);
        assert_eq!(
            kinds(&c),
            [
                (Dimension::MuteAll, None, Difference::WrongEnd),
                (Dimension::Roles, None, Difference::Extra),
            ]
        );
    }
}
