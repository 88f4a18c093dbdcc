//! The runner: reconciles keys as triggers and timers make them due, with bounded concurrency
//! and never two reconciles of one key at once.
//!
//! # How keys flow
//!
//! - A trigger (see [`Triggers`]) schedules its key now. A key already scheduled keeps its
//!   earlier deadline; a key whose reconcile is running is marked and reconciled once more
//!   right after it finishes, however many triggers named it meanwhile (coalescing).
//! - A due key starts when fewer than `concurrency` reconciles run; otherwise it waits in the
//!   queue (the queue-age metrics say how long).
//! - When a reconcile returns [`Action::requeue`] the key is scheduled after that delay (at
//!   most [`MAX_DELAY`]); on [`Action::await_change`] it waits for a trigger; on
//!   [`Action::forget`] it is dropped from the resync and its backoff state is dropped; on a
//!   retryable error (or a panic) it is scheduled after its next [`ErrorPolicy`] backoff delay
//!   (at most [`MAX_DELAY`] too). On an error its [`Reconciler::is_retryable`] calls permanent,
//!   it is not retried: it waits for a trigger, as after [`Action::await_change`]. A success
//!   resets the key's backoff. A trigger during a backoff wakes the key at once: something
//!   changed, so retrying is worth it.
//! - The periodic resync triggers every key any trigger has named and no reconcile has
//!   forgotten since.
//! - Triggers are not starved by a backlog: every turn of the loop (each start or finish of a
//!   reconcile) first takes [`TRIGGERS_PER_TURN`] key the triggers have ready, and a resync
//!   that is due, before it starts or finishes the next reconcile.
//!
//! # Shutdown
//!
//! [`Controller::run`] takes a shutdown future. When it completes, the controller stops taking
//! triggers and starting due keys, waits for the reconciles already running, and returns.
//! Keys still queued are dropped: a restarted controller finds its work again from its
//! persisted records and its start keys. Bound the wait, if needed, with a timeout around
//! `run`.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::action::Action;
use crate::delay_queue::{KeyedDelayQueue, MAX_DELAY};
use crate::error_policy::{Backoffs, ErrorPolicy, ErrorPolicyError};
use crate::metrics::{ControllerMetrics, Meters, Outcome};
use crate::reconciler::{Context, Reconciler};
use crate::triggers::Triggers;

/// What a controller's key must be: cheap to clone, hashable, printable (it names the object
/// in logs, spans and events), and shareable across tasks. `String` and
/// [`AppKey`](rorqual_core::model::AppKey) are keys.
pub trait ObjectKey: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static {}

impl<T: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static> ObjectKey for T {}

/// The default number of reconciles a controller runs at once.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How many ready trigger keys the loop takes on each turn before it starts or finishes the
/// next reconcile, however long its backlog of due keys. One per turn interleaves triggers
/// with starts and finishes in arrival order (a larger batch would queue a burst of keys at
/// one instant before starting any, and the delay queue does not promise FIFO order among
/// keys due at the same millisecond); when nothing else is ready the loop takes every ready
/// trigger anyway.
pub const TRIGGERS_PER_TURN: usize = 1;

/// How often the queue-age gauge is refreshed while due keys wait for a free worker.
const AGE_REFRESH: Duration = Duration::from_secs(1);

/// Why a controller could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The controller's name is empty (it labels metrics and spans).
    #[error("controller name is empty")]
    EmptyName,
    /// The concurrency is 0: nothing would ever run.
    #[error("controller `{controller}` needs a concurrency of at least 1")]
    ZeroConcurrency {
        /// The controller.
        controller: String,
    },
    /// The error policy cannot produce a backoff schedule.
    #[error("controller `{controller}` has an invalid error policy: {source}")]
    ErrorPolicy {
        /// The controller.
        controller: String,
        /// What is wrong with the policy (which setting, which value).
        #[source]
        source: ErrorPolicyError,
    },
    /// The resync period ([`Triggers::resync`]) is 0: a timer cannot tick that often.
    #[error(
        "controller `{controller}` has a resync period of 0 (`Triggers::resync`): use a slow period (minutes) or no resync"
    )]
    ZeroResync {
        /// The controller.
        controller: String,
    },
}

