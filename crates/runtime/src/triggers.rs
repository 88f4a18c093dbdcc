//! What wakes a controller: keys from engine events, extra trigger streams (verbs such as
//! "promote" or "abort", results of background work), keys to reconcile at start, and a slow
//! periodic resync of every key the controller has seen.
//!
//! A controller is woken by change, not by polling: each trigger names a key, the runner
//! schedules that key now, and a key already scheduled or running is coalesced (see
//! [`Controller`](crate::Controller)). The resync is a safety net for missed events (an engine
//! event stream may skip events a slow reader lagged behind on), not the way work is found.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use rorqual_core::engine::{Engine, EventStream};
use rorqual_core::model::{AppKey, Event};

/// A stream of keys to reconcile.
pub type KeyStream<K> = Pin<Box<dyn Stream<Item = K> + Send>>;

/// The key of the application an event is about, if any: the mapper for controllers keyed by
/// [`AppKey`] (one reconcile per application, whatever happened to which instance).
pub fn app_of(event: &Event) -> Option<AppKey> {
    event.app.clone()
}

/// Maps an engine event stream to keys: `mapper` names the keys (none, one or several) each
/// event concerns.
pub fn event_keys<K, I, F>(events: EventStream, mut mapper: F) -> KeyStream<K>
where
    K: Send + 'static,
    I: IntoIterator<Item = K>,
    F: FnMut(&Event) -> I + Send + 'static,
{
    Box::pin(
        events
            .map(move |event| futures::stream::iter(mapper(&event).into_iter().collect::<Vec<_>>()))
            .flatten(),
    )
}

/// Sends keys to a controller from elsewhere in the host (an HTTP verb, a finished background
/// job). Cheap to clone; see [`Triggers::sender`].
#[derive(Debug)]
pub struct TriggerSender<K> {
    tx: mpsc::UnboundedSender<K>,
}

impl<K> Clone for TriggerSender<K> {
    fn clone(&self) -> Self {
        TriggerSender {
            tx: self.tx.clone(),
        }
    }
}

impl<K> TriggerSender<K> {
    /// Asks for `key` to be reconciled soon. Returns `false` when the controller has stopped.
    ///
    /// The channel is unbounded and never blocks a sender. The controller takes
    /// [`TRIGGERS_PER_TURN`](crate::controller::TRIGGERS_PER_TURN) key from its triggers on
    /// every turn of its loop (every start or finish of a reconcile), however long its backlog
    /// of due keys, and all of them when it has nothing else to do; it keeps each key queued
    /// at most once. So the channel holds only
    /// what senders send faster than that; what the controller keeps per key (its queue and
    /// resync set) is bounded by the number of distinct keys, not by the number of triggers.
    /// A sender that can outpace the controller for long should bound itself.
    pub fn trigger(&self, key: K) -> bool {
        self.tx.unbounded_send(key).is_ok()
    }
}

/// The triggers of one controller. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use rorqual_core::memory::MemoryEngine;
/// use rorqual_runtime::triggers::{Triggers, app_of};
///
/// let engine = MemoryEngine::new();
/// let mut triggers = Triggers::new()
///     .engine_events(&engine, app_of)
///     .resync(Duration::from_secs(600));
/// let verbs = triggers.sender();
/// # let _ = verbs;
/// ```
pub struct Triggers<K> {
    streams: Vec<KeyStream<K>>,
    resync: Option<Duration>,
}

impl<K> fmt::Debug for Triggers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Triggers")
            .field("streams", &self.streams.len())
            .field("resync", &self.resync)
            .finish()
    }
}

impl<K: Send + 'static> Default for Triggers<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Send + 'static> Triggers<K> {
    /// No triggers and no resync.
    pub fn new() -> Self {
        Triggers {
            streams: Vec::new(),
            resync: None,
        }
    }

    /// Wakes the controller for every engine event `mapper` maps to keys. Subscribes now, so
    /// events between this call and the controller's start are not lost.
    #[must_use]
    pub fn engine_events<I, F>(self, engine: &dyn Engine, mapper: F) -> Self
    where
        I: IntoIterator<Item = K>,
        F: FnMut(&Event) -> I + Send + 'static,
    {
        self.stream(event_keys(engine.events(), mapper))
    }

    /// Wakes the controller for every key `stream` yields.
    #[must_use]
    pub fn stream(mut self, stream: impl Stream<Item = K> + Send + 'static) -> Self {
        self.streams.push(Box::pin(stream));
        self
    }

    /// Reconciles `keys` once at start (the objects that exist already, e.g. the engine's
    /// applications: events only tell what changes from now on).
    #[must_use]
    pub fn keys(self, keys: impl IntoIterator<Item = K>) -> Self {
        let keys: Vec<K> = keys.into_iter().collect();
        self.stream(futures::stream::iter(keys))
    }

    /// A sender of extra triggers (verbs); keys it sends wake the controller.
    pub fn sender(&mut self) -> TriggerSender<K> {
        let (tx, rx) = mpsc::unbounded();
        self.streams.push(Box::pin(rx));
        TriggerSender { tx }
    }

    /// Every `period`, reconciles every key the controller has seen again. Keep it slow
    /// (minutes): it is a safety net, not a poll.
    #[must_use]
    pub fn resync(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// The resync period, when set.
    pub fn resync_period(&self) -> Option<Duration> {
        self.resync
    }

    /// One stream of every trigger, and the resync period.
    pub(crate) fn into_parts(self) -> (KeyStream<K>, Option<Duration>) {
        (
            Box::pin(futures::stream::select_all(self.streams)),
            self.resync,
        )
    }
}

#[cfg(test)]
mod tests {
    use rorqual_core::model::EventType;

    use super::*;

    #[tokio::test]
    async fn events_map_to_keys_and_streams_merge() {
        let web = AppKey::new("default", "web");
        let events: EventStream = Box::pin(futures::stream::iter(vec![
            Event::new(EventType::Normal, "Started", "").app(web.clone()),
            Event::new(EventType::Warning, "NodeLost", "no app"),
            Event::new(EventType::Normal, "Ready", "").app(web.clone()),
        ]));
        let mut triggers = Triggers::new()
            .stream(event_keys(events, app_of))
            .keys([AppKey::new("default", "db")]);
        let verbs = triggers.sender();
        assert!(verbs.trigger(AppKey::new("default", "cache")));
        drop(verbs);
        let (stream, resync) = triggers.into_parts();
        assert_eq!(resync, None);
        let mut keys: Vec<String> = stream.map(|k| k.to_string()).collect().await;
        keys.sort();
        assert_eq!(
            keys,
            ["default/cache", "default/db", "default/web", "default/web"]
        );
    }
}
