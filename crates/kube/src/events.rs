//! [`EventRecorder`]: core/v1 Events about objects, written the way Kubernetes components
//! write them (client-go's event recorder with its correlator), so `kubectl describe` and
//! `kubectl get events` show them as they show kube-scheduler's or the kubelet's.
//!
//! - **Deduplication**: the first occurrence of an event creates an Event named
//!   `<object>.<hex nanoseconds>`; the same event again (same object, type, reason, message and
//!   source) within [`DEDUPE_WINDOW`] patches that Event's `count` and `lastTimestamp`
//!   instead of creating another (an Event deleted meanwhile is created again).
//! - **Rate limit**: per object and source, a token bucket of [`SPAM_BURST`] events refilled
//!   one every [`SPAM_REFILL`] (client-go's spam filter): an object that keeps failing does
//!   not flood the apiserver; what is filtered is logged at debug level.
//! - Writing is best effort, as in Kubernetes: a failed write is logged at warn level and
//!   returned, never retried.
//!
//! ```no_run
//! # async fn demo(client: kube::Client, pod: &k8s_openapi::api::core::v1::Pod) {
//! use rorqual_kube::events::{EventRecorder, EventType};
//!
//! let recorder = EventRecorder::new(client, "rorqual");
//! let _ = recorder
//!     .record(pod, EventType::Warning, "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.")
//!     .await;
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;

/// How long a repeat of an event patches the earlier Event rather than creating another.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How many events an object may get at once before the rate limit applies.
pub const SPAM_BURST: u32 = 25;

/// How often the rate limit lets another event of an object through.
pub const SPAM_REFILL: Duration = Duration::from_secs(5 * 60);

/// Normal or warning, as `Event.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something a user may need to act on.
    Warning,
}

impl EventType {
    /// `Normal` or `Warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Why an event was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The object has no name or namespace to refer to.
    #[error("cannot record event {reason}: the object has no {missing}")]
    NoReference {
        /// The event's reason.
        reason: String,
        /// `name` or `uid`.
        missing: &'static str,
    },
    /// The apiserver refused or failed the write.
    #[error("cannot {verb} event {reason} about {object}")]
    Write {
        /// `create` or `patch`.
        verb: &'static str,
        /// The event's reason.
        reason: String,
        /// The object (`kind namespace/name`).
        object: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// What [`EventRecorder::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// A new Event was created.
    Created {
        /// Its name.
        name: String,
    },
    /// An earlier Event of the same occurrence counts one more.
    Counted {
        /// Its name.
        name: String,
        /// Its count now.
        count: i32,
    },
    /// The object's rate limit held the event back.
    RateLimited,
}

/// The correlation key: an event "happens again" when all of these are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    event_type: EventType,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: i32,
    first: Time,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The pure bookkeeping of a recorder: what was written and each object's rate limit.
#[derive(Debug, Default)]
struct Correlator {
    seen: HashMap<Key, Seen>,
    buckets: HashMap<String, Bucket>,
}

/// What to write for one event.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Create,
    Patch {
        name: String,
        count: i32,
        first: Time,
    },
    Drop,
}

