//! Reading a batch of groups from Easemob, and what counts as evidence.
//!
//! A group is read when its details (mute-all, 100 ids a call) and its mute
//! list both answered. It is gone only when Easemob itself says so twice:
//! its `resource_not_found` answer naming the group, for the group asked
//! alone, then again for a second read of it alone. How Easemob reports a
//! missing id inside a batch is unconfirmed, so both ways lead to the reads
//! alone: an id left out of the answer, and a batch answered 404 (the id
//! its description names is taken out and the rest asked again; a 404
//! naming none of them has every id asked alone). Anything else (an HTML
//! 404, a 404 naming another resource, 5xx, timeouts, a 401 after a
//! renewal, a redirect) leaves the group unread: nothing is concluded.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};

use super::diff::{Found, MuteList};
use super::rest::{self, Missing, Read, Rest, RestError};
use crate::event::Scope;
use crate::time::now_ms;

/// Mute lists read at once (each is one call; the limiter spaces them).
pub(super) const CONCURRENT_READS: usize = 8;

/// One id's details.
enum Detail {
    /// Its mute-all (`None`: the answer has no `mute` field).
    Here(Read<Option<bool>>),
    /// Easemob named it missing in two reads of it alone.
    Gone(Missing),
    Unread(RestError),
}

/// What the batch reads made of an id.
enum Asked {
    Answered(Detail),
    /// Absent from an answer, or named by a 404: to be asked alone. With
    /// the answer of a read alone that named it already, one more read
    /// alone confirms it.
    Suspect(Option<Missing>),
}

/// Reads the groups `ids` of one scope: for each, what was found, or why
/// it is unread.
pub async fn batch(app: &Rest, scope: Scope, ids: &[&str]) -> Vec<Result<Found, String>> {
    let asked = mute_all(app, scope, ids).await;
    let mut suspects = Vec::new();
    let mut answered = Vec::new();
    for (i, (id, asked)) in ids.iter().zip(asked).enumerate() {
        match asked {
            Asked::Answered(d) => answered.push((i, complete(app, scope, id, d))),
            Asked::Suspect(named) => suspects.push((i, *id, named)),
        }
    }
    let (at, reads): (Vec<usize>, Vec<_>) = answered.into_iter().unzip();
    let done: Vec<_> = stream::iter(reads)
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    let mut out: Vec<Option<Result<Found, String>>> = ids.iter().map(|_| None).collect();
    for (i, found) in at.into_iter().zip(done) {
        out[i] = Some(found);
    }
    // The suspects after the batch's other reads, each asked alone.
    for (i, id, named) in suspects {
        let detail = alone(app, scope, id, named).await;
        out[i] = Some(complete(app, scope, id, detail).await);
    }
    out.into_iter()
        .map(|found| found.expect("every id read"))
        .collect()
}

/// Completes one group's read with its mute list.
async fn complete(app: &Rest, scope: Scope, id: &str, detail: Detail) -> Result<Found, String> {
    match detail {
        Detail::Here(mute_all) => {
            let muted = mute_list(app, scope, id).await.map_err(|e| {
                tracing::warn!(app = app.appkey(), group = id, error = %e, "cannot read the mute list; the group is compared next pass");
                format!("mute list: {e}")
            })?;
            let at_ms = mute_all.at_ms;
            Ok(Found::Read {
                mute_all: mute_all.data.map(|data| Read { data, at_ms }),
                muted,
            })
        }
        Detail::Gone(m) => Ok(Found::Gone {
            at_ms: m.at_ms.unwrap_or_else(now_ms),
        }),
        Detail::Unread(e) => Err(format!("details: {e}")),
    }
}

/// One group's mute list, as the state keeps mute ends.
pub async fn mute_list(app: &Rest, scope: Scope, id: &str) -> Result<Read<MuteList>, RestError> {
    let read = app.mute_list(scope, id).await?;
    Ok(Read {
        at_ms: read.at_ms,
        data: read
            .data
            .into_iter()
            .map(|m| (m.user, rest::until(m.expire)))
            .collect(),
    })
}

/// The details of each id, asked as batches; ids that may be missing
/// become suspects.
async fn mute_all(app: &Rest, scope: Scope, ids: &[&str]) -> Vec<Asked> {
    let mut out: Vec<Option<Asked>> = ids.iter().map(|_| None).collect();
    let mut ask: Vec<usize> = (0..ids.len()).collect();
    while !ask.is_empty() {
        let asked: Vec<&str> = ask.iter().map(|&i| ids[i]).collect();
        match app.details(scope, &asked).await {
            Ok(read) => {
                let by_id: HashMap<&str, Option<bool>> =
                    read.data.iter().map(|d| (d.id.as_str(), d.mute)).collect();
                for &i in &ask {
                    out[i] = Some(match by_id.get(ids[i]) {
                        Some(mute) => Asked::Answered(Detail::Here(Read {
                            data: *mute,
                            at_ms: read.at_ms,
                        })),
                        None => Asked::Suspect(None),
                    });
                }
                break;
            }
            Err(RestError::NotFound(m)) if asked.len() == 1 => {
                let i = ask[0];
                out[i] = Some(if m.names(ids[i]) {
                    Asked::Suspect(Some(m))
                } else {
                    Asked::Answered(Detail::Unread(names_another(m)))
                });
                break;
            }
            Err(RestError::NotFound(m)) => match ask.iter().position(|&i| m.names(ids[i])) {
                // The batch failed for the id it names: that one alone,
                // the others again together.
                Some(at) => {
                    let i = ask.remove(at);
                    out[i] = Some(Asked::Suspect(None));
                }
                None => {
                    for &i in &ask {
                        out[i] = Some(Asked::Suspect(None));
                    }
                    break;
                }
            },
            Err(e) => {
                tracing::warn!(app = app.appkey(), scope = scope.as_str(), ids = asked.len(), error = %e, "cannot read group details; these groups are compared next pass");
                for &i in &ask {
                    out[i] = Some(Asked::Answered(Detail::Unread(e.clone())));
                }
                break;
            }
        }
    }
    out.into_iter()
        .map(|d| d.expect("every id answered"))
        .collect()
}

/// A `resource_not_found` that names something else: no evidence.
fn names_another(m: Missing) -> RestError {
    RestError::Undocumented404(format!(
        "resource_not_found naming another resource: {}",
        m.description
    ))
}

/// A suspect asked alone until Easemob has named it missing twice, or
/// shown it, or failed.
async fn alone(app: &Rest, scope: Scope, id: &str, mut named: Option<Missing>) -> Detail {
    loop {
        match app.details(scope, &[id]).await {
            Ok(read) => {
                return match read.data.iter().find(|d| d.id == id) {
                    Some(d) => Detail::Here(Read {
                        data: d.mute,
                        at_ms: read.at_ms,
                    }),
                    None => Detail::Unread(RestError::Body(format!(
                        "the answer for {id} alone does not list it"
                    ))),
                }
            }
            Err(RestError::NotFound(m)) if m.names(id) => match named {
                // Said twice: gone, as of the later answer.
                Some(first) => {
                    tracing::info!(
                        app = app.appkey(),
                        group = id,
                        "Easemob says twice that the group does not exist"
                    );
                    return Detail::Gone(Missing {
                        at_ms: m.at_ms.or(first.at_ms),
                        ..m
                    });
                }
                None => named = Some(m),
            },
            Err(RestError::NotFound(m)) => return Detail::Unread(names_another(m)),
            Err(e) => {
                tracing::warn!(app = app.appkey(), group = id, error = %e, "cannot confirm whether the group exists; it is compared next pass");
                return Detail::Unread(e);
            }
        }
    }
}
