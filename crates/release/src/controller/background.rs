//! Work the controller does beside its reconciles: notifications (in order per rollout),
//! approval cleanup and measurements, whose results come back through the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::task::JoinHandle;

use super::{EventReason, Inner};
use crate::analysis::{CompletedMeasurement, PendingMeasurement};
use crate::approval::{ApprovalError, ApprovalRequest};
use crate::notify::Notification;
use rorqual_core::model::{AppKey, Revision};

/// A measurement in flight: the rollout, the run (its key and start), the metric and its
/// sequence number.
type InFlight = (AppKey, String, SystemTime, String, u64);

/// A measurement that came back: the run's key and start, and the result.
pub(super) type Measured = (String, SystemTime, CompletedMeasurement);

/// The controller's background work.
#[derive(Debug, Default)]
pub(super) struct Background {
    /// The last notification task per rollout: the next one waits for it, so a rollout's
    /// notifications arrive in order while different rollouts' run side by side.
    last_notice: parking_lot::Mutex<HashMap<AppKey, JoinHandle<()>>>,
    in_flight: parking_lot::Mutex<HashSet<InFlight>>,
    measured: parking_lot::Mutex<HashMap<AppKey, Vec<Measured>>>,
    running: Arc<AtomicUsize>,
}

/// Counts a background task while it runs.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Running(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A measurement in flight. Dropped when it ends — with a result, or cancelled or panicking
/// without one — it leaves the in-flight set and wakes its rollout, which measures again if
/// no result came back.
struct Flight {
    inner: Arc<Inner>,
    id: InFlight,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.inner.background.in_flight.lock().remove(&self.id);
        self.inner.trigger.trigger(self.id.0.clone());
    }
}

impl Background {
    pub(super) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Sends a notification after the rollout's earlier ones.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn notify(
        &self,
        inner: &Arc<Inner>,
        app: &AppKey,
        revision: &Revision,
        step: Option<usize>,
        reason: EventReason,
        message: &str,
        approval: Option<ApprovalRequest>,
    ) {
        let Some(notifier) = inner.notifier.clone() else {
            return;
        };
        let mut note = Notification::new(
            app.clone(),
            revision.clone(),
            reason.as_str(),
            message,
            inner.clock.now(),
        );
        note.step = step;
        if let Some(req) = approval {
            note = note.with_approval(req);
        }
        let guard = Running::start(&self.running);
        let mut last = self.last_notice.lock();
        let previous = last.remove(app);
        let app_name = app.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            if let Err(err) = notifier.notify(&note).await {
                tracing::warn!(app = %app_name, error = %err, "notification failed");
            }
        });
        last.insert(app.clone(), task);
        last.retain(|_, task| !task.is_finished());
    }

    /// Withdraws `revision`'s approval requests (cleanup: decisions are keyed by attempt).
    pub(super) fn withdraw(&self, inner: &Arc<Inner>, app: &AppKey, revision: &Revision) {
        let gate = inner.approvals.clone();
        let (app, revision) = (app.clone(), revision.clone());
        let guard = Running::start(&self.running);
        tokio::spawn(async move {
            let _guard = guard;
            match gate.withdraw(&app, &revision).await {
                Ok(()) | Err(ApprovalError::Unsupported(_)) => {}
                Err(err) => {
                    tracing::warn!(app = %app, revision = %revision, error = %err, "withdrawing approval requests failed");
                }
            }
        });
    }

    /// Takes `pending` in the background unless it is already in flight; the result wakes the
    /// rollout.
    pub(super) fn measure(
        &self,
        inner: &Arc<Inner>,
        app: &AppKey,
        (key, started): (&str, SystemTime),
        pending: PendingMeasurement,
    ) {
        let id = (
            app.clone(),
            key.to_owned(),
            started,
            pending.metric().to_owned(),
            pending.seq(),
        );
        if !self.in_flight.lock().insert(id.clone()) {
            return;
        }
        let key = key.to_owned();
        let guard = Running::start(&self.running);
        let flight = Flight {
            inner: inner.clone(),
            id,
        };
        tokio::spawn(async move {
            let _guard = guard;
            let inner = flight.inner.clone();
            let done = pending.measure(inner.providers.as_ref()).await;
            inner
                .background
                .measured
                .lock()
                .entry(flight.id.0.clone())
                .or_default()
                .push((key, started, done));
            drop(flight);
        });
    }

    /// The measurements that came back for `app`.
    pub(super) fn take_measured(&self, app: &AppKey) -> Vec<Measured> {
        self.measured.lock().remove(app).unwrap_or_default()
    }

    /// Gives back measurements a failed reconcile took, for the next one.
    pub(super) fn put_back(&self, app: &AppKey, measured: Vec<Measured>) {
        if !measured.is_empty() {
            self.measured
                .lock()
                .entry(app.clone())
                .or_default()
                .extend(measured);
        }
    }

    /// Stops long measurements of ended runs (a program still running for a metric).
    pub(super) fn terminate(
        &self,
        inner: &Arc<Inner>,
        app: &AppKey,
        running: Vec<crate::analysis::RunningMeasurement>,
    ) {
        for m in running {
            let inner = inner.clone();
            let app = app.clone();
            let guard = Running::start(&self.running);
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(err) = m.terminate(inner.providers.as_ref()).await {
                    tracing::warn!(app = %app, metric = m.metric(), error = %err, "stopping a measurement failed");
                }
            });
        }
    }
}
