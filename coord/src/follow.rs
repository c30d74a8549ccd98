//! Following a key prefix: what it holds, then every change, and a fresh read marked as a
//! recovery whenever the backend has compacted the history the watch needed.

use futures::StreamExt;

use crate::backend::{BoxStream, Change, KeyValue, WatchEvent};
use crate::coord::Coord;
use crate::error::CoordError;

/// What [`Coord::follow`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Every key under the prefix at `revision`, in key order. `recovered` is false for the
    /// read a [`Coord::follow`] starts with, and true for a read made because the changes
    /// after the last revision delivered were compacted away: then keys missing from `kvs`
    /// were deleted meanwhile and intermediate values are lost.
    Snapshot {
        /// The keys and their values.
        kvs: Vec<KeyValue>,
        /// The revision they were read at; changes after it follow.
        revision: u64,
        /// Whether this read replaces changes that are gone.
        recovered: bool,
    },
    /// Changes after the previous item, in revision order.
    Changes(Vec<Change>),
}

/// Where a follow stands.
enum Step {
    Read { recovered: bool },
    Watch { after: u64 },
    Streaming(BoxStream<'static, Result<WatchEvent, CoordError>>),
}

impl Coord {
    /// Reads every key under `prefix`, then follows its changes; after a
    /// [`WatchEvent::Compacted`], reads the prefix again (a `Snapshot` with `recovered`) and
    /// follows on from there. The stream ends after its first error: to go on, call
    /// [`Coord::follow_from`] with the revision of the last item handled.
    pub fn follow(&self, prefix: &str) -> BoxStream<'static, Result<Follow, CoordError>> {
        self.following(prefix, Step::Read { recovered: false })
    }

    /// Follows the changes under `prefix` after `revision` (a checkpoint), with the same
    /// recovery as [`Coord::follow`] when they are no longer available.
    pub fn follow_from(
        &self,
        prefix: &str,
        revision: u64,
    ) -> BoxStream<'static, Result<Follow, CoordError>> {
        self.following(prefix, Step::Watch { after: revision })
    }

    fn following(
        &self,
        prefix: &str,
        step: Step,
    ) -> BoxStream<'static, Result<Follow, CoordError>> {
        let coord = self.clone();
        let prefix = prefix.to_owned();
        futures::stream::unfold(Some(step), move |step| {
            let coord = coord.clone();
            let prefix = prefix.clone();
            async move {
                let mut step = step?;
                loop {
                    let backend = coord.connected().await;
                    step = match step {
                        Step::Read { recovered } => match backend.range(&prefix).await {
                            Ok((kvs, revision)) => {
                                let snapshot = Follow::Snapshot {
                                    kvs,
                                    revision,
                                    recovered,
                                };
                                return Some((Ok(snapshot), Some(Step::Watch { after: revision })));
                            }
                            Err(error) => return Some((Err(error), None)),
                        },
                        Step::Watch { after } => match backend.watch(&prefix, after).await {
                            Ok(events) => Step::Streaming(events),
                            Err(error) => return Some((Err(error), None)),
                        },
                        Step::Streaming(mut events) => match events.next().await {
                            Some(Ok(WatchEvent::Changes(changes))) => {
                                return Some((Ok(Follow::Changes(changes)), Some(Step::Streaming(events))));
                            }
                            Some(Ok(WatchEvent::Compacted { compacted })) => {
                                tracing::info!(%prefix, compacted, "history compacted; reading the prefix again");
                                Step::Read { recovered: true }
                            }
                            Some(Err(error)) => return Some((Err(error), None)),
                            None => {
                                let ended = CoordError::Protocol(format!("the watch of {prefix:?} ended"));
                                return Some((Err(ended), None));
                            }
                        },
                    };
                }
            }
        })
        .boxed()
    }
}
