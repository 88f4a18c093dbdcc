//! Reading the journal in order: replays after a reboot, and the watches
//! ([`crate::store::PoolStore::watch_from`], [`crate::store::PoolStore::watch`]), which poll it.

use std::collections::VecDeque;

use futures::StreamExt;

use super::FileStore;
use super::journal::{Journal, SegmentReader};
use super::record::Record;
use crate::error::StoreError;
use crate::store::{RevisionWatch, RevisionedEvent};

/// At most this many events per poll, so a reader far behind catches up in steps.
const POLL_EVENTS: usize = 10_000;

/// Reads records in revision order from a revision on.
#[derive(Debug)]
pub(super) struct JournalReader {
    journal: Journal,
    next: u64,
    segment: Option<SegmentReader>,
    /// Whether a last record that its writer has not marked applied waits (watches: it is
    /// committed once applied, or once a later record follows it); replays under the lock
    /// take it.
    wait_for_applied: bool,
}

impl JournalReader {
    /// A reader of the records after `after`.
    pub(super) fn new(journal: Journal, after: u64, wait_for_applied: bool) -> JournalReader {
        JournalReader {
            journal,
            next: after + 1,
            segment: None,
            wait_for_applied,
        }
    }

    fn compacted(&self, oldest: u64) -> StoreError {
        StoreError::Compacted {
            location: self.journal.dir().display().to_string(),
            requested: self.next - 1,
            oldest,
        }
    }

    /// The next record (`None`: not written yet).
    pub(super) fn next_record(&mut self) -> Result<Option<(u64, Record)>, StoreError> {
        loop {
            let Some(segment) = self.segment.as_mut() else {
                let segments = self.journal.segments()?;
                let Some((first, path)) = segments.iter().rev().find(|(f, _)| *f <= self.next)
                else {
                    return match segments.first() {
                        Some((first, _)) => Err(self.compacted(first - 1)),
                        None => Ok(None),
                    };
                };
                self.segment = Some(SegmentReader::open(*first, path.clone())?);
                continue;
            };
            let Some(frame) = segment.peek()? else {
                // The end of this segment: go on in the one starting at the next revision.
                let segments = self.journal.segments()?;
                let first = segment.first;
                match segments
                    .iter()
                    .find(|(f, _)| *f == self.next && *f != first)
                {
                    Some((f, path)) => {
                        self.segment = Some(SegmentReader::open(*f, path.clone())?);
                        continue;
                    }
                    None => {
                        if segments.first().is_some_and(|(f, _)| *f > self.next) {
                            return Err(self.compacted(segments[0].0 - 1));
                        }
                        return Ok(None);
                    }
                }
            };
            if frame.revision < self.next {
                segment.offset = frame.end;
                continue;
            }
            if frame.revision > self.next {
                return Err(StoreError::Corrupt {
                    location: self.journal.dir().display().to_string(),
                    reason: format!(
                        "revision {} follows revision {}",
                        frame.revision,
                        self.next - 1
                    ),
                });
            }
            if self.wait_for_applied && !frame.applied && segment.peek_at(frame.end)?.is_none() {
                let later = self
                    .journal
                    .segments()?
                    .iter()
                    .any(|(f, _)| *f > frame.revision);
                if !later {
                    return Ok(None);
                }
            }
            let record: Record =
                serde_json::from_slice(&frame.payload).map_err(|e| StoreError::Corrupt {
                    location: format!(
                        "{} (revision {})",
                        self.journal.dir().display(),
                        frame.revision
                    ),
                    reason: e.to_string(),
                })?;
            segment.offset = frame.end;
            self.next += 1;
            return Ok(Some((frame.revision, record)));
        }
    }

    /// The events of the records written since the last call (at most about
    /// [`POLL_EVENTS`]).
    fn poll(&mut self) -> Result<Vec<RevisionedEvent>, StoreError> {
        let mut out = Vec::new();
        while out.len() < POLL_EVENTS {
            let Some((revision, record)) = self.next_record()? else {
                break;
            };
            out.extend(
                record
                    .events
                    .into_iter()
                    .map(|e| RevisionedEvent::new(revision, e)),
            );
        }
        Ok(out)
    }
}

/// [`JournalReader::poll`] on tokio's blocking threads.
async fn poll_blocking(
    mut reader: JournalReader,
) -> Result<(JournalReader, Vec<RevisionedEvent>), StoreError> {
    let dir = reader.journal.dir().display().to_string();
    tokio::task::spawn_blocking(move || {
        let events = reader.poll()?;
        Ok((reader, events))
    })
    .await
    .map_err(|e| StoreError::Io {
        context: format!("the watch poll of journal {dir} failed"),
        source: std::io::Error::other(e),
    })?
}

/// The changes after `after`, polled every [`FileStore::with_watch_interval`]; an error is the
/// stream's last item.
pub(super) fn revision_stream(store: &FileStore, after: u64) -> RevisionWatch {
    let reader = JournalReader::new(store.journal(), after, true);
    let interval = store.watch_interval;
    let state = Some((reader, VecDeque::new(), false));
    futures::stream::unfold(state, move |state| async move {
        let (mut reader, mut pending, mut polled): (JournalReader, VecDeque<_>, bool) = state?;
        loop {
            if let Some(item) = pending.pop_front() {
                return Some((Ok(item), Some((reader, pending, polled))));
            }
            if polled {
                tokio::time::sleep(interval).await;
            }
            match poll_blocking(reader).await {
                Ok((r, events)) => {
                    reader = r;
                    // A full poll goes on at once.
                    polled = events.len() < POLL_EVENTS;
                    pending.extend(events);
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
    .boxed()
}