impl Correlator {
    /// Takes a token of `uid`'s bucket; whether one was left.
    fn allow(&mut self, uid: &str, now: Instant) -> bool {
        let bucket = self.buckets.entry(uid.to_owned()).or_insert(Bucket {
            tokens: f64::from(SPAM_BURST),
            at: now,
        });
        let refill =
            now.saturating_duration_since(bucket.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(f64::from(SPAM_BURST));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn decide(&mut self, key: &Key, now: Instant) -> Decision {
        // Forget what is too old to be repeated (and buckets that are full again).
        self.seen
            .retain(|_, s| now.saturating_duration_since(s.at) < DEDUPE_WINDOW);
        self.buckets.retain(|_, b| {
            now.saturating_duration_since(b.at) < SPAM_REFILL.saturating_mul(SPAM_BURST)
        });
        if !self.allow(&key.uid, now) {
            return Decision::Drop;
        }
        match self.seen.get(key) {
            Some(s) => Decision::Patch {
                name: s.name.clone(),
                count: s.count + 1,
                first: s.first.clone(),
            },
            None => Decision::Create,
        }
    }

    fn written(&mut self, key: Key, name: String, count: i32, first: Time, now: Instant) {
        self.seen.insert(
            key,
            Seen {
                name,
                count,
                first,
                at: now,
            },
        );
    }
}

/// Writes core/v1 Events about objects, deduplicated and rate limited per object (see the
/// module docs). Cheap to clone; clones share their bookkeeping. Its client needs `create`
/// and `patch` on `events` (core group) in the objects' namespaces.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: String,
    host: Option<String>,
    correlator: Arc<Mutex<Correlator>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("component", &self.component)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder whose events name `component` as their source (`source.component`, the
    /// "From" column of `kubectl describe`; kube-scheduler uses the scheduler's name).
    pub fn new(client: Client, component: impl Into<String>) -> Self {
        EventRecorder {
            client,
            component: component.into(),
            host: None,
            correlator: Arc::default(),
        }
    }

    /// Names `host` as the source's host (`source.host`; the kubelet names its node).
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Records an event about `object` (in its namespace, `default` for a cluster-scoped one).
    ///
    /// # Errors
    ///
    /// [`RecordError::NoReference`] for an object without a name or UID,
    /// [`RecordError::Write`] when the apiserver refuses or fails the write (also logged at
    /// warn level).
    pub async fn record<K>(
        &self,
        object: &K,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<Recorded, RecordError>
    where
        K: Resource<DynamicType = ()>,
    {
        let missing = |missing| RecordError::NoReference {
            reason: reason.to_owned(),
            missing,
        };
        let name = object.meta().name.clone().ok_or_else(|| missing("name"))?;
        let uid = object.meta().uid.clone().ok_or_else(|| missing("uid"))?;
        let namespace = object
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let reference = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: object.meta().namespace.clone(),
            uid: Some(uid.clone()),
            resource_version: object.meta().resource_version.clone(),
            field_path: None,
        };
        let key = Key {
            uid,
            event_type,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = Instant::now();
        let decision = self.correlator.lock().decide(&key, now);
        let stamp = Time(k8s_openapi::jiff::Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let object_name = format!("{} {namespace}/{name}", K::kind(&()));
        let write_error = |verb, source| {
            let e = RecordError::Write {
                verb,
                reason: reason.to_owned(),
                object: object_name.clone(),
                source,
            };
            tracing::warn!(error = %e, source = %crate_error_source(&e), "event not recorded");
            e
        };
        match decision {
            Decision::Drop => {
                tracing::debug!(object = %object_name, reason, "event rate limited");
                Ok(Recorded::RateLimited)
            }
            Decision::Patch { name, count, first } => {
                let patch = serde_json::json!({"count": count, "lastTimestamp": stamp});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        self.correlator
                            .lock()
                            .written(key, name.clone(), count, first, now);
                        Ok(Recorded::Counted { name, count })
                    }
                    // Deleted meanwhile (events expire): start over.
                    Err(kube::Error::Api(e)) if e.code == 404 => self
                        .create(&api, reference, key, &stamp, now)
                        .await
                        .map_err(|source| write_error("create", source)),
                    Err(source) => Err(write_error("patch", source)),
                }
            }
            Decision::Create => self
                .create(&api, reference, key, &stamp, now)
                .await
                .map_err(|source| write_error("create", source)),
        }
    }

    async fn create(
        &self,
        api: &Api<Event>,
        reference: ObjectReference,
        key: Key,
        stamp: &Time,
        now: Instant,
    ) -> Result<Recorded, kube::Error> {
        let object = reference.name.clone().unwrap_or_default();
        let nanos = stamp.0.as_nanosecond();
        let name = format!("{object}.{nanos:x}");
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: reference.namespace.clone(),
                ..ObjectMeta::default()
            },
            involved_object: reference,
            type_: Some(key.event_type.as_str().to_owned()),
            reason: Some(key.reason.clone()),
            message: Some(key.message.clone()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            first_timestamp: Some(stamp.clone()),
            last_timestamp: Some(stamp.clone()),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.name_any();
        self.correlator
            .lock()
            .written(key, name.clone(), 1, stamp.clone(), now);
        Ok(Recorded::Created { name })
    }
}

/// The source of a record error, for the log line.
fn crate_error_source(e: &RecordError) -> String {
    std::error::Error::source(e).map_or_else(String::new, ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, message: &str) -> Key {
        Key {
            uid: uid.to_owned(),
            event_type: EventType::Warning,
            reason: "FailedScheduling".to_owned(),
            message: message.to_owned(),
        }
    }

    fn stamp() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_repeat_counts_on_the_first_event_and_another_message_is_another_event() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let a = key("u1", "0/3 nodes are available: 3 Insufficient cpu.");
        assert_eq!(c.decide(&a, t), Decision::Create);
        c.written(a.clone(), "p.1".to_owned(), 1, stamp(), t);
        assert_eq!(
            c.decide(&a, t + Duration::from_secs(1)),
            Decision::Patch {
                name: "p.1".to_owned(),
                count: 2,
                first: stamp()
            }
        );
        c.written(
            a.clone(),
            "p.1".to_owned(),
            2,
            stamp(),
            t + Duration::from_secs(1),
        );
        let b = key("u1", "0/4 nodes are available: 4 Insufficient cpu.");
        assert_eq!(c.decide(&b, t + Duration::from_secs(2)), Decision::Create);
        // Another object is another event.
        assert_eq!(c.decide(&key("u2", &a.message), t), Decision::Create);
        // Past the window, a repeat starts a new Event.
        assert_eq!(
            c.decide(&a, t + Duration::from_secs(1) + DEDUPE_WINDOW),
            Decision::Create
        );
    }

    #[test]
    fn an_object_gets_a_burst_then_one_event_per_refill() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let a = key("u1", "m");
        for _ in 0..SPAM_BURST {
            assert_ne!(c.decide(&a, t), Decision::Drop);
        }
        assert_eq!(c.decide(&a, t), Decision::Drop);
        assert_eq!(
            c.decide(&key("u2", "m"), t),
            Decision::Create,
            "other objects have their own bucket"
        );
        assert_ne!(c.decide(&a, t + SPAM_REFILL), Decision::Drop);
        assert_eq!(c.decide(&a, t + SPAM_REFILL), Decision::Drop);
    }
}