/// Builds a [`Controller`]; see [`Controller::builder`].
#[must_use]
pub struct ControllerBuilder<K, E> {
    name: String,
    reconciler: Arc<dyn Reconciler<K, Error = E>>,
    concurrency: usize,
    error_policy: ErrorPolicy,
    triggers: Triggers<K>,
    metrics: Option<ControllerMetrics>,
}

impl<K, E> Debug for ControllerBuilder<K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControllerBuilder")
            .field("name", &self.name)
            .field("reconciler", &self.reconciler)
            .field("concurrency", &self.concurrency)
            .field("error_policy", &self.error_policy)
            .field("triggers", &self.triggers)
            .finish()
    }
}

impl<K: ObjectKey, E> ControllerBuilder<K, E> {
    /// How many reconciles may run at once ([`DEFAULT_CONCURRENCY`] by default).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The backoff after failed reconciles ([`ErrorPolicy::default`]: 1 s doubling to 60 s).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// What wakes the controller.
    pub fn triggers(mut self, triggers: Triggers<K>) -> Self {
        self.triggers = triggers;
        self
    }

    /// Reports metrics into `metrics` (labelled with this controller's name).
    pub fn metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the configuration and builds the controller.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for an empty name, a zero concurrency, an unusable error policy (see
    /// [`ErrorPolicy::validate`]) or a zero resync period.
    pub fn build(self) -> Result<Controller<K, E>, BuildError> {
        if self.name.is_empty() {
            return Err(BuildError::EmptyName);
        }
        if self.concurrency == 0 {
            return Err(BuildError::ZeroConcurrency {
                controller: self.name,
            });
        }
        if let Err(source) = self.error_policy.validate() {
            return Err(BuildError::ErrorPolicy {
                controller: self.name,
                source,
            });
        }
        if self.triggers.resync_period() == Some(Duration::ZERO) {
            return Err(BuildError::ZeroResync {
                controller: self.name,
            });
        }
        let meters = match &self.metrics {
            Some(metrics) => metrics.meters(&self.name),
            None => Meters::detached(),
        };
        Ok(Controller {
            name: self.name.into(),
            reconciler: self.reconciler,
            concurrency: self.concurrency,
            error_policy: self.error_policy,
            triggers: self.triggers,
            meters,
        })
    }
}

/// A controller: a named reconciler, what wakes it, and how it runs. See the
/// [module docs](self).
pub struct Controller<K, E> {
    name: Arc<str>,
    reconciler: Arc<dyn Reconciler<K, Error = E>>,
    concurrency: usize,
    error_policy: ErrorPolicy,
    triggers: Triggers<K>,
    meters: Meters,
}

impl<K, E> Debug for Controller<K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("reconciler", &self.reconciler)
            .field("concurrency", &self.concurrency)
            .field("error_policy", &self.error_policy)
            .field("triggers", &self.triggers)
            .finish()
    }
}

/// How a reconcile task ended.
type Finished<E> = Result<Result<Action, E>, JoinError>;

enum Wake<K, E> {
    Shutdown,
    Finished(Id, Finished<E>),
    Due(crate::delay_queue::Due<K>),
    Trigger(Option<K>),
    Resync,
    Refresh,
}

