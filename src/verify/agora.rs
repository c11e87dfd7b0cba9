//! Agora Chat's read-back: the mute-all flags from the details of up to
//! 100 groups (`GET …/chatgroups/{ids}`) or chat rooms
//! (`GET …/chatrooms/{ids}`) a read, then each one's mute list with the
//! ends (`GET …/{id}/mute`; Agora has no whole-app list of muted members,
//! so member mutes cost one read per place). The target's own module signs
//! and parses them ([`Agora::read_plan`], [`Agora::read_request`],
//! [`Agora::parse_read`]), with its app token, made again once when Agora
//! answers 401.
//!
//! A details batch leaves out the ids Agora does not know (one asked alone
//! answers 404), so those are read again alone, as is every id of a batch
//! answered 404 as a whole. How a permanent mute shows in `expire` is
//! unconfirmed: -1, 0 and ends past 2100 are taken for permanent.

use std::time::SystemTime;

use super::expect::Expected;
use super::observed::{self, Observer};
use super::read::{Holdings, Io, ReadBack, Sight};
use crate::policy::Dest;
use crate::targets::agora::{Agora, AgoraConfig};
use crate::targets::readback::{Observed, Read};
use crate::targets::{Outcome, Reply, Request};

/// The Agora read-back of one target.
pub struct AgoraReads {
    target: Agora,
}

impl AgoraReads {
    pub fn new(config: AgoraConfig) -> AgoraReads {
        AgoraReads {
            target: Agora::new(config),
        }
    }
}

impl Observer for AgoraReads {
    const PROVIDER: &'static str = "Agora";
    const CHATROOMS: bool = true;
    const ALONE_WHEN_LEFT_OUT: bool = true;

    fn plan(&self, dests: &[Dest]) -> Vec<Read> {
        Agora::read_plan(dests)
    }

    fn api(read: &Read) -> &'static str {
        let room = |d: &Dest| matches!(d, Dest::Chatroom(_));
        match read {
            Read::MuteAll(d) if d.first().is_some_and(room) => "GET chatrooms/{ids}",
            Read::MuteAll(_) => "GET chatgroups/{ids}",
            Read::Members(d) if room(d) => "GET chatrooms/{id}/mute",
            Read::Members(_) => "GET chatgroups/{id}/mute",
        }
    }

    fn request(&self, read: &Read, _host: usize, now: SystemTime) -> Request {
        self.target.read_request(read, now)
    }

    fn parse(
        &self,
        read: &Read,
        reply: &Reply<'_>,
        now: SystemTime,
    ) -> Result<Vec<Observed>, Outcome> {
        self.target.parse_read(read, reply, now)
    }

    fn split(&self, reply: &Reply<'_>) -> bool {
        reply.status == 404
    }
}

impl ReadBack for AgoraReads {
    fn sight(&self) -> Sight {
        Sight {
            // Ends are in ms; the clocks of two hosts stay within this.
            tolerance_ms: 5_000,
            blind: None,
        }
    }

    async fn read(&self, io: &Io, expected: &Expected) -> Holdings {
        observed::read(self, io, expected).await
    }
}
