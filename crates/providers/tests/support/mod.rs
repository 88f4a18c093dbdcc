//! A fake external service for shell tests: an in-memory set of resources behind the
//! `Provider` seam, with injectable failures and crash points, and a state store that can
//! crash around its writes.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rorqual_core::clock::{Clock, ManualClock};
use rorqual_core::engine::{MemoryStateStore, StateStore, Versioned};
use rorqual_providers::provider::{
    Creation, ExternalClient, ExternalRef, Observation, Operation, ProviderError, Result, Update,
};
use rorqual_providers::{
    ConnectionDetails, ManagedReconciler, MemorySink, Provider, ReconcileError, Timing,
};
use rorqual_runtime::{Action, Context, MemoryRecorder, Reconciler};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

/// The password the fake service hands out; tests grep for it.
pub const PASSWORD: &str = "pw-7c1e9a0b-DO-NOT-PRINT";

/// The external world: resources by external name, and call counts.
#[derive(Debug, Default)]
pub struct World {
    /// Resources by external name.
    pub resources: BTreeMap<String, Value>,
    /// Successful creates that made a resource.
    pub creates: u32,
    /// Updates.
    pub updates: u32,
    /// Deletes that removed a resource.
    pub deletes: u32,
    /// Observe calls.
    pub observes: u32,
    /// When each connect was made (tokio time).
    pub connects: Vec<tokio::time::Instant>,
    /// Observes of a fresh resource still to answer "missing" (eventual consistency).
    pub hide_new_for: u32,
    hidden_left: BTreeMap<String, u32>,
    next_id: u32,
}

/// Where the fake service stops for good after doing its work: the process "dies" there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// After the operation took effect, before it returned.
    After(Operation),
}

/// A fake provider over a shared [`World`].
#[derive(Debug, Clone)]
pub struct Fake {
    pub world: Arc<Mutex<World>>,
    /// Errors to return, in order, each for its operation.
    pub failures: Arc<Mutex<VecDeque<(Operation, ProviderError)>>>,
    /// A crash point, taken once.
    pub crash: Arc<Mutex<Option<Crash>>>,
    /// Signalled when a crash point is reached.
    pub crashed: Arc<Notify>,
    /// Whether the service names resources (`<name>-<n>`) instead of taking the name asked.
    pub generated_names: bool,
    /// Breaks the contract: a create of an existing resource fails with "already exists".
    pub already_exists_errors: bool,
}

impl Fake {
    pub fn new() -> Self {
        Fake {
            world: Arc::default(),
            failures: Arc::default(),
            crash: Arc::default(),
            crashed: Arc::new(Notify::new()),
            generated_names: false,
            already_exists_errors: false,
        }
    }

    pub fn with_generated_names() -> Self {
        Fake {
            generated_names: true,
            ..Fake::new()
        }
    }

    pub fn fail_next(&self, op: Operation, error: ProviderError) {
        self.failures.lock().push_back((op, error));
    }

    pub fn crash_at(&self, crash: Crash) {
        *self.crash.lock() = Some(crash);
    }

