//! Every provider with a read-back, in one enum: which read-back a target
//! gets, and the dispatch to it. Apart from [`super::read`] (the contract
//! and the executor) so that the contract does not depend on its
//! implementations.

use super::expect::Expected;
use super::read::{Holdings, Io, ReadBack, Sight};
use super::{agora, rongcloud, tencent, zego};
use crate::targets::TargetConfig;

/// Every provider with a read-back; one arm per provider.
pub enum Reader {
    Zego(zego::ZegoReads),
    RongCloud(rongcloud::RongReads),
    Tencent(tencent::TencentReads),
    Agora(agora::AgoraReads),
}

impl Reader {
    /// The read-back of a target: `Ok(Err(why))` for a kind that cannot
    /// be read back, `Err` for a setting it lacks (its key relative to the
    /// target, then what to do).
    pub fn for_target(config: &TargetConfig) -> Result<Result<Reader, &'static str>, String> {
        Ok(match config {
            TargetConfig::Zego(c) => Ok(Reader::Zego(zego::ZegoReads::new(c.clone()))),
            TargetConfig::Rongcloud(c) => {
                Ok(Reader::RongCloud(rongcloud::RongReads::new(c.clone())?))
            }
            TargetConfig::Tencent(c) => Ok(Reader::Tencent(tencent::TencentReads::new(c.clone()))),
            TargetConfig::Agora(c) => Ok(Reader::Agora(agora::AgoraReads::new(c.clone()))),
            TargetConfig::Webhook(_) => Err("a webhook receiver cannot be read back"),
            TargetConfig::Log(_) | TargetConfig::Discard(_) => {
                Err("it sends nothing, so there is nothing to read back")
            }
        })
    }

    pub fn sight(&self) -> Sight {
        match self {
            Reader::Zego(r) => r.sight(),
            Reader::RongCloud(r) => r.sight(),
            Reader::Tencent(r) => r.sight(),
            Reader::Agora(r) => r.sight(),
        }
    }

    pub async fn read(&self, io: &Io, expected: &Expected) -> Holdings {
        match self {
            Reader::Zego(r) => r.read(io, expected).await,
            Reader::RongCloud(r) => r.read(io, expected).await,
            Reader::Tencent(r) => r.read(io, expected).await,
            Reader::Agora(r) => r.read(io, expected).await,
        }
    }
}
