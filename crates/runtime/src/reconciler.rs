//! The reconcile function a controller runs, and what the runtime tells it.
//!
//! # Why a trait, and a closure adapter
//!
//! [`Reconciler`] is a small object-safe trait (stored as `Arc<dyn Reconciler<K, Error = E>>`)
//! rather than a bare generic `Fn(K, Ctx) -> Future`:
//! - real controllers carry state (an engine, a record store, a recorder, clients) and are
//!   named types; a trait gives them a place for it and a `Debug` that shows in logs, where a
//!   closure's captured state is invisible;
//! - the controller type stays `Controller<K, E>` whatever the reconciler is, so a host can
//!   keep several controllers in one collection and tests can swap a reconciler without
//!   changing types;
//! - it matches the other rorqual seams (object safe, `Send + Sync + Debug + 'static`,
//!   `async-trait`), and a compile-time test keeps it object safe.
//!
//! Small controllers (tests, examples) need not write a type: [`reconciler_fn`] adapts an
//! `async` closure.

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;

use crate::action::Action;

/// What the runtime tells a reconcile besides the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Context {
    /// The controller's name.
    pub controller: Arc<str>,
    /// 1 for a first try; after failures, 1 + the key's consecutive failures.
    pub attempt: u32,
}

impl Context {
    /// A context, for calling a reconciler directly in tests.
    pub fn new(controller: impl Into<Arc<str>>, attempt: u32) -> Self {
        Context {
            controller: controller.into(),
            attempt,
        }
    }
}

/// Makes the state of the object named `key` match what is wanted, and says when to look
/// again. The runtime never runs two reconciles of one key at once.
///
/// A reconcile should be idempotent (it may run again for the same state, after a resync or
/// a coalesced trigger) and read the current state itself rather than trusting the trigger.
///
/// # Retryable and permanent errors
///
/// By default every error is retryable: the controller retries the key after its
/// [`ErrorPolicy`](crate::ErrorPolicy) backoff. A reconciler whose errors classify themselves
/// (rorqual's errors have an `is_retryable()`, see ADR 001) overrides
/// [`Reconciler::is_retryable`]; a permanent error (an invalid spec, say) is then counted and
/// logged as a failure, and the key waits for a change (a trigger naming it) instead of
/// retrying what cannot succeed.
#[async_trait]
pub trait Reconciler<K>: Send + Sync + Debug + 'static {
    /// Why a reconcile failed; the controller logs it and, when
    /// [`is_retryable`](Reconciler::is_retryable), retries the key with backoff.
    type Error: Display + Debug + Send + Sync + 'static;

    /// Reconciles one key.
    async fn reconcile(&self, key: K, ctx: Context) -> Result<Action, Self::Error>;

    /// Whether retrying after `error` can help (`true` by default). When `false`, the
    /// controller does not back off and retry the key; it waits for a trigger naming it.
    fn is_retryable(&self, error: &Self::Error) -> bool {
        let _ = error;
        true
    }
}

/// Tells retryable errors from permanent ones, for [`FnReconciler::retryable_when`].
type Classifier<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

/// A [`Reconciler`] made of an async closure; see [`reconciler_fn`].
pub struct FnReconciler<F, E> {
    f: F,
    retryable: Option<Classifier<E>>,
    _error: PhantomData<fn() -> E>,
}

impl<F, E> Debug for FnReconciler<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnReconciler")
            .field("fn", &std::any::type_name::<F>())
            .field("classifies_errors", &self.retryable.is_some())
            .finish()
    }
}

impl<F, E> FnReconciler<F, E> {
    /// Classifies this reconciler's errors (its [`Reconciler::is_retryable`]): an error for
    /// which `retryable` returns `false` is permanent, and the key waits for a change instead
    /// of being retried. Without it, every error is retryable.
    ///
    /// ```
    /// use rorqual_runtime::{Action, Context, Reconciler, reconciler_fn};
    ///
    /// let r = reconciler_fn(|_key: String, _ctx: Context| async {
    ///     Err::<Action, _>(rorqual_core::Error::BadRequest("replicas must be positive".into()))
    /// })
    /// .retryable_when(rorqual_core::Error::is_retryable);
    /// assert!(!r.is_retryable(&rorqual_core::Error::BadRequest("bad".into())));
    /// ```
    #[must_use]
    pub fn retryable_when(
        mut self,
        retryable: impl Fn(&E) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retryable = Some(Arc::new(retryable));
        self
    }
}

/// Adapts an async closure `Fn(K, Context) -> Future<Output = Result<Action, E>>` into a
/// [`Reconciler`].
///
/// ```
/// use rorqual_runtime::{Action, Context, Reconciler, reconciler_fn};
///
/// let r = reconciler_fn(|key: String, _ctx: Context| async move {
///     if key.is_empty() { Err("empty key") } else { Ok(Action::await_change()) }
/// });
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(r.reconcile("web".into(), Context::new("demo", 1)).await, Ok(Action::await_change()));
/// # });
/// ```
pub fn reconciler_fn<K, E, F, Fut>(f: F) -> FnReconciler<F, E>
where
    F: Fn(K, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Display + Debug + Send + Sync + 'static,
{
    FnReconciler {
        f,
        retryable: None,
        _error: PhantomData,
    }
}

#[async_trait]
impl<K, E, F, Fut> Reconciler<K> for FnReconciler<F, E>
where
    K: Send + 'static,
    F: Fn(K, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Display + Debug + Send + Sync + 'static,
{
    type Error = E;

    async fn reconcile(&self, key: K, ctx: Context) -> Result<Action, E> {
        (self.f)(key, ctx).await
    }

    fn is_retryable(&self, error: &E) -> bool {
        self.retryable
            .as_ref()
            .is_none_or(|retryable| retryable(error))
    }
}