impl<K: ObjectKey, E: Display + Debug + Send + Sync + 'static> Controller<K, E> {
    /// A builder for controller `name` running `reconciler`.
    pub fn builder(
        name: impl Into<String>,
        reconciler: Arc<dyn Reconciler<K, Error = E>>,
    ) -> ControllerBuilder<K, E> {
        ControllerBuilder {
            name: name.into(),
            reconciler,
            concurrency: DEFAULT_CONCURRENCY,
            error_policy: ErrorPolicy::default(),
            triggers: Triggers::new(),
            metrics: None,
        }
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until `shutdown` completes (then waits for running reconciles; see the
    /// [module docs](self#shutdown)), or until every trigger stream has ended with no resync
    /// configured and nothing is queued or running.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (triggers, resync) = self.triggers.into_parts();
        let mut runner = Runner {
            name: self.name,
            reconciler: self.reconciler,
            meters: self.meters,
            queue: KeyedDelayQueue::new(),
            backoffs: Backoffs::new(self.error_policy),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            running_keys: HashSet::new(),
            dirty: HashSet::new(),
            known: HashSet::new(),
        };
        let mut triggers = triggers;
        let mut triggers_open = true;
        let mut resync = resync.map(|period| {
            let mut timer = tokio::time::interval_at(Instant::now() + period, period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        tracing::debug!(controller = %runner.name, concurrency = self.concurrency, "controller started");
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let now = Instant::now();
            runner.report(now);
            // Take ready triggers first (a bounded batch), and a due resync: the
            // `biased` select below prefers finished and due reconciles, which a backlog keeps
            // ready turn after turn.
            if triggers_open {
                for _ in 0..TRIGGERS_PER_TURN {
                    match triggers.next().now_or_never() {
                        Some(Some(key)) => runner.trigger(key),
                        Some(None) => {
                            triggers_open = false;
                            break;
                        }
                        None => break,
                    }
                }
            }
            if tick(&mut resync).now_or_never().is_some() {
                runner.resync();
            }
            if !triggers_open
                && resync.is_none()
                && runner.queue.is_empty()
                && runner.tasks.is_empty()
            {
                break;
            }
            let can_start = runner.tasks.len() < self.concurrency;
            let waiting = !can_start && runner.queue.oldest_due_age(now).is_some();
            let wake = tokio::select! {
                biased;
                () = &mut shutdown => Wake::Shutdown,
                Some(done) = runner.tasks.join_next_with_id() => match done {
                    Ok((id, result)) => Wake::Finished(id, Ok(result)),
                    Err(err) => Wake::Finished(err.id(), Err(err)),
                },
                Some(due) = runner.queue.next(), if can_start => Wake::Due(due),
                key = triggers.next(), if triggers_open => Wake::Trigger(key),
                _ = tick(&mut resync), if resync.is_some() => Wake::Resync,
                () = tokio::time::sleep(AGE_REFRESH), if waiting => Wake::Refresh,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Finished(id, result) => runner.finished(id, result),
                Wake::Due(due) => {
                    let waited = Instant::now().saturating_duration_since(due.deadline);
                    runner.start(due.key, waited);
                }
                Wake::Trigger(Some(key)) => runner.trigger(key),
                Wake::Trigger(None) => triggers_open = false,
                Wake::Resync => runner.resync(),
                Wake::Refresh => {}
            }
        }
        let running = runner.tasks.len();
        if running > 0 {
            tracing::info!(controller = %runner.name, running, "controller stopping: waiting for running reconciles");
        }
        while let Some(done) = runner.tasks.join_next_with_id().await {
            match done {
                Ok((id, result)) => runner.finished(id, Ok(result)),
                Err(err) => runner.finished(err.id(), Err(err)),
            }
        }
        runner.report(Instant::now());
        tracing::debug!(controller = %runner.name, "controller stopped");
    }
}

/// `delay` after `now`, at most [`MAX_DELAY`] ahead (`Instant + Duration` panics on overflow).
fn later(now: Instant, delay: Duration) -> Instant {
    now + delay.min(MAX_DELAY)
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The state of a running controller, owned by its loop.
struct Runner<K, E> {
    name: Arc<str>,
    reconciler: Arc<dyn Reconciler<K, Error = E>>,
    meters: Meters,
    queue: KeyedDelayQueue<K>,
    backoffs: Backoffs<K>,
    tasks: JoinSet<Result<Action, E>>,
    /// Running tasks: their key, attempt and start.
    running: HashMap<Id, (K, u32, Instant)>,
    running_keys: HashSet<K>,
    /// Running keys triggered again while running.
    dirty: HashSet<K>,
    /// Every key a trigger named and no reconcile forgot since, for the resync.
    known: HashSet<K>,
}

impl<K: ObjectKey, E: Display + Debug + Send + Sync + 'static> Runner<K, E> {
    fn report(&self, now: Instant) {
        self.meters.set_queue(
            self.queue.len(),
            self.queue.oldest_due_age(now),
            self.tasks.len(),
        );
    }

    fn trigger(&mut self, key: K) {
        if !self.known.contains(&key) {
            self.known.insert(key.clone());
        }
        if self.running_keys.contains(&key) {
            self.dirty.insert(key);
        } else {
            self.queue.schedule_now(key);
        }
    }

    fn resync(&mut self) {
        let keys: Vec<K> = self.known.iter().cloned().collect();
        tracing::debug!(controller = %self.name, keys = keys.len(), "resync");
        for key in keys {
            self.trigger(key);
        }
    }

    fn start(&mut self, key: K, waited: Duration) {
        if self.running_keys.contains(&key) {
            // Not reached: a running key is never in the queue (triggers mark it dirty, and it
            // is scheduled again only when it finishes). Coalescing is the safe answer.
            self.dirty.insert(key);
            return;
        }
        self.meters.started(waited);
        let attempt = self.backoffs.attempt(&key);
        let span = tracing::info_span!("reconcile", controller = %self.name, key = %key, attempt);
        let ctx = Context::new(self.name.clone(), attempt);
        let reconciler = self.reconciler.clone();
        let task_key = key.clone();
        let handle = self
            .tasks
            .spawn(async move { reconciler.reconcile(task_key, ctx).await }.instrument(span));
        self.running_keys.insert(key.clone());
        self.running
            .insert(handle.id(), (key, attempt, Instant::now()));
    }

    fn finished(&mut self, id: Id, result: Finished<E>) {
        let Some((key, attempt, started)) = self.running.remove(&id) else {
            // Every task is spawned by `start`, which records its id first.
            return;
        };
        self.running_keys.remove(&key);
        let now = Instant::now();
        let took = now - started;
        // A failure's message, and whether retrying can help.
        let failure = match result {
            Ok(Ok(action)) => {
                self.backoffs.succeeded(&key);
                match action.requeue_after() {
                    Some(delay) => {
                        self.meters.finished(Outcome::Requeue, took);
                        tracing::debug!(controller = %self.name, key = %key, attempt, ?took, requeue_in = ?delay, "reconciled");
                        self.queue.schedule(key.clone(), later(now, delay));
                    }
                    None if action.is_forget() => {
                        self.meters.finished(Outcome::Success, took);
                        tracing::debug!(controller = %self.name, key = %key, attempt, ?took, "reconciled; forgetting the key");
                        self.known.remove(&key);
                    }
                    None => {
                        self.meters.finished(Outcome::Success, took);
                        tracing::debug!(controller = %self.name, key = %key, attempt, ?took, "reconciled");
                    }
                }
                None
            }
            Ok(Err(err)) => Some((err.to_string(), self.reconciler.is_retryable(&err))),
            Err(join) if join.is_panic() => Some(("reconcile panicked".to_owned(), true)),
            Err(_) => Some(("reconcile was cancelled".to_owned(), true)),
        };
        if let Some((error, retryable)) = failure {
            self.meters.finished(Outcome::Error, took);
            // A permanent failure still counts toward the streak: the attempt number says how
            // many reconciles in a row failed, and a retryable failure after it backs off from
            // where the streak is.
            let delay = self.backoffs.failed(key.clone());
            if retryable {
                tracing::warn!(controller = %self.name, key = %key, attempt, %error, retry_in = ?delay, "reconcile failed");
                self.queue.schedule(key.clone(), later(now, delay));
            } else {
                tracing::warn!(controller = %self.name, key = %key, attempt, %error, "reconcile failed permanently: waiting for a change");
            }
        }
        if self.dirty.remove(&key) {
            // Triggered while running: it is known (again, if this reconcile forgot it).
            self.known.insert(key.clone());
            self.queue.schedule_now(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parking_lot::Mutex;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::reconciler::reconciler_fn;

    const S: Duration = Duration::from_secs(1);

    /// What the reconciles did: each start's key, attempt and time since the test began, and
    /// the peak number of reconciles in flight (overall and per key).
    #[derive(Debug)]
    struct Probe {
        t0: Instant,
        starts: Mutex<Vec<(String, u32, Duration)>>,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        per_key: Mutex<HashMap<String, usize>>,
        per_key_peak: AtomicUsize,
    }

    impl Probe {
        fn new() -> Arc<Self> {
            Arc::new(Probe {
                t0: Instant::now(),
                starts: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                per_key: Mutex::new(HashMap::new()),
                per_key_peak: AtomicUsize::new(0),
            })
        }

        fn enter(&self, key: &str, attempt: u32) {
            self.starts
                .lock()
                .push((key.to_owned(), attempt, self.t0.elapsed()));
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            let mut per_key = self.per_key.lock();
            let k = per_key.entry(key.to_owned()).or_default();
            *k += 1;
            self.per_key_peak.fetch_max(*k, Ordering::SeqCst);
        }

        fn exit(&self, key: &str) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            *self.per_key.lock().entry(key.to_owned()).or_default() -= 1;
        }

        fn starts_of(&self, key: &str) -> Vec<(u32, Duration)> {
            self.starts
                .lock()
                .iter()
                .filter(|(k, _, _)| k == key)
                .map(|(_, a, t)| (*a, *t))
                .collect()
        }
    }

    /// A reconciler that sleeps `work`, then runs `decide(key, attempt)`.
    fn sleeper(
        probe: Arc<Probe>,
        work: Duration,
        decide: impl Fn(&str, u32) -> Result<Action, String> + Send + Sync + 'static,
    ) -> Arc<dyn Reconciler<String, Error = String>> {
        let decide = Arc::new(decide);
        Arc::new(reconciler_fn(move |key: String, ctx: Context| {
            let (probe, decide) = (probe.clone(), decide.clone());
            async move {
                probe.enter(&key, ctx.attempt);
                tokio::time::sleep(work).await;
                probe.exit(&key);
                decide(&key, ctx.attempt)
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_concurrency_and_one_reconcile_per_key() {
        let probe = Probe::new();
        let r = sleeper(probe.clone(), S, |_, _| Ok(Action::await_change()));
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let c = Controller::builder("test", r)
            .concurrency(3)
            .triggers(Triggers::new().keys(keys))
            .build()
            .unwrap();
        c.run(std::future::pending()).await;
        assert_eq!(probe.peak.load(Ordering::SeqCst), 3);
        assert_eq!(probe.per_key_peak.load(Ordering::SeqCst), 1);
        assert_eq!(probe.starts.lock().len(), 10, "each key once");
        assert_eq!(probe.t0.elapsed(), 4 * S, "10 keys, 3 at a time, 1 s each");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_triggered_while_running_runs_once_more_after() {
        let probe = Probe::new();
        let r = sleeper(probe.clone(), 10 * S, |_, _| Ok(Action::await_change()));
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let c = Controller::builder("test", r)
            .triggers(triggers)
            .build()
            .unwrap();
        let run = tokio::spawn(c.run(std::future::pending()));
        tx.trigger("web".to_owned());
        tokio::time::sleep(2 * S).await;
        for _ in 0..5 {
            tx.trigger("web".to_owned());
        }
        drop(tx);
        run.await.unwrap();
        assert_eq!(probe.starts_of("web"), [(1, Duration::ZERO), (1, 10 * S)]);
        assert_eq!(probe.per_key_peak.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_exponentially_and_success_resets() {
        let probe = Probe::new();
        // Fails on attempts 1-3, succeeds on 4 and asks to be requeued in 30 s, then fails
        // once more: the streak starts again from the minimum delay.
        let runs = Arc::new(AtomicUsize::new(0));
        let r = {
            let runs = runs.clone();
            sleeper(probe.clone(), Duration::ZERO, move |_, _| {
                match runs.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("boom".to_owned()),
                    3 => Ok(Action::requeue(30 * S)),
                    4 => Err("boom".to_owned()),
                    _ => Ok(Action::await_change()),
                }
            })
        };
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        let c = Controller::builder("test", r)
            .error_policy(ErrorPolicy::default().jitter(false))
            .triggers(Triggers::new().keys(["web".to_owned()]))
            .metrics(metrics)
            .build()
            .unwrap();
        c.run(std::future::pending()).await;
        assert_eq!(
            probe.starts_of("web"),
            [
                (1, Duration::ZERO),
                (2, S),
                (3, 3 * S),
                (4, 7 * S),
                (1, 37 * S),
                (2, 38 * S),
            ]
        );
        let text = crate::metrics::encode_text(&registry).unwrap();
        for line in [
            r#"rorqual_controller_reconciles_total{controller="test",outcome="error"} 4"#,
            r#"rorqual_controller_reconciles_total{controller="test",outcome="requeue"} 1"#,
            r#"rorqual_controller_reconciles_total{controller="test",outcome="success"} 1"#,
            r#"rorqual_controller_reconcile_errors_total{controller="test"} 4"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_during_backoff_retries_at_once() {
        let probe = Probe::new();
        let r = sleeper(probe.clone(), Duration::ZERO, |_, attempt| {
            if attempt < 3 {
                Err("boom".to_owned())
            } else {
                Ok(Action::await_change())
            }
        });
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let c = Controller::builder("test", r)
            .error_policy(ErrorPolicy::default().min_delay(10 * S).jitter(false))
            .triggers(triggers)
            .build()
            .unwrap();
        let run = tokio::spawn(c.run(std::future::pending()));
        tx.trigger("web".to_owned());
        tokio::time::sleep(3 * S).await;
        tx.trigger("web".to_owned()); // something changed: do not wait out the 10 s
        drop(tx);
        run.await.unwrap();
        assert_eq!(
            probe.starts_of("web"),
            [(1, Duration::ZERO), (2, 3 * S), (3, 23 * S)],
            "the second failure still counts toward the streak (20 s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_is_retried_with_backoff() {
        let probe = Probe::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = {
            let runs = runs.clone();
            sleeper(probe.clone(), Duration::ZERO, move |_, _| {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("reconcile bug");
                }
                Ok(Action::await_change())
            })
        };
        let c = Controller::builder("test", r)
            .error_policy(ErrorPolicy::default().jitter(false))
            .triggers(Triggers::new().keys(["web".to_owned()]))
            .build()
            .unwrap();
        c.run(std::future::pending()).await;
        assert_eq!(probe.starts_of("web"), [(1, Duration::ZERO), (2, S)]);
    }

    #[tokio::test(start_paused = true)]
    async fn resync_wakes_every_known_key_slowly() {
        let probe = Probe::new();
        let r = sleeper(probe.clone(), Duration::ZERO, |_, _| {
            Ok(Action::await_change())
        });
        let c = Controller::builder("test", r)
            .triggers(
                Triggers::new()
                    .keys(["a".to_owned(), "b".to_owned()])
                    .resync(60 * S),
            )
            .build()
            .unwrap();
        let stop = tokio::time::sleep(150 * S);
        c.run(stop).await;
        let times =
            |k| -> Vec<Duration> { probe.starts_of(k).into_iter().map(|(_, t)| t).collect() };
        assert_eq!(times("a"), [Duration::ZERO, 60 * S, 120 * S]);
        assert_eq!(times("b"), [Duration::ZERO, 60 * S, 120 * S]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_running_reconciles_and_starts_nothing_new() {
        let probe = Probe::new();
        let r = sleeper(probe.clone(), 10 * S, |_, _| Ok(Action::requeue(S)));
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let c = Controller::builder("test", r)
            .concurrency(1)
            .triggers(triggers.keys(["a".to_owned(), "b".to_owned()]))
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(c.run(async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(2 * S).await;
        stop.send(()).unwrap();
        run.await.unwrap();
        assert_eq!(
            probe.t0.elapsed(),
            10 * S,
            "waited for the running reconcile"
        );
        assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(probe.starts.lock().len(), 1, "b was never started");
        assert!(!tx.trigger("c".to_owned()), "the controller is gone");
    }

    /// A reconciler that does nothing and waits for a change, for tests of `build()`.
    fn idle_reconciler() -> Arc<dyn Reconciler<String, Error = String>> {
        Arc::new(reconciler_fn(|_k: String, _c: Context| async {
            Ok::<_, String>(Action::await_change())
        }))
    }

    #[test]
    fn build_validates() {
        let r = idle_reconciler;
        let err = Controller::builder("", r()).build().unwrap_err();
        assert_eq!(err.to_string(), "controller name is empty");
        let err = Controller::builder("x", r())
            .concurrency(0)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "controller `x` needs a concurrency of at least 1"
        );
        let err = Controller::builder("x", r())
            .error_policy(ErrorPolicy::default().factor(0.5))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::ErrorPolicy {
                    source: ErrorPolicyError::Factor { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn build_refuses_a_backoff_beyond_a_year_naming_the_setting() {
        let r = idle_reconciler();
        let err = Controller::builder("x", r)
            .error_policy(ErrorPolicy::default().max_delay(Duration::MAX))
            .build()
            .unwrap_err();
        match &err {
            BuildError::ErrorPolicy {
                controller,
                source:
                    ErrorPolicyError::MaxDelayTooLong {
                        max_delay,
                        limit: MAX_DELAY,
                    },
            } => {
                assert_eq!(controller, "x");
                assert_eq!(*max_delay, Duration::MAX);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("controller `x` has an invalid error policy: backoff `max_delay`"),
            "{err}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is a source"
        );
    }

    #[test]
    fn build_refuses_a_zero_resync_period() {
        let r = idle_reconciler();
        let err = Controller::builder("x", r)
            .triggers(Triggers::new().resync(Duration::ZERO))
            .build()
            .unwrap_err();
        assert!(matches!(err, BuildError::ZeroResync { .. }), "{err:?}");
        assert!(err.to_string().contains("resync period of 0"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_beyond_a_year_is_capped_not_a_panic() {
        // `build` refuses such a policy; the loop caps the delay all the same (a policy is a
        // public struct, and the cap is what keeps `Instant + delay` from overflowing).
        let probe = Probe::new();
        let r = sleeper(probe.clone(), Duration::ZERO, |_, attempt| {
            if attempt == 1 {
                Err("boom".to_owned())
            } else {
                Ok(Action::await_change())
            }
        });
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let policy = ErrorPolicy::default()
            .min_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .jitter(false);
        let c = Controller {
            name: "test".into(),
            reconciler: r,
            concurrency: 1,
            error_policy: policy,
            triggers,
            meters: Meters::detached(),
        };
        let run = tokio::spawn(c.run(std::future::pending()));
        tx.trigger("web".to_owned());
        tokio::time::sleep(5 * S).await;
        tx.trigger("web".to_owned()); // wakes the key out of its year-long backoff
        drop(tx);
        run.await.expect("the controller loop did not panic");
        assert_eq!(probe.starts_of("web"), [(1, Duration::ZERO), (2, 5 * S)]);
    }

    #[tokio::test(start_paused = true)]
    async fn forget_drops_the_key_from_the_resync_and_its_backoff() {
        let probe = Probe::new();
        // `gone` fails once (a backoff streak), then finds its object deleted and forgets it.
        let r = sleeper(probe.clone(), Duration::ZERO, |key, attempt| {
            match (key, attempt) {
                ("gone", 1) => Err("boom".to_owned()),
                ("gone", _) => Ok(Action::forget()),
                _ => Ok(Action::await_change()),
            }
        });
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let c = Controller::builder("test", r)
            .error_policy(ErrorPolicy::default().jitter(false))
            .triggers(
                triggers
                    .keys(["gone".to_owned(), "kept".to_owned()])
                    .resync(60 * S),
            )
            .build()
            .unwrap();
        let run = tokio::spawn(c.run(tokio::time::sleep(150 * S)));
        tokio::time::sleep(130 * S).await;
        tx.trigger("gone".to_owned()); // created again: a new key, from attempt 1
        run.await.unwrap();
        assert_eq!(
            probe.starts_of("gone"),
            [(1, Duration::ZERO), (2, S), (1, 130 * S), (2, 131 * S)],
            "not resynced at 60 s and 120 s once forgotten; no streak left over"
        );
        let kept: Vec<Duration> = probe
            .starts_of("kept")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(kept, [Duration::ZERO, 60 * S, 120 * S]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_waits_for_a_change_instead_of_retrying() {
        let probe = Probe::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r: Arc<dyn Reconciler<String, Error = String>> = {
            let (probe, runs) = (probe.clone(), runs.clone());
            Arc::new(
                reconciler_fn(move |key: String, ctx: Context| {
                    let (probe, runs) = (probe.clone(), runs.clone());
                    async move {
                        probe.enter(&key, ctx.attempt);
                        probe.exit(&key);
                        match runs.fetch_add(1, Ordering::SeqCst) {
                            0 => Err("spec is invalid".to_owned()),
                            1 => Err("engine busy".to_owned()),
                            _ => Ok(Action::await_change()),
                        }
                    }
                })
                .retryable_when(|err: &String| !err.contains("invalid")),
            )
        };
        let mut registry = Registry::default();
        let mut triggers = Triggers::new();
        let tx = triggers.sender();
        let c = Controller::builder("test", r)
            .error_policy(ErrorPolicy::default().jitter(false))
            .triggers(triggers)
            .metrics(ControllerMetrics::register(&mut registry))
            .build()
            .unwrap();
        let run = tokio::spawn(c.run(std::future::pending()));
        tx.trigger("web".to_owned());
        tokio::time::sleep(30 * S).await;
        assert_eq!(
            probe.starts_of("web"),
            [(1, Duration::ZERO)],
            "a permanent error is not retried"
        );
        tx.trigger("web".to_owned()); // the spec was fixed
        drop(tx);
        run.await.unwrap();
        assert_eq!(
            probe.starts_of("web"),
            [(1, Duration::ZERO), (2, 30 * S), (3, 32 * S)],
            "a retryable error after it backs off, from where the streak is (2 s)"
        );
        let text = crate::metrics::encode_text(&registry).unwrap();
        for line in [
            r#"rorqual_controller_reconciles_total{controller="test",outcome="error"} 2"#,
            r#"rorqual_controller_reconcile_errors_total{controller="test"} 2"#,
            r#"rorqual_controller_reconciles_total{controller="test",outcome="success"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_is_taken_promptly_behind_a_long_due_backlog() {
        // 5000 keys all come due at 10 s; a trigger for `probe` arrives at that same instant.
        // The controller must take the trigger within a few turns of its loop, not after it
        // has worked through the backlog.
        const BACKLOG: usize = 5000;
        let probe = Probe::new();
        let r = sleeper(probe.clone(), Duration::ZERO, |key, _| {
            if key == "probe" {
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(10 * S))
        });
        let t0 = Instant::now();
        let late = futures::stream::once(async move {
            tokio::time::sleep_until(t0 + 10 * S).await;
            "probe".to_owned()
        });
        let keys: Vec<String> = (0..BACKLOG).map(|i| format!("k{i}")).collect();
        let c = Controller::builder("test", r)
            .concurrency(BACKLOG + 1)
            .triggers(Triggers::new().keys(keys).stream(late))
            .build()
            .unwrap();
        c.run(tokio::time::sleep(15 * S)).await;
        let starts = probe.starts.lock();
        let second_round: Vec<&str> = starts
            .iter()
            .filter(|(_, _, t)| *t == 10 * S)
            .map(|(k, _, _)| k.as_str())
            .collect();
        assert_eq!(second_round.len(), BACKLOG + 1);
        let position = second_round.iter().position(|k| *k == "probe").unwrap();
        assert!(
            position <= 2,
            "the trigger waited behind {position} of {BACKLOG} due keys"
        );
    }
}
