//! Tencent Cloud Chat's read-back: the mute-all flags by `get_group_info`
//! (50 groups a read, `MuteAllMember` in the response filter), then each
//! group's muted members with their ends by `get_group_muted_account`
//! (Tencent has no whole-app list of muted members, so member mutes cost
//! one read per group). The target's own module signs and parses them
//! ([`Tencent::read_plan`], [`Tencent::read_request`],
//! [`Tencent::parse_read`]), with its UserSig, made again once when Tencent
//! refuses it, and its primary and backup hosts.
//!
//! `MutedUntil` is in seconds; how a permanent mute shows is unconfirmed,
//! so one more than ten years ahead is taken for permanent.

use std::time::SystemTime;

use super::expect::Expected;
use super::observed::{self, Observer};
use super::read::{Holdings, Io, ReadBack, Sight};
use crate::policy::Dest;
use crate::targets::readback::{Observed, Read};
use crate::targets::tencent::{Tencent, TencentConfig};
use crate::targets::{Outcome, Reply, Request};

/// The Tencent read-back of one target.
pub struct TencentReads {
    target: Tencent,
}

impl TencentReads {
    pub fn new(config: TencentConfig) -> TencentReads {
        TencentReads {
            target: Tencent::new(config),
        }
    }
}

impl Observer for TencentReads {
    const PROVIDER: &'static str = "Tencent";
    const CHATROOMS: bool = false;
    // Each group of a batch comes back with its own ErrorCode.
    const ALONE_WHEN_LEFT_OUT: bool = false;

    fn plan(&self, dests: &[Dest]) -> Vec<Read> {
        Tencent::read_plan(dests)
    }

    fn api(read: &Read) -> &'static str {
        match read {
            Read::MuteAll(_) => "get_group_info",
            Read::Members(_) => "get_group_muted_account",
        }
    }

    fn request(&self, read: &Read, host: usize, now: SystemTime) -> Request {
        self.target.read_request(read, host, now)
    }

    fn parse(
        &self,
        read: &Read,
        reply: &Reply<'_>,
        now: SystemTime,
    ) -> Result<Vec<Observed>, Outcome> {
        self.target.parse_read(read, reply, now)
    }
}

impl ReadBack for TencentReads {
    fn sight(&self) -> Sight {
        Sight {
            // `MuteTime` is whole seconds, rounded up, and `MutedUntil`
            // is Tencent's clock.
            tolerance_ms: 5_000,
            blind: None,
        }
    }

    async fn read(&self, io: &Io, expected: &Expected) -> Holdings {
        observed::read(self, io, expected).await
    }
}
