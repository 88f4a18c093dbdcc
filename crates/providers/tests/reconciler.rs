//! Shell tests: the managed-resource reconciler over a fake provider and an in-memory state
//! store, with injected failures and crashes.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

mod support;

use std::sync::Arc;
use std::time::Duration;

use proptest::strategy::Strategy as _;
use rorqual_core::engine::{MemoryStateStore, StateStore};
use rorqual_providers::provider::{Operation, ProviderError};
use rorqual_providers::{
    ConditionType, DeletionPolicy, ManagementPolicy, MemorySink, Reason, ReconcileError,
    Resolution, ResourceSpec,
};
use rorqual_runtime::{Context, Reconciler};
use serde_json::json;
use support::{
    Crash, CrashingStore, Fake, PASSWORD, Shell, converge, now_clock, reconcile_or_crash, shell,
};

fn spec() -> ResourceSpec {
    ResourceSpec::new("orders", json!({"size": 1})).with_connection_secret("orders-db")
}

async fn once(shell: &Shell) -> Result<rorqual_runtime::Action, ReconcileError> {
    shell
        .reconciler
        .reconcile("orders".into(), Context::new("test", 1))
        .await
}

async fn healthy(shell: &Shell) -> bool {
    shell
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .is_some_and(|r| r.status.is_healthy())
}

#[tokio::test]
async fn creates_then_reports_ready_publishes_details_and_late_initialises() {
    let fake = Fake::new();
    let sink = Arc::new(MemorySink::new());
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        sink.clone(),
        &clock,
    );
    s.reconciler.resources().apply(spec()).await.unwrap();

    let first = once(&s).await.unwrap();
    assert_eq!(
        first.requeue_after(),
        Some(Duration::from_secs(5)),
        "look again soon after a create"
    );
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status.reason(ConditionType::Ready),
        Some(Reason::Creating)
    );
    assert_eq!(
        r.status.reason(ConditionType::Synced),
        Some(Reason::ReconcileSuccess)
    );
    assert!(
        !r.meta.create_incomplete(),
        "the create's result is recorded"
    );
    assert_eq!(
        r.meta.external_name.as_deref(),
        Some("orders"),
        "default external name"
    );

    clock.advance(Duration::from_secs(5));
    let next = once(&s).await.unwrap();
    assert_eq!(
        next.requeue_after(),
        Some(Duration::from_secs(60)),
        "poll interval"
    );
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert!(r.status.is_healthy(), "{:?}", r.status);
    assert_eq!(
        r.spec.for_provider,
        json!({"size": 1, "encoding": "UTF8"}),
        "late-initialised"
    );
    assert_eq!(r.meta.generation, 2);
    assert!(
        r.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == 2)
    );
    let details = sink.get("orders-db").unwrap();
    assert_eq!(details.get("password").unwrap().expose(), PASSWORD);
    assert_eq!(details.get("endpoint").unwrap().expose(), "fake://orders");
    assert_eq!(fake.world.lock().creates, 1);

    // Steady state writes nothing.
    let before = s.reconciler.resources().get("orders").await.unwrap();
    clock.advance(Duration::from_secs(60));
    once(&s).await.unwrap();
    assert_eq!(
        s.reconciler.resources().get("orders").await.unwrap(),
        before
    );
    let reasons: Vec<_> = s
        .recorder
        .events()
        .iter()
        .map(|e| e.reason.reason.to_string())
        .collect();
    assert_eq!(reasons, ["CreatedExternalResource", "LateInitialized"]);
}

