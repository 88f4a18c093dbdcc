//! Builds a [`RolloutController`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{ControllerError, Inner, RolloutController, background::Background};
use crate::analysis::{MetricProvider, Providers};
use crate::approval::{ApprovalGate, Approvals};
use crate::notify::Notifier;
use crate::registry::StrategyRegistry;
use crate::traffic::{ReplicaRatio, TrafficRouter};
use rorqual_core::clock::{Clock, SystemClock};
use rorqual_core::engine::{Engine, StateStore};
use rorqual_runtime::triggers::{Triggers, app_of};

/// Builds a [`RolloutController`].
#[derive(Debug)]
#[must_use]
pub struct RolloutControllerBuilder {
    engine: Arc<dyn Engine>,
    store: Option<Arc<dyn StateStore>>,
    router: Arc<dyn TrafficRouter>,
    approvals: Option<Arc<dyn ApprovalGate>>,
    notifier: Option<Arc<dyn Notifier>>,
    providers: Arc<dyn MetricProvider>,
    registry: StrategyRegistry,
    clock: Arc<dyn Clock>,
    cluster: Option<String>,
    resync: Duration,
    progress_check: Duration,
    concurrency: usize,
}

impl RolloutControllerBuilder {
    pub(super) fn new(engine: Arc<dyn Engine>) -> Self {
        RolloutControllerBuilder {
            engine,
            store: None,
            router: Arc::new(ReplicaRatio),
            approvals: None,
            notifier: None,
            providers: Arc::new(Providers::with_defaults()),
            registry: StrategyRegistry::with_builtins(),
            clock: Arc::new(SystemClock),
            cluster: None,
            resync: Duration::from_secs(300),
            progress_check: Duration::from_secs(2),
            concurrency: 32,
        }
    }

    /// Where rollout records live (default: the engine's state store). A rollout whose state
    /// must outlive one cluster keeps it here.
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The traffic router (default [`ReplicaRatio`]).
    pub fn router(mut self, router: Arc<dyn TrafficRouter>) -> Self {
        self.router = router;
        self
    }

    /// The approval gate (default: the built-in [`Approvals`] over the controller's state
    /// store, so approvals survive a restart).
    pub fn approvals(mut self, approvals: Arc<dyn ApprovalGate>) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// A notifier for step, pause, approval, abort and healthy notifications.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The analysis metric providers (default [`Providers::with_defaults`]: `web` and
    /// `prometheus` as compiled in; the `command` provider only when a host opts in).
    pub fn providers(mut self, providers: Arc<dyn MetricProvider>) -> Self {
        self.providers = providers;
        self
    }

    /// The strategy registry (default [`StrategyRegistry::with_builtins`]).
    pub fn strategies(mut self, registry: StrategyRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// The clock (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The cluster named in approval requests.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// How often every rollout is looked at even without a change (default 5 min).
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// How soon a rollout waiting for instances to start or stop is looked at again
    /// (default 2 s; engine events usually wake it sooner).
    pub fn progress_check(mut self, every: Duration) -> Self {
        self.progress_check = every;
        self
    }

    /// How many rollouts reconcile at once (default 32).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Builds the controller and loads every rollout persisted in the state store (a restarted
    /// controller resumes them where they stopped). Call [`RolloutController::run`] to drive
    /// them.
    pub async fn build(self) -> Result<RolloutController, ControllerError> {
        let (events, _) = broadcast::channel(1024);
        let store = self.store.unwrap_or_else(|| self.engine.state_store());
        let mut triggers = Triggers::new().engine_events(&*self.engine, app_of);
        let trigger = triggers.sender();
        let (approvals, approvals_api) = match self.approvals {
            Some(gate) => (gate, None),
            None => {
                let api = Approvals::with_store(store.clone());
                (Arc::new(api.clone()) as Arc<dyn ApprovalGate>, Some(api))
            }
        };
        let controller = RolloutController {
            inner: Arc::new(Inner {
                engine: self.engine,
                store,
                router: self.router,
                approvals,
                approvals_api,
                notifier: self.notifier,
                providers: self.providers,
                registry: self.registry,
                resolved: Default::default(),
                clock: self.clock,
                cluster: self.cluster,
                resync: self.resync,
                progress_check: self.progress_check,
                concurrency: self.concurrency,
                rollouts: parking_lot::Mutex::new(Default::default()),
                triggers: parking_lot::Mutex::new(Some(triggers)),
                trigger,
                events,
                background: Background::default(),
                no_preview: Default::default(),
            }),
        };
        controller.load().await?;
        Ok(controller)
    }
}
