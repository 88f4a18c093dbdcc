//! The etcd store: pools shared by every host of a cluster.
//!
//! Each pool is one key `<prefix><pool>` holding the pool state as JSON. A pool's version is
//! the key's `mod_revision`; [`PoolStore::compare_and_swap`] is an etcd transaction comparing
//! it (or `create_revision == 0` for "must not exist"), so concurrent allocators on different
//! hosts never both win, and losers retry on fresh state.
//!
//! Revisions ([`PoolStore::snapshot`], [`PoolStore::watch_from`]) are etcd's own: a snapshot
//! is one range read over the prefix at the response header's revision, and a watch resumes
//! with `start_revision = revision + 1` and previous values, each change decoded by diffing the
//! pool's old and new state. Changes to other keys of the same etcd take revisions too, so the
//! revisions of a store's changes grow but are not consecutive.

use std::collections::VecDeque;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;

use super::{PoolStore, RevisionWatch, RevisionedEvent, StoreSnapshot, Versioned, WatchStream};
use crate::error::StoreError;
use crate::pool_state::{PoolState, diff};

/// What the decoding of watch responses queues.
type Decoded = VecDeque<Result<RevisionedEvent, StoreError>>;

/// Pools in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(context: String) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::Backend {
        context,
        reason: e.to_string(),
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://127.0.0.1:2379`); pools live under `prefix`
    /// (for example `/rorqual/ipam/`).
    pub async fn connect(
        endpoints: &[String],
        prefix: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(backend(format!(
                "cannot connect to etcd at {}",
                endpoints.join(",")
            )))?;
        Ok(EtcdStore {
            client,
            prefix: prefix.into(),
            endpoints: endpoints.to_vec(),
        })
    }

    fn key(&self, pool: &str) -> String {
        format!("{}{pool}", self.prefix)
    }

    /// The key prefix the pools live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd endpoints it was connected to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The connection (shared by clones), for a registry in the same etcd.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// An etcd watch on the pool prefix with previous values, from `start_revision` (0: now),
    /// decoded into events. `resumed_after`: the revision a [`PoolStore::watch_from`] resumes
    /// after, so that a compaction is reported as [`StoreError::Compacted`].
    async fn follow(
        &self,
        start_revision: i64,
        resumed_after: Option<u64>,
    ) -> Result<RevisionWatch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start_revision);
        let (watcher, responses) = self
            .client
            .clone()
            .watch(self.prefix.as_str(), Some(options))
            .await
            .map_err(backend(format!("cannot watch etcd prefix {}", self.prefix)))?;
        let prefix = self.prefix.clone();
        // The watcher travels with the stream: dropping it would close the request side.
        // `ended`: the watch is over; the stream yields what is pending, then ends. All the
        // events of one response (etcd never splits a revision across responses) are queued
        // at once, so one commit's events arrive together.
        let stream = futures::stream::unfold(
            (watcher, responses, Decoded::new(), prefix, false),
            move |(watcher, mut responses, mut pending, prefix, mut ended)| async move {
                loop {
                    if let Some(item) = pending.pop_front() {
                        return Some((item, (watcher, responses, pending, prefix, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match responses.message().await {
                        Ok(Some(resp)) => {
                            ended = decode_response(&prefix, resumed_after, &resp, &mut pending);
                        }
                        Ok(None) => return None,
                        Err(e) => {
                            let err = backend(format!("etcd watch on prefix {prefix} failed"))(e);
                            pending.push_back(Err(err));
                            ended = true;
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn decode(key: &str, value: &[u8]) -> Result<PoolState, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        location: format!("etcd key {key}"),
        reason: e.to_string(),
    })
}

/// One key change of a watch response, in plain data (etcd-client's response types cannot be
/// built outside it, so this is what the decoding is tested on).
#[derive(Debug, Clone, Copy)]
struct Change<'a> {
    key: &'a str,
    /// The revision of the change (the key's `mod_revision`; for a delete, the delete's).
    revision: i64,
    /// The new value; `None` for a delete.
    value: Option<&'a [u8]>,
    /// The previous value, when the key existed before.
    prev: Option<&'a [u8]>,
}

/// The allocation events of one etcd watch response (each change carries the key's previous
/// value, so no state is kept between responses), and whether the watch has ended.
fn decode_response(
    prefix: &str,
    resumed_after: Option<u64>,
    resp: &etcd_client::WatchResponse,
    out: &mut Decoded,
) -> bool {
    let changes = resp.events().iter().filter_map(|ev| {
        let kv = ev.kv()?;
        Some(Change {
            key: kv.key_str().ok()?,
            revision: kv.mod_revision(),
            value: match ev.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            },
            prev: ev.prev_kv().map(etcd_client::KeyValue::value),
        })
    });
    decode_changes(prefix, changes, out);
    let canceled = resp
        .canceled()
        .then(|| (resp.cancel_reason(), resp.compact_revision()));
    decode_cancel(prefix, resumed_after, canceled, out)
}

/// The events of `changes` under `prefix`. A value that does not decode (the new one or the
/// previous one) is an error in place of that change's events: diffing against a guess would
/// report every address of the pool as changed.
fn decode_changes<'a>(
    prefix: &str,
    changes: impl IntoIterator<Item = Change<'a>>,
    out: &mut Decoded,
) {
    for change in changes {
        let Some(pool) = change.key.strip_prefix(prefix) else {
            continue;
        };
        let new = match change.value.map(|v| decode(change.key, v)).transpose() {
            Ok(new) => new,
            Err(e) => {
                out.push_back(Err(e));
                continue;
            }
        };
        // etcd gives an empty previous value for a key that did not exist.
        let old = match change.prev.filter(|p| !p.is_empty()).map(|p| {
            serde_json::from_slice::<PoolState>(p).map_err(|e| StoreError::Corrupt {
                location: format!("etcd key {} (its previous value)", change.key),
                reason: e.to_string(),
            })
        }) {
            None => None,
            Some(Ok(old)) => Some(old),
            Some(Err(e)) => {
                out.push_back(Err(e));
                continue;
            }
        };
        let at = revision(change.revision);
        out.extend(
            diff(pool, old.as_ref(), new.as_ref())
                .into_iter()
                .map(|e| Ok(RevisionedEvent::new(at, e))),
        );
    }
}

/// When the server canceled the watch (`canceled`: its reason and the compaction revision,
/// for example after the watched revision was compacted away), queues the error naming why and
/// returns `true`: the server sends nothing more on a canceled watch, so the stream ends. A
/// watch resumed after a revision (`resumed_after`) that was compacted away gets
/// [`StoreError::Compacted`]: the changes right after it are gone.
fn decode_cancel(
    prefix: &str,
    resumed_after: Option<u64>,
    canceled: Option<(&str, i64)>,
    out: &mut Decoded,
) -> bool {
    let Some((reason, compact_revision)) = canceled else {
        return false;
    };
    if let Some(requested) = resumed_after
        && compact_revision > 0
    {
        // A watch can start at the compaction revision itself: it resumes after the one before.
        out.push_back(Err(StoreError::Compacted {
            location: format!("etcd prefix {prefix}"),
            requested,
            oldest: revision(compact_revision).saturating_sub(1),
        }));
        return true;
    }
    let reason = match (reason.is_empty(), compact_revision) {
        (false, 0) => reason.to_owned(),
        (true, 0) => "no reason given".to_owned(),
        (false, r) => format!("{reason} (compacted at revision {r})"),
        (true, r) => format!("the watched revision was compacted (at revision {r})"),
    };
    out.push_back(Err(StoreError::Backend {
        context: format!(
            "etcd watch on prefix {prefix} was canceled by the server; watch again and re-read \
             the pools"
        ),
        reason,
    }));
    true
}

#[async_trait]
impl PoolStore for EtcdStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.key(pool);
        let resp = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(backend(format!("cannot read etcd key {key}")))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let state: PoolState =
            serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                location: format!("etcd key {key}"),
                reason: e.to_string(),
            })?;
        Ok(Some(Versioned {
            state,
            version: revision(kv.mod_revision()),
        }))
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let key = self.key(pool);
        let compare = match expected {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(v) => Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                i64::try_from(v).unwrap_or(i64::MAX),
            ),
        };
        let op = match next {
            Some(state) => {
                let body = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
                    location: format!("etcd key {key}"),
                    reason: format!("cannot encode: {e}"),
                })?;
                TxnOp::put(key.as_str(), body, None)
            }
            None => TxnOp::delete(key.as_str(), None),
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(backend(format!("etcd transaction on {key} failed")))?;
        if !resp.succeeded() {
            let found = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| revision(kv.mod_revision()))
                }
                _ => None,
            });
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        let header = resp.header().map(|h| revision(h.revision()));
        Ok(next.and(header))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(backend(format!("cannot list etcd prefix {}", self.prefix)))?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }

    /// An etcd watch on the pool prefix with previous values: every put or delete of a pool
    /// key, by any host, becomes the events that turn the old state into the new one.
    ///
    /// The stream ends after an error that ends the etcd watch (the server canceled it, for
    /// example because the revision it was at was compacted, or the connection failed): that
    /// error is its last item. Changes may have been missed then; to keep following, watch
    /// again and re-read the pools ([`PoolStore::load`]).
    async fn watch(&self) -> Result<WatchStream, StoreError> {
        let stream = self.follow(0, None).await?;
        Ok(stream.map(|item| item.map(|e| e.event)).boxed())
    }

    /// One range read over the prefix; the revision is the response header's.
    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(backend(format!("cannot read etcd prefix {}", self.prefix)))?;
        let Some(header) = resp.header() else {
            return Err(StoreError::Backend {
                context: format!("cannot read etcd prefix {}", self.prefix),
                reason: "the response has no header (no revision)".to_owned(),
            });
        };
        let pools = resp
            .kvs()
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreSnapshot::new(revision(header.revision()), pools))
    }

    /// An etcd watch from `start_revision = revision + 1` with previous values. When etcd has
    /// compacted that revision away, the stream's first item is [`StoreError::Compacted`]
    /// (etcd reports it after creating the watch) and the stream ends; it also ends after any
    /// error that ends the etcd watch, which is its last item.
    async fn watch_from(&self, revision: u64) -> Result<RevisionWatch, StoreError> {
        let start = i64::try_from(revision.saturating_add(1)).map_err(|_| StoreError::Backend {
            context: format!("cannot watch etcd prefix {}", self.prefix),
            reason: format!("revision {revision} is beyond etcd's range"),
        })?;
        self.follow(start, Some(revision)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::{AllocRequest, IpRange, IpState, Owner, PoolSpec};

    fn states() -> (Vec<u8>, Vec<u8>) {
        let spec = PoolSpec::new("p").with_range(IpRange::new("10.9.0.0/29".parse().unwrap()));
        let mut state = PoolState::new(spec).unwrap();
        for c in ["c1", "c2"] {
            state
                .allocate(&AllocRequest::new(Owner::new(c, "eth0")), 0)
                .unwrap();
        }
        let before = serde_json::to_vec(&state).unwrap();
        state
            .allocate(&AllocRequest::new(Owner::new("c3", "eth0")), 0)
            .unwrap();
        (before, serde_json::to_vec(&state).unwrap())
    }

    #[test]
    fn a_change_is_its_diff_and_a_corrupt_previous_value_is_an_error_not_a_fresh_pool() {
        let (before, after) = states();
        let mut out = VecDeque::new();
        let change = |prev| Change {
            key: "/rq/p",
            revision: 7,
            value: Some(&after),
            prev,
        };
        decode_changes("/rq/", [change(Some(before.as_slice()))], &mut out);
        let events: Vec<_> = out.drain(..).map(Result::unwrap).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].revision, events[0].event.from, events[0].event.to),
            (7, IpState::Available, IpState::Active)
        );
        // The diff names the new owner with the pool's MAC for it.
        let ip = events[0].event.ip;
        assert_eq!(events[0].event.mac, Some(crate::Mac::generated("p", ip)));

        // A previous value that does not decode: an error naming the key, not three
        // Available -> Active events for addresses that were active all along.
        decode_changes("/rq/", [change(Some(b"{\"spec\":".as_slice()))], &mut out);
        let items: Vec<_> = out.drain(..).collect();
        assert_eq!(items.len(), 1, "{items:?}");
        let err = items[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("/rq/p") && err.contains("previous value"),
            "{err}"
        );

        // No previous value (a new pool key) or an empty one: every address is new.
        decode_changes("/rq/", [change(None), change(Some(&[]))], &mut out);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(Result::is_ok));
    }

    #[test]
    fn a_canceled_watch_reports_why_and_ends() {
        let mut out = VecDeque::new();
        assert!(!decode_cancel("/rq/", None, None, &mut out));
        assert!(out.is_empty());
        assert!(decode_cancel(
            "/rq/",
            None,
            Some(("mvcc: required revision has been compacted", 41)),
            &mut out
        ));
        let err = out.pop_front().unwrap().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/rq/")
                && text.contains("canceled")
                && text.contains("compacted")
                && text.contains("41"),
            "{text}"
        );
        assert!(err.is_retryable());
        assert!(decode_cancel("/rq/", None, Some(("", 0)), &mut out));
        assert!(
            out.pop_front()
                .unwrap()
                .unwrap_err()
                .to_string()
                .contains("no reason")
        );
    }

    #[test]
    fn a_resumed_watch_whose_revision_was_compacted_is_compacted() {
        let mut out = VecDeque::new();
        assert!(decode_cancel(
            "/rq/",
            Some(12),
            Some(("mvcc: required revision has been compacted", 41)),
            &mut out
        ));
        let err = out.pop_front().unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Compacted {
                    requested: 12,
                    oldest: 40,
                    location
                } if location.contains("/rq/")
            ),
            "{err:?}"
        );
        // Canceled for another reason: still a backend error.
        assert!(decode_cancel(
            "/rq/",
            Some(12),
            Some(("no leader", 0)),
            &mut out
        ));
        assert!(matches!(
            out.pop_front().unwrap(),
            Err(StoreError::Backend { .. })
        ));
    }
}