#[tokio::test]
async fn drift_is_corrected_at_the_next_poll_with_the_diff_in_the_event() {
    let fake = Fake::new();
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        Arc::new(MemorySink::new()),
        &clock,
    );
    s.reconciler.resources().apply(spec()).await.unwrap();
    converge(&s, &clock, "orders", || fake.world.lock().creates == 1).await;
    converge(&s, &clock, "orders", || true).await;

    fake.world.lock().resources.get_mut("orders").unwrap()["size"] = json!(4);
    clock.advance(Duration::from_secs(60));
    once(&s).await.unwrap();
    assert_eq!(fake.world.lock().resources["orders"]["size"], json!(1));
    assert_eq!(fake.world.lock().updates, 1);
    let event = s.recorder.events().pop().unwrap();
    assert_eq!(event.reason.reason, "UpdatedExternalResource");
    assert_eq!(
        event.message,
        "updated external resource `orders`: size: 4 -> 1"
    );

    // A spec change is an update too, and the generation is observed.
    let mut changed = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap()
        .spec;
    changed.for_provider["size"] = json!(8);
    let applied = s.reconciler.resources().apply(changed).await.unwrap();
    once(&s).await.unwrap();
    assert_eq!(fake.world.lock().resources["orders"]["size"], json!(8));
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status.observed_generation, applied.meta.generation);
}

#[tokio::test]
async fn deletes_then_releases_and_unpublishes() {
    let fake = Fake::new();
    let sink = Arc::new(MemorySink::new());
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        sink.clone(),
        &clock,
    );
    s.reconciler.resources().apply(spec()).await.unwrap();
    converge(&s, &clock, "orders", || fake.world.lock().creates == 1).await;
    clock.advance(Duration::from_secs(31));
    assert!(s.reconciler.resources().delete("orders").await.unwrap());

    let a = once(&s).await.unwrap();
    assert_eq!(a.requeue_after(), Some(Duration::from_secs(5)));
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status.reason(ConditionType::Ready),
        Some(Reason::Deleting)
    );
    assert!(fake.world.lock().resources.is_empty());
    assert!(once(&s).await.unwrap().is_forget());
    assert!(
        s.reconciler
            .resources()
            .get("orders")
            .await
            .unwrap()
            .is_none()
    );
    assert!(sink.get("orders-db").is_none(), "details unpublished");
    assert!(
        once(&s).await.unwrap().is_forget(),
        "a missing record is forgotten"
    );
}

#[tokio::test]
async fn orphan_and_observe_only_leave_the_external_resource() {
    for (case, spec) in [
        (
            "orphan",
            spec().with_deletion_policy(DeletionPolicy::Orphan),
        ),
        (
            "no Delete policy",
            spec().with_policies([ManagementPolicy::Observe, ManagementPolicy::Create]),
        ),
    ] {
        let fake = Fake::new();
        let clock = now_clock();
        let s = shell(
            &fake,
            Arc::new(MemoryStateStore::new()),
            Arc::new(MemorySink::new()),
            &clock,
        );
        s.reconciler.resources().apply(spec).await.unwrap();
        converge(&s, &clock, "orders", || fake.world.lock().creates == 1).await;
        s.reconciler.resources().delete("orders").await.unwrap();
        let observes = fake.world.lock().observes;
        assert!(once(&s).await.unwrap().is_forget(), "{case}");
        assert_eq!(
            fake.world.lock().observes,
            observes,
            "{case}: released without observing"
        );
        assert!(fake.world.lock().resources.contains_key("orders"), "{case}");
        assert!(
            s.reconciler
                .resources()
                .get("orders")
                .await
                .unwrap()
                .is_none(),
            "{case}"
        );
    }
}

#[tokio::test]
async fn observe_only_imports_an_existing_resource_and_reports_a_missing_one() {
    let fake = Fake::new();
    fake.world.lock().resources.insert(
        "legacy_orders".into(),
        json!({"size": 3, "encoding": "LATIN1"}),
    );
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        Arc::new(MemorySink::new()),
        &clock,
    );
    let import = ResourceSpec::new("orders", json!({}))
        .with_external_name("legacy_orders")
        .with_policies([ManagementPolicy::Observe]);
    s.reconciler.resources().apply(import).await.unwrap();
    once(&s).await.unwrap();
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert!(r.status.is_healthy());
    assert_eq!(
        r.status.at_provider,
        Some(json!({"size": 3, "encoding": "LATIN1"}))
    );
    assert_eq!(
        r.spec.for_provider,
        json!({}),
        "no LateInitialize policy: the spec is kept"
    );
    assert_eq!(fake.world.lock().creates, 0);

    fake.world.lock().resources.clear();
    let err = once(&s).await.unwrap_err();
    assert!(
        matches!(err, ReconcileError::ExternalMissing { .. }),
        "{err}"
    );
    assert!(
        err.is_retryable(),
        "someone may create it; retry with backoff"
    );
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    let synced = r.status.condition(ConditionType::Synced).unwrap();
    assert_eq!(synced.reason, Reason::ReconcileError);
    assert!(
        synced.message.contains("`legacy_orders` does not exist"),
        "{}",
        synced.message
    );
    assert_eq!(fake.world.lock().creates, 0);
}

