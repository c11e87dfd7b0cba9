//! What a provider's read APIs say it holds, in one shape for every
//! provider that has them (Tencent, Agora), so that `verify` compares it
//! with what the target should hold without knowing the provider.
//!
//! Each provider's module plans the reads of a pass (`read_plan`: which
//! batches, which places), signs each read afresh for every attempt
//! (`read_request`), and parses each answer (`parse_read`) into
//! [`Observed`] facts, or into the same [`super::Outcome`] a write's
//! failure would be (rate limit, outage, refused credential, permanent),
//! so a read is retried, paused and counted like the target's calls
//! (`crate::verify::tencent`, `crate::verify::agora`).

use crate::policy::Dest;

/// What a read asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The mute-all flags of these groups or chat rooms (one batch).
    MuteAll(Vec<Dest>),
    /// Every muted member of one group or chat room, with their ends.
    Members(Dest),
}

/// One fact a provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Whether everyone in `dest` is muted; `None` when the answer left
    /// the group out or did not carry the flag (not read as "off").
    MuteAll { dest: Dest, on: Option<bool> },
    /// Every member the provider holds muted in `dest`.
    Members { dest: Dest, muted: Vec<HeldMute> },
    /// The provider has no such group or chat room.
    Missing { dest: Dest },
}

/// A member mute the provider holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMute {
    /// The provider's user ID.
    pub user: String,
    pub end: MuteEnd,
}

/// When a held mute ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteEnd {
    /// Until lifted.
    Permanent,
    /// At this instant, ms since the epoch, by the provider's clock.
    UntilMs(i64),
}