    fn failure(&self, op: Operation) -> Result<()> {
        let mut failures = self.failures.lock();
        match failures.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(failures
                .remove(i)
                .map(|(_, e)| e)
                .expect("position is in range")),
            None => Ok(()),
        }
    }

    async fn maybe_crash(&self, op: Operation) {
        let hit = {
            let mut crash = self.crash.lock();
            if *crash == Some(Crash::After(op)) {
                *crash = None;
                true
            } else {
                false
            }
        };
        if hit {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

/// Fields the service fills in when the spec leaves them out.
fn defaults() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("encoding".into(), json!("UTF8"));
    m
}

fn params(p: &Value) -> Map<String, Value> {
    p.as_object().cloned().unwrap_or_default()
}

#[async_trait]
impl Provider for Fake {
    fn kind(&self) -> &str {
        "FakeDatabase"
    }

    fn validate(
        &self,
        parameters: &Value,
    ) -> std::result::Result<(), Vec<rorqual_core::model::FieldError>> {
        match parameters.get("size") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Ok(()),
            None => Ok(()),
            Some(other) => Err(vec![rorqual_core::model::FieldError {
                path: "size".into(),
                message: format!("must be a positive integer, got {other}"),
            }]),
        }
    }

    fn deterministic_external_names(&self) -> bool {
        !self.generated_names
    }

    async fn connect(&self, _: &ExternalRef<'_>) -> Result<Box<dyn ExternalClient>> {
        self.world.lock().connects.push(tokio::time::Instant::now());
        self.failure(Operation::Connect)?;
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl ExternalClient for Fake {
    async fn observe(&self, r: &ExternalRef<'_>) -> Result<Observation> {
        self.failure(Operation::Observe)?;
        let mut w = self.world.lock();
        w.observes += 1;
        if let Some(left) = w.hidden_left.get_mut(r.external_name)
            && *left > 0
        {
            *left -= 1;
            return Ok(Observation::missing());
        }
        let Some(actual) = w.resources.get(r.external_name).cloned() else {
            return Ok(Observation::missing());
        };
        let actual = params(&actual);
        let wanted = params(r.parameters);
        let diffs: Vec<String> = wanted
            .iter()
            .filter(|(k, v)| actual.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} -> {v}",
                    actual.get(k).cloned().unwrap_or(Value::Null)
                )
            })
            .collect();
        let mut filled = wanted.clone();
        for (k, v) in &actual {
            filled.entry(k.clone()).or_insert(v.clone());
        }
        let mut o = if diffs.is_empty() {
            Observation::up_to_date()
        } else {
            Observation::outdated(diffs.join(", "))
        };
        o = o.at_provider(Value::Object(actual)).connection_details(
            ConnectionDetails::new()
                .with("endpoint", format!("fake://{}", r.external_name))
                .with("password", PASSWORD),
        );
        if Value::Object(filled.clone()) != *r.parameters {
            o = o.late_initialized(Value::Object(filled));
        }
        Ok(o)
    }

    async fn create(&self, r: &ExternalRef<'_>) -> Result<Creation> {
        self.failure(Operation::Create)?;
        let name = {
            let mut w = self.world.lock();
            if !self.generated_names && w.resources.contains_key(r.external_name) {
                if self.already_exists_errors {
                    return Err(ProviderError::rejected(format!(
                        "`{}` already exists",
                        r.external_name
                    )));
                }
                return Ok(Creation::new());
            }
            w.next_id += 1;
            let name = if self.generated_names {
                format!("{}-{}", r.name, w.next_id)
            } else {
                r.external_name.to_owned()
            };
            let mut value = defaults();
            value.extend(params(r.parameters));
            w.resources.insert(name.clone(), Value::Object(value));
            w.creates += 1;
            let hide = w.hide_new_for;
            w.hidden_left.insert(name.clone(), hide);
            name
        };
        self.maybe_crash(Operation::Create).await;
        let creation =
            Creation::new().connection_details(ConnectionDetails::new().with("password", PASSWORD));
        Ok(if self.generated_names {
            creation.named(name)
        } else {
            creation
        })
    }

    async fn update(&self, r: &ExternalRef<'_>) -> Result<Update> {
        self.failure(Operation::Update)?;
        {
            let mut w = self.world.lock();
            let Some(Value::Object(actual)) = w.resources.get_mut(r.external_name) else {
                return Err(ProviderError::rejected(format!(
                    "`{}` does not exist",
                    r.external_name
                )));
            };
            actual.extend(params(r.parameters));
            w.updates += 1;
        }
        self.maybe_crash(Operation::Update).await;
        Ok(Update::default())
    }

    async fn delete(&self, r: &ExternalRef<'_>) -> Result<()> {
        self.failure(Operation::Delete)?;
        {
            let mut w = self.world.lock();
            if w.resources.remove(r.external_name).is_some() {
                w.deletes += 1;
            }
        }
        self.maybe_crash(Operation::Delete).await;
        Ok(())
    }
}

/// A state store that "dies" around its writes: the `n`-th compare-and-swap (counting from
/// 1) hangs forever, before or after taking effect.
#[derive(Debug)]
pub struct CrashingStore {
    /// The store itself; user operations (apply, delete) go here directly, so only the
    /// reconciler's writes can crash.
    pub inner: Arc<MemoryStateStore>,
    writes: AtomicU32,
    crash: Mutex<Option<(u32, bool)>>,
    race: Mutex<Option<u32>>,
    pub crashed: Arc<Notify>,
}

impl CrashingStore {
    pub fn new() -> Self {
        CrashingStore {
            inner: Arc::new(MemoryStateStore::new()),
            writes: AtomicU32::new(0),
            crash: Mutex::new(None),
            race: Mutex::new(None),
            crashed: Arc::new(Notify::new()),
        }
    }