#[tokio::test]
async fn errors_are_reported_on_synced_and_classified() {
    let fake = Fake::new();
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        Arc::new(MemorySink::new()),
        &clock,
    );
    s.reconciler.resources().apply(spec()).await.unwrap();

    fake.fail_next(
        Operation::Create,
        ProviderError::unavailable("connection refused by 127.0.0.1:5432"),
    );
    let err = once(&s).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "managed resource `orders`: create failed: connection refused by 127.0.0.1:5432"
    );
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status.reason(ConditionType::Synced),
        Some(Reason::ReconcileError)
    );
    assert_eq!(
        r.status.reason(ConditionType::Ready),
        Some(Reason::Creating)
    );
    assert!(r.meta.create_failed_at_ms.is_some() && !r.meta.create_incomplete());

    fake.fail_next(
        Operation::Connect,
        ProviderError::rejected("password authentication failed for user admin"),
    );
    let err = once(&s).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(!s.reconciler.is_retryable(&err));

    once(&s).await.unwrap();
    assert_eq!(
        fake.world.lock().creates,
        1,
        "created once the service answers"
    );

    // Invalid parameters: permanent, with the path, and no call is made.
    let observes = fake.world.lock().observes;
    let mut bad = spec();
    bad.for_provider = json!({"size": -1});
    s.reconciler.resources().apply(bad).await.unwrap();
    let err = once(&s).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("forProvider.size: must be a positive integer, got -1"),
        "{err}"
    );
    assert_eq!(fake.world.lock().observes, observes);
}

#[tokio::test]
async fn paused_resources_are_not_touched() {
    let fake = Fake::new();
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        Arc::new(MemorySink::new()),
        &clock,
    );
    s.reconciler
        .resources()
        .apply(spec().with_paused(true))
        .await
        .unwrap();
    let a = once(&s).await.unwrap();
    assert_eq!(a, rorqual_runtime::Action::await_change());
    assert_eq!(fake.world.lock().observes, 0);
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status.reason(ConditionType::Synced),
        Some(Reason::ReconcilePaused)
    );
}

#[tokio::test]
async fn a_missing_resource_just_created_is_requeued_not_recreated() {
    let fake = Fake::new();
    fake.world.lock().hide_new_for = 3;
    let clock = now_clock();
    let s = shell(
        &fake,
        Arc::new(MemoryStateStore::new()),
        Arc::new(MemorySink::new()),
        &clock,
    );
    s.reconciler.resources().apply(spec()).await.unwrap();
    once(&s).await.unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(5));
        let a = once(&s).await.unwrap();
        assert_eq!(a.requeue_after(), Some(Duration::from_secs(5)));
    }
    assert_eq!(fake.world.lock().creates, 1);
    clock.advance(Duration::from_secs(5));
    once(&s).await.unwrap();
    assert!(healthy(&s).await);
    assert_eq!(fake.world.lock().creates, 1);
}

/// A crash between create and recording its result, with deterministic names: a new shell
/// over the same store finds the resource under its name: no duplicate, no leak.
#[tokio::test]
async fn crash_after_create_with_deterministic_names_converges_without_duplicate() {
    let fake = Fake::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let sink = Arc::new(MemorySink::new());
    let clock = now_clock();
    {
        let s = shell(&fake, store.clone(), sink.clone(), &clock);
        s.reconciler.resources().apply(spec()).await.unwrap();
        fake.crash_at(Crash::After(Operation::Create));
        assert!(
            reconcile_or_crash(&s, "orders", &[&fake.crashed])
                .await
                .is_none(),
            "crashed"
        );
    } // the shell is dropped: the process died
    let s = shell(&fake, store, sink, &clock);
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert!(
        r.meta.create_incomplete(),
        "the pending marker is the newest"
    );
    converge(&s, &clock, "orders", || false).await;
    assert!(healthy(&s).await);
    assert_eq!(fake.world.lock().creates, 1);
    assert_eq!(fake.world.lock().resources.len(), 1);
}

