//! rorqual-runtime: the controller runtime every rorqual controller runs on, on the model of
//! kube-runtime.
//!
//! A controller is a named [`Reconciler`] (make the object named by a key match what is
//! wanted, say when to look again) run by a [`Controller`]:
//!
//! - [`delay_queue`]: a keyed delay queue ([`KeyedDelayQueue`]): one entry per key, the earlier
//!   deadline wins, depth and oldest-due age;
//! - [`controller`]: the runner: bounded concurrency, never two reconciles of one key at once,
//!   triggers during a reconcile coalesced into one more run, graceful shutdown;
//! - [`action`]: what a reconcile returns ([`Action::requeue`], [`Action::await_change`],
//!   [`Action::forget`] when the object is gone);
//! - [`error_policy`]: per-key exponential backoff after retryable errors, reset on success;
//! - [`triggers`]: keys from engine events, extra trigger streams and verbs, start keys, and a
//!   slow periodic resync;
//! - [`record`]: typed records persisted by compare-and-swap in a
//!   [`StateStore`](rorqual_core::engine::StateStore);
//! - [`recorder`]: event recorders (tracing-backed and in-memory);
//! - [`metrics`]: Prometheus metrics labelled by controller, into a registry the host owns.
//!
//! A controller remembers every key a trigger has named, to resync it, and the backoff streak
//! of every key that is failing. A reconcile that finds its object deleted returns
//! [`Action::forget`]: the key leaves the resync set and its backoff state is dropped, so a
//! controller whose objects come and go keeps state only for the objects that exist. An error
//! that [`Reconciler::is_retryable`] calls permanent is not retried with backoff: the key
//! waits for a change (see [`controller`]).
//!
//! Each reconcile runs in a `tracing` span `reconcile` with the controller's name, the key and
//! the attempt number.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use rorqual_core::engine::Engine;
//! use rorqual_core::memory::MemoryEngine;
//! use rorqual_core::model::{AppKey, AppSpec, ContainerSpec};
//! use rorqual_runtime::triggers::{Triggers, app_of};
//! use rorqual_runtime::{Action, Context, Controller, reconciler_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let engine = Arc::new(MemoryEngine::new());
//! let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
//!
//! // Reconcile each application when the engine reports something about it.
//! let reconciler = {
//!     let engine = engine.clone();
//!     reconciler_fn(move |app: AppKey, _ctx: Context| {
//!         let (engine, seen_tx) = (engine.clone(), seen_tx.clone());
//!         async move {
//!             let groups = engine.groups(&app).await?;
//!             let _ = seen_tx.send((app, groups.len()));
//!             Ok::<_, rorqual_core::Error>(Action::await_change())
//!         }
//!     })
//! };
//! let controller = Controller::builder("inventory", Arc::new(reconciler))
//!     .concurrency(4)
//!     .triggers(Triggers::new().engine_events(&*engine, app_of).resync(Duration::from_secs(300)))
//!     .build()
//!     .unwrap();
//!
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let run = tokio::spawn(controller.run(async move { let _ = stopped.await; }));
//!
//! let spec = AppSpec::new("web", vec![ContainerSpec::new("app", ["web"])]);
//! engine.apply_group(&spec, 2).await.unwrap(); // emits events about default/web
//! assert_eq!(seen.recv().await, Some((spec.key(), 1)));
//!
//! stop.send(()).unwrap(); // graceful shutdown: running reconciles finish first
//! run.await.unwrap();
//! # });
//! ```

pub mod action;
pub mod controller;
pub mod delay_queue;
pub mod error_policy;
pub mod metrics;
pub mod reconciler;
pub mod record;
pub mod recorder;
pub mod triggers;

pub use action::Action;
pub use controller::{BuildError, Controller, ControllerBuilder, ObjectKey};
pub use delay_queue::KeyedDelayQueue;
pub use error_policy::{ErrorPolicy, ErrorPolicyError};
pub use metrics::ControllerMetrics;
pub use reconciler::{Context, FnReconciler, Reconciler, reconciler_fn};
pub use record::{Record, RecordError, RecordStore};
pub use recorder::{MemoryRecorder, Reason, Recorder, TracingRecorder};
pub use triggers::{TriggerSender, Triggers};

#[cfg(test)]
mod object_safety {
    use std::sync::Arc;

    use super::*;

    fn assert_seam<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}

    #[test]
    fn traits_are_object_safe_send_and_sync() {
        assert_seam::<dyn Reconciler<String, Error = std::io::Error>>();
        assert_seam::<dyn Recorder>();
        let _: Arc<dyn Recorder> = Arc::new(TracingRecorder::new());
        let _: Arc<dyn Recorder> = Arc::new(MemoryRecorder::new());
        let r = reconciler_fn(|_key: String, _ctx: Context| async {
            Ok::<_, std::io::Error>(Action::await_change())
        });
        let _: Arc<dyn Reconciler<String, Error = std::io::Error>> = Arc::new(r);
    }
}
