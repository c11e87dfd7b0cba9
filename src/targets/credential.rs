//! Credentials a target makes itself from its secret (Tencent's UserSig,
//! Agora's app token): made on first use, kept while most of their life is
//! left, made again before they end, and made afresh once when the provider
//! refuses one.
//!
//! Making one is local and cheap (an HMAC and a zlib stream), so nothing
//! limits how often; what needs care is a refusal. The provider answers a
//! call, not a credential, and a call signed just before a renewal can be
//! answered just after it, so a refusal is blamed on the current
//! credential only when that one is older than [`REFUSAL_WINDOW`] (no call
//! signed with an older one can still be under way). The first refusal
//! blamed on a credential renews it; a refusal blamed on a credential that
//! was itself made for a refusal is final (the clock or the secret is
//! wrong, and another one would be refused the same way), and another is
//! tried a window later, so that a fixed clock or secret needs no restart.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::time::unix_ms;

/// How long a refused credential's successor is given before a refusal is
/// blamed on it: longer than any request is under way (`request_timeout_ms`
/// defaults to 10 s), so an answer to a call signed with the predecessor
/// cannot be mistaken for one about it.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// The part of a credential's life after which it is made again.
const RENEW_AT_PERCENT: u64 = 90;

/// One target's credential, shared by every call of the target.
#[derive(Default)]
pub struct Credential {
    slot: Mutex<Option<Held>>,
}

/// Never shows the credential (targets are printed with `{:?}`).
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            None => f.write_str("Credential(none yet)"),
            Some(h) => write!(f, "Credential(<redacted>, issued at {} s)", h.issued_s),
        }
    }
}

#[derive(Clone)]
struct Held {
    value: String,
    issued_s: i64,
    renew_at_s: i64,
    /// Made because the provider refused its predecessor.
    after_refusal: bool,
}

/// What a refusal of the provider leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A new credential is made for the next attempt.
    Renewed,
    /// The credential was made for a refusal less than
    /// [`REFUSAL_WINDOW`] ago: the answer may be about its predecessor,
    /// so the call tries again with it.
    Recent,
    /// A credential made for a refusal is refused too: give up.
    Final { age_seconds: u64 },
}

impl Credential {
    /// The credential to sign a request made at `now` with: the one held,
    /// or one `mint(issued_s, life_s)` makes when none is held or
    /// [`RENEW_AT_PERCENT`] of its life is spent. `life_s` is the life the
    /// minted credential states.
    pub fn get(&self, now: SystemTime, life_s: u64, mint: impl FnOnce(i64) -> String) -> String {
        let now_s = unix_ms(now).div_euclid(1000);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(h) if now_s < h.renew_at_s && now_s >= h.issued_s => h.value.clone(),
            held => {
                let after_refusal = held.as_ref().is_some_and(|h| h.after_refusal);
                let value = mint(now_s);
                *slot = Some(Held {
                    value: value.clone(),
                    issued_s: now_s,
                    renew_at_s: now_s + (life_s * RENEW_AT_PERCENT / 100).max(1) as i64,
                    after_refusal,
                });
                value
            }
        }
    }

    /// The provider refused a credential at `now`: renew it, try again, or
    /// give up (see the module's comment).
    pub fn refused(&self, now: SystemTime) -> Refusal {
        let now_s = unix_ms(now).div_euclid(1000);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(held) = slot.as_mut() else {
            return Refusal::Renewed;
        };
        let age = now_s.saturating_sub(held.issued_s).max(0) as u64;
        if !held.after_refusal {
            // Spent: the next `get` makes one, marked as made for a refusal.
            held.renew_at_s = i64::MIN;
            held.after_refusal = true;
            return Refusal::Renewed;
        }
        if held.renew_at_s == i64::MIN || age < REFUSAL_WINDOW.as_secs() {
            return Refusal::Recent;
        }
        // Another one is tried a window later, so that a fixed clock or
        // secret is picked up without a restart.
        held.renew_at_s = held.renew_at_s.min(now_s + REFUSAL_WINDOW.as_secs() as i64);
        Refusal::Final { age_seconds: age }
    }

    /// A call with the credential went through: it works, so a later
    /// refusal renews it again.
    pub fn worked(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = slot.as_mut() {
            if held.renew_at_s != i64::MIN {
                held.after_refusal = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn debug_output_never_shows_it() {
        let c = Credential::default();
        c.get(at(5), 100, |_| "the-secret-token".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("the-secret-token"), "{shown}");
    }

    #[test]
    fn made_once_and_again_when_ninety_percent_of_its_life_is_spent() {
        let c = Credential::default();
        let mut minted = Vec::new();
        let mut get = |s: u64| {
            c.get(at(s), 1000, |issued| {
                minted.push(issued);
                format!("cred-{issued}")
            })
        };
        assert_eq!(get(10_000), "cred-10000");
        assert_eq!(get(10_899), "cred-10000");
        assert_eq!(
            get(10_900),
            "cred-10900",
            "renewed with 10 % of its life left"
        );
        // A clock that went back past the issue time gets a fresh one too.
        assert_eq!(get(10_000), "cred-10000");
        assert_eq!(minted, [10_000, 10_900, 10_000]);
    }

    #[test]
    fn a_refusal_renews_once_and_a_refused_renewal_is_final_after_the_window() {
        let c = Credential::default();
        let mint = |s: i64| format!("cred-{s}");
        assert_eq!(c.get(at(100), 86_400, mint), "cred-100");
        assert_eq!(c.refused(at(200)), Refusal::Renewed);
        // Refusals before the renewal is used may be about the old one.
        assert_eq!(c.refused(at(201)), Refusal::Recent);
        assert_eq!(c.get(at(202), 86_400, mint), "cred-202");
        assert_eq!(c.refused(at(203)), Refusal::Recent);
        assert_eq!(c.refused(at(261)), Refusal::Recent);
        assert_eq!(
            c.refused(at(262)),
            Refusal::Final { age_seconds: 60 },
            "the renewal itself is refused"
        );
        assert_eq!(
            c.get(at(263), 86_400, mint),
            "cred-202",
            "not renewed at once"
        );
        assert_eq!(c.refused(at(264)), Refusal::Final { age_seconds: 62 });
        assert_eq!(
            c.get(at(322), 86_400, mint),
            "cred-322",
            "a window later another one is tried"
        );
        assert_eq!(c.refused(at(323)), Refusal::Recent);
    }

    #[test]
    fn a_renewal_that_works_may_be_renewed_for_a_later_refusal() {
        let c = Credential::default();
        let mint = |s: i64| format!("cred-{s}");
        c.get(at(100), 86_400, mint);
        assert_eq!(c.refused(at(200)), Refusal::Renewed);
        c.worked(); // an answer to a call signed before the renewal
        assert_eq!(c.get(at(201), 86_400, mint), "cred-201");
        c.worked();
        assert_eq!(c.refused(at(5_000)), Refusal::Renewed);
        assert_eq!(c.get(at(5_001), 86_400, mint), "cred-5001");
    }
}