/// With names the service chooses, the same crash is refused until a human resolves it;
/// then it converges on the one resource that was created.
#[tokio::test]
async fn crash_after_create_with_generated_names_waits_for_a_human() {
    let fake = Fake::with_generated_names();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let clock = now_clock();
    {
        let s = shell(&fake, store.clone(), Arc::new(MemorySink::new()), &clock);
        s.reconciler.resources().apply(spec()).await.unwrap();
        fake.crash_at(Crash::After(Operation::Create));
        assert!(
            reconcile_or_crash(&s, "orders", &[&fake.crashed])
                .await
                .is_none()
        );
    }
    let s = shell(&fake, store, Arc::new(MemorySink::new()), &clock);
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        let err = once(&s).await.unwrap_err();
        assert!(matches!(err, ReconcileError::CreatePending { .. }), "{err}");
        assert!(!err.is_retryable(), "waits for a change, not a retry");
    }
    assert_eq!(fake.world.lock().creates, 1, "never created twice");
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.status.reason(ConditionType::Synced),
        Some(Reason::ReconcileError)
    );
    assert_eq!(s.recorder.events()[0].reason.reason, "CreatePending");

    let created = fake.world.lock().resources.keys().next().cloned().unwrap();
    s.reconciler
        .resources()
        .resolve_pending_create(
            "orders",
            Resolution::Created {
                external_name: created.clone(),
            },
        )
        .await
        .unwrap();
    converge(&s, &clock, "orders", || false).await;
    assert!(healthy(&s).await);
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.meta.external_name.as_deref(), Some(created.as_str()));
    assert_eq!(fake.world.lock().creates, 1);

    let err = s
        .reconciler
        .resources()
        .resolve_pending_create("orders", Resolution::NotCreated)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no pending create"), "{err}");
}

/// A crash right after the pending marker is written (before create): with generated names
/// a human says nothing was created, and it is created once.
#[tokio::test]
async fn crash_before_create_resolved_as_not_created_creates_once() {
    let fake = Fake::with_generated_names();
    let crashing = Arc::new(CrashingStore::new());
    let store: Arc<dyn StateStore> = crashing.clone();
    let clock = now_clock();
    {
        let s = shell(&fake, store.clone(), Arc::new(MemorySink::new()), &clock);
        let user = rorqual_providers::ManagedResources::new(
            crashing.inner.clone(),
            "FakeDatabase",
            Arc::new(clock.clone()),
        );
        user.apply(spec()).await.unwrap();
        // Writes of the first reconcile: the external name, then the pending marker.
        crashing.crash_at_write(2, true);
        assert!(
            reconcile_or_crash(&s, "orders", &[&crashing.crashed])
                .await
                .is_none()
        );
    }
    assert_eq!(fake.world.lock().creates, 0);
    let s = shell(&fake, store, Arc::new(MemorySink::new()), &clock);
    assert!(matches!(
        once(&s).await,
        Err(ReconcileError::CreatePending { .. })
    ));
    s.reconciler
        .resources()
        .resolve_pending_create("orders", Resolution::NotCreated)
        .await
        .unwrap();
    converge(&s, &clock, "orders", || false).await;
    assert!(healthy(&s).await);
    assert_eq!(fake.world.lock().creates, 1);
}

/// Kill the reconciler at every write of the state store (before and after it lands) and
/// after every provider call, across create, update and delete: each time a new shell over
/// the same store converges, nothing is created twice, and nothing is left behind.
#[tokio::test]
async fn every_crash_point_converges_without_duplicates_or_leaks() {
    for generated in [false, true] {
        let (crashes, writes) = lifecycle(generated, &[]).await;
        assert_eq!(crashes, 0);
        assert!(
            writes >= 8,
            "the lifecycle writes its record {writes} times"
        );
        for n in 1..=writes {
            for after in [false, true] {
                let (crashes, _) = lifecycle(generated, &[Point::Write(n, after)]).await;
                assert_eq!(crashes, 1, "write {n} (after: {after}) was not reached");
            }
        }
        for op in [Operation::Create, Operation::Update, Operation::Delete] {
            let (crashes, _) = lifecycle(generated, &[Point::After(op)]).await;
            assert_eq!(crashes, 1, "{op} was not reached");
        }
    }
}