    /// Crashes at the `n`-th write from now, `after` it took effect or before.
    pub fn crash_at_write(&self, n: u32, after: bool) {
        self.writes.store(0, Ordering::SeqCst);
        *self.crash.lock() = Some((n, after));
    }

    /// Another writer rewrites the key just before the `n`-th write from now, which then
    /// loses its compare-and-swap.
    pub fn race_at_write(&self, n: u32) {
        self.writes.store(0, Ordering::SeqCst);
        *self.race.lock() = Some(n);
    }

    /// Writes since the last [`CrashingStore::crash_at_write`] (or since it was made).
    pub fn writes(&self) -> u32 {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn disarm(&self) {
        *self.crash.lock() = None;
    }

    async fn die(&self) {
        self.crashed.notify_one();
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl StateStore for CrashingStore {
    async fn get(&self, key: &str) -> rorqual_core::Result<Option<Versioned>> {
        self.inner.get(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> rorqual_core::Result<u64> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let race = {
            let mut race = self.race.lock();
            let hit = *race == Some(n);
            if hit {
                *race = None;
            }
            hit
        };
        if race && let Some(current) = self.inner.get(key).await? {
            self.inner
                .compare_and_swap(key, Some(current.version), Some(current.value))
                .await?;
        }
        let point = {
            let mut crash = self.crash.lock();
            match *crash {
                Some((at, after)) if at == n => {
                    *crash = None;
                    Some(after)
                }
                _ => None,
            }
        };
        match point {
            Some(false) => {
                self.die().await;
                unreachable!("a dead store never returns")
            }
            Some(true) => {
                let _ = self.inner.compare_and_swap(key, expected, value).await;
                self.die().await;
                unreachable!("a dead store never returns")
            }
            None => self.inner.compare_and_swap(key, expected, value).await,
        }
    }

    async fn list(&self, prefix: &str) -> rorqual_core::Result<Vec<(String, Versioned)>> {
        self.inner.list(prefix).await
    }
}

/// Everything one "process" of the reconciler needs, over a shared store and world.
pub struct Shell {
    pub reconciler: ManagedReconciler,
    pub recorder: Arc<MemoryRecorder>,
}

pub fn timing() -> Timing {
    Timing::default()
}

pub fn shell(
    fake: &Fake,
    store: Arc<dyn StateStore>,
    sink: Arc<MemorySink>,
    clock: &ManualClock,
) -> Shell {
    let recorder = Arc::new(MemoryRecorder::new());
    let reconciler = ManagedReconciler::builder(Arc::new(fake.clone()), store)
        .sink(sink)
        .recorder(recorder.clone())
        .clock(Arc::new(clock.clone()))
        .timing(timing())
        .build()
        .unwrap();
    Shell {
        reconciler,
        recorder,
    }
}

/// One reconcile, or `None` when a crash point was reached (the reconcile is dropped, as a
/// killed process would stop there).
pub async fn reconcile_or_crash(
    shell: &Shell,
    name: &str,
    crashes: &[&Notify],
) -> Option<std::result::Result<Action, ReconcileError>> {
    let run = shell
        .reconciler
        .reconcile(name.to_owned(), Context::new("test", 1));
    let crashed = async {
        match crashes {
            [a] => a.notified().await,
            [a, b] => tokio::select! { () = a.notified() => {}, () = b.notified() => {} },
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        r = run => Some(r),
        () = crashed => None,
    }
}

/// Reconciles `name` until it is Ready and Synced, `done` holds, or the key is forgotten, advancing the clock by each
/// requeue delay (or backoff of 1 s after a retryable error). Panics on a permanent error or
/// after 40 rounds.
pub async fn converge(
    shell: &Shell,
    clock: &ManualClock,
    name: &str,
    done: impl Fn() -> bool,
) -> Action {
    for _ in 0..40 {
        match shell
            .reconciler
            .reconcile(name.to_owned(), Context::new("test", 1))
            .await
        {
            Ok(action) if action.is_forget() || done() => return action,
            Ok(action)
                if shell
                    .reconciler
                    .resources()
                    .get(name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.status.is_healthy()) =>
            {
                return action;
            }
            Ok(action) => clock.advance(action.requeue_after().unwrap_or(Duration::from_secs(1))),
            Err(e) if e.is_retryable() => clock.advance(Duration::from_secs(1)),
            Err(e) => panic!("permanent error while converging: {e}"),
        }
    }
    panic!("`{name}` did not converge in 40 reconciles");
}

pub fn now_clock() -> ManualClock {
    let clock = ManualClock::new();
    let _ = clock.now();
    clock
}
