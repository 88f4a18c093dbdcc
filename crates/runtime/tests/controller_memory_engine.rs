//! A controller run against the in-memory engine: woken by engine events (no resync, no
//! polling), backing off on errors, one reconcile per key at a time, bounded concurrency.
//!
//! Time is tokio's paused clock, so the backoff schedule is asserted to the millisecond; the
//! engine's own clock is a separate manual clock that this test never advances.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rorqual_core::engine::Engine;
use rorqual_core::memory::MemoryEngine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Event};
use rorqual_runtime::triggers::Triggers;
use rorqual_runtime::{Action, Context, Controller, ErrorPolicy, Reconciler};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

/// Reconciles applications; records each start (key, attempt, time) and the peak number of
/// reconciles in flight, overall and for any one key.
#[derive(Debug)]
struct Recording {
    engine: Arc<MemoryEngine>,
    t0: Instant,
    /// How long each reconcile works.
    work: Duration,
    /// Fails the first this-many reconciles of application `flaky`.
    flaky_failures: usize,
    flaky_runs: AtomicUsize,
    starts: Mutex<Vec<(String, u32, Duration)>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
    per_key_peak: AtomicUsize,
}

#[async_trait::async_trait]
impl Reconciler<AppKey> for Recording {
    type Error = String;

    async fn reconcile(&self, app: AppKey, ctx: Context) -> Result<Action, String> {
        let key = app.to_string();
        self.starts
            .lock()
            .push((key.clone(), ctx.attempt, self.t0.elapsed()));
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        {
            let mut per_key = self.per_key.lock();
            let k = per_key.entry(key.clone()).or_default();
            *k += 1;
            self.per_key_peak.fetch_max(*k, Ordering::SeqCst);
        }

        tokio::time::sleep(self.work).await;
        let groups = self.engine.groups(&app).await.map_err(|e| e.to_string());

        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.per_key.lock().entry(key).or_default() -= 1;
        groups?;
        if app.name == "flaky"
            && self.flaky_runs.fetch_add(1, Ordering::SeqCst) < self.flaky_failures
        {
            return Err(format!("{app} failed on attempt {}", ctx.attempt));
        }
        Ok(Action::await_change())
    }
}

impl Recording {
    fn new(engine: Arc<MemoryEngine>, work: Duration, flaky_failures: usize) -> Arc<Self> {
        Arc::new(Recording {
            engine,
            t0: Instant::now(),
            work,
            flaky_failures,
            flaky_runs: AtomicUsize::new(0),
            starts: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            per_key: Mutex::new(HashMap::new()),
            per_key_peak: AtomicUsize::new(0),
        })
    }

    fn starts_of(&self, key: &str) -> Vec<(u32, Duration)> {
        self.starts
            .lock()
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, attempt, at)| (*attempt, *at))
            .collect()
    }
}

fn spec(name: &str) -> AppSpec {
    AppSpec::new(name, vec![ContainerSpec::new("app", [name])])
}

/// The application an instance was scheduled for: one trigger per new instance, so the test
/// knows exactly which events woke the controller.
fn scheduled_app(event: &Event) -> Option<AppKey> {
    (event.reason == "Scheduled")
        .then(|| event.app.clone())
        .flatten()
}