/// Where a lifecycle crashes.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// At the `n`-th store write after the previous crash (or the start), after the write
    /// landed or before.
    Write(u32, bool),
    /// After a provider call took effect.
    After(Operation),
}

fn arm(point: Option<&Point>, fake: &Fake, store: &CrashingStore) {
    store.disarm();
    *fake.crash.lock() = None;
    match point {
        Some(Point::Write(n, after)) => store.crash_at_write(*n, *after),
        Some(Point::After(op)) => fake.crash_at(Crash::After(*op)),
        None => store.crash_at_write(0, false), // counts writes, never crashes
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Several crashes in one lifecycle, anywhere: it still converges with one create and
    /// nothing left behind.
    #[test]
    fn repeated_crashes_converge(
        generated in proptest::bool::ANY,
        points in proptest::collection::vec(
            proptest::prop_oneof![
                (1u32..12, proptest::bool::ANY).prop_map(|(n, after)| Point::Write(n, after)),
                proptest::sample::select(vec![Operation::Create, Operation::Update, Operation::Delete]).prop_map(Point::After),
            ],
            1..5,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(lifecycle(generated, &points));
    }
}

/// Runs apply → Ready → spec change → in sync → delete → gone, crashing at each of `points`
/// in turn (a point the lifecycle never reaches is skipped by the end). Returns how many
/// crashes happened and how many writes the reconcilers made since the last one. With
/// `generated` names, a refused pending create is resolved as a human would: by looking for
/// the resource in the service.
async fn lifecycle(generated: bool, points: &[Point]) -> (usize, u32) {
    let fake = if generated {
        Fake::with_generated_names()
    } else {
        Fake::new()
    };
    let crashing = Arc::new(CrashingStore::new());
    let store: Arc<dyn StateStore> = crashing.clone();
    let sink = Arc::new(MemorySink::new());
    let clock = now_clock();
    let mut s = shell(&fake, store.clone(), sink.clone(), &clock);
    let user = rorqual_providers::ManagedResources::new(
        crashing.inner.clone(),
        "FakeDatabase",
        Arc::new(clock.clone()),
    );
    user.apply(spec()).await.unwrap();
    let mut crashes = 0;
    arm(points.first(), &fake, &crashing);
    let mut stage = 0;
    let ctx = format!("generated names {generated}, crash points {points:?}");
    for _ in 0..200 {
        let r = user.get("orders").await.unwrap();
        match stage {
            0 if r.as_ref().is_some_and(|r| r.status.is_healthy()) => {
                let mut changed = r.unwrap().spec;
                changed.for_provider["size"] = json!(2);
                user.apply(changed).await.unwrap();
                stage = 1;
                continue;
            }
            1 if r.as_ref().is_some_and(|r| {
                r.status.is_healthy() && r.status.observed_generation == r.meta.generation
            }) && fake
                .world
                .lock()
                .resources
                .values()
                .all(|v| v["size"] == json!(2)) =>
            {
                clock.advance(Duration::from_secs(31));
                user.delete("orders").await.unwrap();
                stage = 2;
                continue;
            }
            2 if r.is_none() => break,
            _ => {}
        }
        match reconcile_or_crash(&s, "orders", &[&fake.crashed, &crashing.crashed]).await {
            None => {
                crashes += 1;
                arm(points.get(crashes), &fake, &crashing);
                drop(s);
                s = shell(&fake, store.clone(), sink.clone(), &clock);
            }
            Some(Ok(a)) => clock.advance(a.requeue_after().unwrap_or(Duration::from_secs(1))),
            Some(Err(ReconcileError::CreatePending { .. })) if generated => {
                let found = fake.world.lock().resources.keys().next().cloned();
                let resolution = match found {
                    Some(external_name) => Resolution::Created { external_name },
                    None => Resolution::NotCreated,
                };
                user.resolve_pending_create("orders", resolution)
                    .await
                    .unwrap();
            }
            Some(Err(e)) => {
                assert!(e.is_retryable(), "{ctx}: {e}");
                clock.advance(Duration::from_secs(1));
            }
        }
    }
    {
        let w = fake.world.lock();
        assert_eq!(w.creates, 1, "{ctx}: created {} times", w.creates);
        assert_eq!(stage, 2, "{ctx}: did not finish");
        assert!(w.resources.is_empty(), "{ctx}: leaked {:?}", w.resources);
    }
    assert!(
        crashing.inner.list("providers/").await.unwrap().is_empty(),
        "{ctx}: record left"
    );
    assert!(sink.names().is_empty(), "{ctx}: details left");
    (crashes, crashing.writes())
}

/// Another writer changes the record between the reconciler's read and its write: the
/// reconciler requeues without an error, and a lost write of the pending marker creates
/// nothing.
#[tokio::test]
async fn conflicts_requeue_silently_and_never_create_without_the_marker() {
    for (write, what) in [(1, "external name"), (2, "create-pending marker")] {
        let fake = Fake::new();
        let racing = Arc::new(CrashingStore::new());
        let clock = now_clock();
        let s = shell(&fake, racing.clone(), Arc::new(MemorySink::new()), &clock);
        s.reconciler.resources().apply(spec()).await.unwrap();
        racing.race_at_write(write);
        let a = once(&s).await.unwrap();
        assert_eq!(
            a.requeue_after(),
            Some(rorqual_providers::reconciler::CONFLICT_REQUEUE),
            "{what}"
        );
        assert_eq!(fake.world.lock().creates, 0, "{what}: nothing created");
        let r = s
            .reconciler
            .resources()
            .get("orders")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            r.status.reason(ConditionType::Synced),
            Some(Reason::ReconcileError),
            "{what}"
        );
        assert!(!r.meta.create_incomplete(), "{what}");
        converge(&s, &clock, "orders", || false).await;
        assert_eq!(fake.world.lock().creates, 1, "{what}");
    }
}

/// A create that fails and is retried within the same millisecond, then crashes: the
/// markers still say the second attempt's result was never recorded.
#[tokio::test]
async fn markers_order_attempts_within_one_millisecond() {
    let fake = Fake::with_generated_names();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let clock = now_clock();
    {
        let s = shell(&fake, store.clone(), Arc::new(MemorySink::new()), &clock);
        s.reconciler.resources().apply(spec()).await.unwrap();
        fake.fail_next(Operation::Create, ProviderError::unavailable("busy"));
        assert!(once(&s).await.is_err());
        fake.crash_at(Crash::After(Operation::Create));
        assert!(
            reconcile_or_crash(&s, "orders", &[&fake.crashed])
                .await
                .is_none()
        );
    }
    let s = shell(&fake, store, Arc::new(MemorySink::new()), &clock);
    let r = s
        .reconciler
        .resources()
        .get("orders")
        .await
        .unwrap()
        .unwrap();
    assert!(r.meta.create_incomplete(), "{:?}", r.meta);
    assert!(matches!(
        once(&s).await,
        Err(ReconcileError::CreatePending { .. })
    ));
    assert_eq!(fake.world.lock().creates, 1);
}

/// The fake passes the provider contract; a provider that breaks it fails with the step.
#[cfg(feature = "testing")]
#[tokio::test]
async fn the_fake_passes_the_conformance_checks_and_a_broken_one_does_not() {
    use rorqual_providers::conformance::check;
    let (a, b) = (json!({"size": 1}), json!({"size": 2}));
    check(&Fake::new(), "orders", &a, &b).await.unwrap();
    check(&Fake::with_generated_names(), "orders", &a, &b)
        .await
        .unwrap();

    let broken = Fake {
        already_exists_errors: true,
        ..Fake::new()
    };
    let err = check(&broken, "orders", &a, &b).await.unwrap_err();
    assert_eq!(err.step, "second create", "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
}