fn start(
    engine: &Arc<MemoryEngine>,
    reconciler: Arc<Recording>,
    concurrency: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let controller = Controller::builder("apps", reconciler)
        .concurrency(concurrency)
        .error_policy(ErrorPolicy::default().jitter(false))
        .triggers(Triggers::new().engine_events(&**engine, scheduled_app))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

#[tokio::test(start_paused = true)]
async fn woken_by_engine_events_not_by_polling() {
    let engine = Arc::new(MemoryEngine::new());
    let rec = Recording::new(engine.clone(), Duration::ZERO, 0);
    let (stop, run) = start(&engine, rec.clone(), 4);

    tokio::time::sleep(600 * S).await;
    assert!(
        rec.starts.lock().is_empty(),
        "nothing happened, nothing ran"
    );

    engine.apply_group(&spec("web"), 1).await.unwrap();
    tokio::time::sleep(S).await;
    assert_eq!(
        rec.starts_of("default/web"),
        [(1, 600 * S)],
        "woken at once by the event"
    );

    engine
        .scale_group(&spec("web").key(), &spec("web").revision(), 2)
        .await
        .unwrap();
    tokio::time::sleep(600 * S).await;
    assert_eq!(
        rec.starts_of("default/web"),
        [(1, 600 * S), (1, 601 * S)],
        "woken again by the scale-up, and not otherwise"
    );

    stop.send(()).unwrap();
    run.await.unwrap();
    println!(
        "event-driven: {} reconciles in 1201 s",
        rec.starts.lock().len()
    );
}

#[tokio::test(start_paused = true)]
async fn failing_reconciles_back_off_exponentially() {
    let engine = Arc::new(MemoryEngine::new());
    let rec = Recording::new(engine.clone(), Duration::ZERO, 5);
    let (stop, run) = start(&engine, rec.clone(), 4);

    engine.apply_group(&spec("flaky"), 1).await.unwrap();
    tokio::time::sleep(120 * S).await;
    // Five failures: retried after 1, 2, 4, 8 and 16 s; the sixth attempt succeeds and the key
    // then awaits a change.
    assert_eq!(
        rec.starts_of("default/flaky"),
        [
            (1, Duration::ZERO),
            (2, S),
            (3, 3 * S),
            (4, 7 * S),
            (5, 15 * S),
            (6, 31 * S),
        ]
    );

    // Success reset the streak: a new change is attempt 1 again.
    engine
        .scale_group(&spec("flaky").key(), &spec("flaky").revision(), 2)
        .await
        .unwrap();
    tokio::time::sleep(S).await;
    assert_eq!(rec.starts_of("default/flaky").last(), Some(&(1, 120 * S)));

    stop.send(()).unwrap();
    run.await.unwrap();
    println!("backoff schedule: {:?}", rec.starts_of("default/flaky"));
}

#[tokio::test(start_paused = true)]
async fn one_reconcile_per_key_and_bounded_concurrency() {
    let engine = Arc::new(MemoryEngine::new());
    let rec = Recording::new(engine.clone(), 5 * S, 0);
    let (stop, run) = start(&engine, rec.clone(), 3);

    let names: Vec<String> = (0..8).map(|i| format!("app{i}")).collect();
    for name in &names {
        engine.apply_group(&spec(name), 1).await.unwrap();
    }
    // While app0 is being reconciled (5 s of work), it changes again and again.
    tokio::time::sleep(S).await;
    for replicas in 2..=6 {
        engine
            .scale_group(&spec("app0").key(), &spec("app0").revision(), replicas)
            .await
            .unwrap();
    }
    tokio::time::sleep(60 * S).await;

    assert_eq!(
        rec.peak.load(Ordering::SeqCst),
        3,
        "never above the bound, and it is used"
    );
    assert_eq!(
        rec.per_key_peak.load(Ordering::SeqCst),
        1,
        "one reconcile per key at a time"
    );
    for name in &names {
        assert!(
            !rec.starts_of(&format!("default/{name}")).is_empty(),
            "{name} reconciled"
        );
    }
    let app0 = rec.starts_of("default/app0");
    assert_eq!(
        app0,
        [(1, Duration::ZERO), (1, 10 * S)],
        "five changes during the first run coalesce into one more run after it, queued \
         behind the keys due since the start"
    );
    // 8 applications + 1 coalesced rerun, 3 at a time, 5 s each: 3 waves (0, 5 and 10 s).
    assert_eq!(rec.starts.lock().len(), 9);
    let last_start = rec.starts.lock().iter().map(|(_, _, t)| *t).max().unwrap();
    assert_eq!(last_start, 10 * S);

    stop.send(()).unwrap();
    run.await.unwrap();
    println!(
        "concurrency: peak {} of 3, per-key peak {}, {} reconciles",
        rec.peak.load(Ordering::SeqCst),
        rec.per_key_peak.load(Ordering::SeqCst),
        rec.starts.lock().len()
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_running_reconcile() {
    let engine = Arc::new(MemoryEngine::new());
    let rec = Recording::new(engine.clone(), 10 * S, 0);
    let (stop, run) = start(&engine, rec.clone(), 1);
    engine.apply_group(&spec("web"), 1).await.unwrap();
    engine.apply_group(&spec("api"), 1).await.unwrap();
    tokio::time::sleep(S).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(rec.t0.elapsed(), 10 * S);
    assert_eq!(
        rec.in_flight.load(Ordering::SeqCst),
        0,
        "finished, not cancelled"
    );
    assert_eq!(rec.starts.lock().len(), 1, "the queued key was not started");
}
