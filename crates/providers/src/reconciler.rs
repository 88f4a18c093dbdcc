//! The managed-resource reconciler: the effects shell around [`decision`](crate::decision),
//! run by a `rorqual-runtime` [`Controller`](rorqual_runtime::Controller) keyed by managed
//! resource name.
//!
//! One reconcile reads the record, asks [`preflight`], connects (within
//! [`Timing::connect_timeout`]) and observes, asks [`plan`], and carries the plan out:
//! publishes connection details, persists late-initialised parameters, and makes at most one
//! create, update or delete call. Every write of the record is a compare-and-swap against the
//! version read; a conflict (someone changed the resource meanwhile) requeues the key
//! without reporting an error, and the next reconcile starts from the fresh record.
//!
//! # Creates survive crashes
//!
//! Before calling create, the reconciler records a create-pending marker (compare-and-swap);
//! after it, a succeeded or failed marker (re-read and re-applied on conflicts, retried on
//! store errors). A process that dies in between leaves the pending marker newest. The next
//! reconcile then:
//! - for a provider with deterministic external names (the default), observes as usual: the
//!   resource is found under its name if the create happened, created if it did not, so
//!   nothing is duplicated or leaked;
//! - otherwise refuses to create again and reports `Synced` false until a human says what
//!   happened with [`ManagedResources::resolve_pending_create`].
//!
//! Errors are reported on `Synced` with their message, recorded as warning events, and
//! returned to the controller, which retries retryable ones with its per-key exponential
//! backoff (1 s doubling to 60 s by default, the runtime's [`ErrorPolicy`]) and leaves
//! permanent ones (an invalid spec, a pending create) until the resource changes.
//!
//! [`ErrorPolicy`]: rorqual_runtime::ErrorPolicy

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rorqual_core::clock::{Clock, SystemClock};
use rorqual_core::engine::StateStore;
use rorqual_core::model::{FieldError, ValidationErrors};
use rorqual_runtime::{
    Action, Context, Reason as EventReason, Reconciler, RecordError, Recorder, TracingRecorder,
};

use crate::condition::ResourceStatus;
use crate::decision::{
    Call, Plan, PlanFailure, Preflight, Timing, TimingError, failed, plan, preflight,
};
use crate::error::ReconcileError;
use crate::provider::{ExternalClient, ExternalRef, Operation, Provider, ProviderError};
use crate::resource::ManagedResource;
use crate::sink::{ConnectionSink, MemorySink};
use crate::store::{ManagedResources, Write};

/// How long a key waits after losing a compare-and-swap before it is reconciled again.
pub const CONFLICT_REQUEUE: Duration = Duration::from_secs(1);

/// How many times the result of a create is written before giving up (store errors).
const RESULT_WRITE_ATTEMPTS: u32 = 5;

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, crate::decision::millis)
}

/// Builds a [`ManagedReconciler`]; see [`ManagedReconciler::builder`].
#[derive(Debug)]
#[must_use]
pub struct ManagedReconcilerBuilder {
    provider: Arc<dyn Provider>,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn ConnectionSink>,
    recorder: Arc<dyn Recorder>,
    clock: Arc<dyn Clock>,
    timing: Timing,
}

impl ManagedReconcilerBuilder {
    /// Where connection details are published (a [`MemorySink`] by default).
    pub fn sink(mut self, sink: Arc<dyn ConnectionSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Where events go (a [`TracingRecorder`] by default).
    pub fn recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// The clock for timestamps and the creation grace period (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The poll interval, grace period and waits ([`Timing::default`]).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Checks the timing and builds the reconciler.
    ///
    /// # Errors
    ///
    /// [`TimingError`] when a duration that must be positive is zero.
    pub fn build(self) -> Result<ManagedReconciler, TimingError> {
        self.timing.validate()?;
        let resources = ManagedResources::new(self.store, self.provider.kind(), self.clock.clone());
        Ok(ManagedReconciler {
            provider: self.provider,
            resources,
            sink: self.sink,
            recorder: self.recorder,
            clock: self.clock,
            timing: self.timing,
        })
    }
}

/// Reconciles the managed resources of one provider; see the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use rorqual_core::engine::MemoryStateStore;
/// use rorqual_providers::{ManagedReconciler, Provider};
/// # use rorqual_providers::provider::{ExternalClient, ExternalRef, Result};
/// # #[derive(Debug)] struct Databases;
/// # #[async_trait::async_trait] impl Provider for Databases {
/// #     fn kind(&self) -> &str { "Database" }
/// #     async fn connect(&self, _: &ExternalRef<'_>) -> Result<Box<dyn ExternalClient>> {
/// #         Err(rorqual_providers::provider::ProviderError::rejected("this example connects nowhere"))
/// #     }
/// # }
///
/// let reconciler = ManagedReconciler::builder(Arc::new(Databases), Arc::new(MemoryStateStore::new())).build().unwrap();
/// let resources = reconciler.resources().clone(); // apply and delete specs through this
/// let controller = rorqual_runtime::Controller::builder("databases", Arc::new(reconciler)).build().unwrap();
/// # drop((resources, controller));
/// ```
#[derive(Debug)]
pub struct ManagedReconciler {
    provider: Arc<dyn Provider>,
    resources: ManagedResources,
    sink: Arc<dyn ConnectionSink>,
    recorder: Arc<dyn Recorder>,
    clock: Arc<dyn Clock>,
    timing: Timing,
}

impl ManagedReconciler {
    /// A builder for the reconciler of `provider`'s resources, kept in `store`.
    pub fn builder(
        provider: Arc<dyn Provider>,
        store: Arc<dyn StateStore>,
    ) -> ManagedReconcilerBuilder {
        ManagedReconcilerBuilder {
            recorder: Arc::new(TracingRecorder::for_controller(provider.kind().to_owned())),
            provider,
            store,
            sink: Arc::new(MemorySink::new()),
            clock: Arc::new(SystemClock),
            timing: Timing::default(),
        }
    }

    /// The managed resources this reconciler reconciles.
    pub fn resources(&self) -> &ManagedResources {
        &self.resources
    }

    /// Every problem with `spec`'s fields and its parameters (paths under `forProvider`).
    ///
    /// # Errors
    ///
    /// The problems, each with its path.
    pub fn validate(&self, spec: &crate::ResourceSpec) -> Result<(), ValidationErrors> {
        let mut errors = match spec.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.errors,
        };
        if let Err(problems) = self.provider.validate(&spec.for_provider) {
            errors.extend(problems.into_iter().map(|e| FieldError {
                path: if e.path.is_empty() || e.path.starts_with('[') {
                    format!("forProvider{}", e.path)
                } else {
                    format!("forProvider.{}", e.path)
                },
                message: e.message,
            }));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                subject: format!("{} {}", self.provider.kind(), spec.name),
                errors,
            })
        }
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.clock.now())
    }

    fn event(&self, name: &str, reason: EventReason, message: &str) {
        self.recorder
            .record(&format!("{}/{name}", self.provider.kind()), reason, message);
    }

    /// Writes `resource` if it differs from `loaded`; `None` on a conflict.
    async fn write_changed(
        &self,
        loaded: &ManagedResource,
        resource: &ManagedResource,
        version: u64,
    ) -> Result<Option<u64>, ReconcileError> {
        if loaded == resource {
            return Ok(Some(version));
        }
        match self
            .resources
            .write_at(resource.name(), resource, version)
            .await
            .map_err(|source| record_error(resource.name(), source))?
        {
            Write::Done(v) => Ok(Some(v)),
            Write::Conflict => {
                tracing::debug!(
                    resource = resource.name(),
                    "conflict writing the record; requeued"
                );
                Ok(None)
            }
        }
    }

    /// Reports `error` on `Synced` (on top of `base`), records a warning and returns it.
    async fn fail(
        &self,
        resource: &ManagedResource,
        base: &ResourceStatus,
        error: ReconcileError,
    ) -> Result<Action, ReconcileError> {
        let message = error.to_string();
        let status = failed(base, &message, resource.meta.generation, self.now_ms());
        self.event(
            resource.name(),
            EventReason::warning("ReconcileError"),
            &message,
        );
        tracing::debug!(
            resource = resource.name(),
            retryable = error.is_retryable(),
            "reconcile failed: {message}"
        );
        if let Err(write) = self
            .resources
            .modify(resource.name(), |r| r.status = status.clone())
            .await
        {
            tracing::warn!(
                resource = resource.name(),
                "cannot report the error on the status: {write}"
            );
        }
        Err(error)
    }

    /// Drops the managed resource (and its published details); the external resource is
    /// gone or left alone.
    async fn release(
        &self,
        resource: &ManagedResource,
        version: u64,
    ) -> Result<Action, ReconcileError> {
        let name = resource.name();
        if let Some(secret) = &resource.spec.write_connection_secret_to
            && let Err(source) = self.sink.unpublish(secret).await
        {
            return self
                .fail(
                    resource,
                    &resource.status,
                    ReconcileError::Sink {
                        name: name.to_owned(),
                        source,
                    },
                )
                .await;
        }
        match self
            .resources
            .remove_at(name, version)
            .await
            .map_err(|source| record_error(name, source))?
        {
            Write::Done(_) => {
                let kept = if resource.spec.deletes_external() {
                    "deleted"
                } else {
                    "orphaned"
                };
                self.event(
                    name,
                    EventReason::normal("Released"),
                    &format!(
                        "external resource `{}` {kept}; managed resource removed",
                        resource.external_name()
                    ),
                );
                Ok(Action::forget())
            }
            Write::Conflict => Ok(Action::requeue(CONFLICT_REQUEUE)),
        }
    }

    async fn publish(
        &self,
        resource: &ManagedResource,
        details: &crate::ConnectionDetails,
    ) -> Result<(), ReconcileError> {
        let Some(secret) = &resource.spec.write_connection_secret_to else {
            return Ok(());
        };
        if details.is_empty() {
            return Ok(());
        }
        self.sink
            .publish(secret, details)
            .await
            .map_err(|source| ReconcileError::Sink {
                name: resource.name().to_owned(),
                source,
            })
    }

    /// Records the result of a create, re-applying it on conflicts and retrying store errors.
    async fn record_create_result(
        &self,
        name: &str,
        change: impl Fn(&mut ManagedResource),
    ) -> Result<(), ReconcileError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.resources.modify(name, &change).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < RESULT_WRITE_ATTEMPTS => {
                    tracing::debug!(
                        resource = name,
                        attempt,
                        "recording the create result failed: {e}; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(source) => return Err(record_error(name, source)),
            }
        }
    }

    async fn observe_and_act(
        &self,
        loaded: &ManagedResource,
        mut resource: ManagedResource,
        mut version: u64,
        client: &dyn ExternalClient,
        now: u64,
    ) -> Result<Action, ReconcileError> {
        let name = resource.name().to_owned();
        let external_name = resource.external_name().to_owned();
        let parameters = resource.spec.for_provider.clone();
        let ext = ExternalRef::new(&name, &external_name, &parameters);
        let observation = match client.observe(&ext).await {
            Ok(o) => o,
            Err(source) => {
                return self
                    .fail(
                        &resource,
                        &resource.status,
                        provider_error(&name, Operation::Observe, source),
                    )
                    .await;
            }
        };
        let Plan {
            call,
            late_initialize,
            publish,
            generation,
            status,
            next,
            failure,
        } = plan(&resource, &observation, now, &self.timing);
        tracing::debug!(resource = %name, exists = observation.exists, up_to_date = observation.up_to_date, ?call, "planned");
        if let Some(PlanFailure::ExternalMissing) = failure {
            let error = ReconcileError::ExternalMissing {
                name: name.clone(),
                external_name,
            };
            return self.fail(&resource, &status, error).await;
        }
        if publish
            && let Err(e) = self
                .publish(&resource, &observation.connection_details)
                .await
        {
            return self.fail(&resource, &resource.status, e).await;
        }
        if let Some(filled) = late_initialize {
            resource.spec.for_provider = filled;
            resource.meta.generation = generation;
            match self.write_changed(loaded, &resource, version).await? {
                Some(v) => version = v,
                None => return Ok(Action::requeue(CONFLICT_REQUEUE)),
            }
            self.event(
                &name,
                EventReason::normal("LateInitialized"),
                "persisted parameters the service defaulted",
            );
        }
        let written = resource.clone();
        match call {
            Call::Nothing => {}
            Call::Release => return self.release(&resource, version).await,
            Call::Create => {
                // Strictly newer than the last result, so that the markers order the
                // attempts even when two fall in one millisecond.
                let last_result = resource
                    .meta
                    .create_succeeded_at_ms
                    .max(resource.meta.create_failed_at_ms);
                let pending_at = now.max(last_result.map_or(0, |t| t.saturating_add(1)));
                resource.meta.create_pending_at_ms = Some(pending_at);
                resource.status = status.clone();
                if self
                    .write_changed(&written, &resource, version)
                    .await?
                    .is_none()
                {
                    return Ok(Action::requeue(CONFLICT_REQUEUE));
                }
                let result = client.create(&ext).await;
                let at = self.now_ms().max(pending_at);
                return match result {
                    Err(source) => {
                        let error = provider_error(&name, Operation::Create, source);
                        let message = error.to_string();
                        let failed_status = failed(&status, &message, generation, at);
                        self.record_create_result(&name, |r| {
                            r.meta.create_failed_at_ms = Some(at);
                            r.status = failed_status.clone();
                        })
                        .await?;
                        self.event(
                            &name,
                            EventReason::warning("CannotCreateExternalResource"),
                            &message,
                        );
                        Err(error)
                    }
                    Ok(creation) => {
                        let named = creation.external_name.clone();
                        self.record_create_result(&name, |r| {
                            r.meta.create_succeeded_at_ms = Some(at);
                            if let Some(n) = &named {
                                r.meta.external_name = Some(n.clone());
                            }
                            r.status = status.clone();
                        })
                        .await?;
                        let shown = named.as_deref().unwrap_or(&external_name);
                        self.event(
                            &name,
                            EventReason::normal("CreatedExternalResource"),
                            &format!("created external resource `{shown}`"),
                        );
                        if let Err(e) = self.publish(&resource, &creation.connection_details).await
                        {
                            return self.fail(&resource, &status, e).await;
                        }
                        Ok(next)
                    }
                };
            }
            Call::Update => match client.update(&ext).await {
                Err(source) => {
                    return self
                        .fail(
                            &resource,
                            &status,
                            provider_error(&name, Operation::Update, source),
                        )
                        .await;
                }
                Ok(update) => {
                    let message = match &status.diff {
                        Some(diff) => {
                            format!("updated external resource `{external_name}`: {diff}")
                        }
                        None => format!("updated external resource `{external_name}`"),
                    };
                    self.event(
                        &name,
                        EventReason::normal("UpdatedExternalResource"),
                        &message,
                    );
                    if let Err(e) = self.publish(&resource, &update.connection_details).await {
                        return self.fail(&resource, &status, e).await;
                    }
                }
            },
            Call::Delete => {
                if let Err(source) = client.delete(&ext).await {
                    return self
                        .fail(
                            &resource,
                            &status,
                            provider_error(&name, Operation::Delete, source),
                        )
                        .await;
                }
                self.event(
                    &name,
                    EventReason::normal("DeletedExternalResource"),
                    &format!("deleting external resource `{external_name}`"),
                );
            }
        }
        resource.status = status;
        match self.write_changed(&written, &resource, version).await? {
            Some(_) => Ok(next),
            None => Ok(Action::requeue(CONFLICT_REQUEUE)),
        }
    }
}

fn record_error(name: &str, source: RecordError) -> ReconcileError {
    ReconcileError::Record {
        name: name.to_owned(),
        source,
    }
}

fn provider_error(name: &str, operation: Operation, source: ProviderError) -> ReconcileError {
    ReconcileError::Provider {
        name: name.to_owned(),
        operation,
        source,
    }
}

#[async_trait]
impl Reconciler<String> for ManagedReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, name: String, _ctx: Context) -> Result<Action, ReconcileError> {
        let Some((loaded, version)) = self
            .resources
            .load(&name)
            .await
            .map_err(|source| record_error(&name, source))?
        else {
            return Ok(Action::forget());
        };
        let now = self.now_ms();
        let invalid = self.validate(&loaded.spec).err();
        let message = invalid.as_ref().map(ToString::to_string);
        let mut resource = loaded.clone();
        let deterministic = self.provider.deterministic_external_names();
        let conflict = Ok(Action::requeue(CONFLICT_REQUEUE));
        match preflight(&resource, message.as_deref(), deterministic, now) {
            Preflight::Paused { status } => {
                resource.status = status;
                return match self.write_changed(&loaded, &resource, version).await? {
                    Some(_) => Ok(Action::await_change()),
                    None => conflict,
                };
            }
            Preflight::Invalid { status } => {
                resource.status = status;
                if self
                    .write_changed(&loaded, &resource, version)
                    .await?
                    .is_none()
                {
                    return conflict;
                }
                let message = message.unwrap_or_default();
                self.event(&name, EventReason::warning("InvalidSpec"), &message);
                return Err(ReconcileError::Invalid { name, message });
            }
            Preflight::Release => return self.release(&resource, version).await,
            Preflight::RefuseCreatePending { status, since_ms } => {
                resource.status = status;
                if self
                    .write_changed(&loaded, &resource, version)
                    .await?
                    .is_none()
                {
                    return conflict;
                }
                let external_name = resource.external_name().to_owned();
                let error = ReconcileError::CreatePending {
                    name,
                    external_name,
                    since_ms,
                };
                self.event(
                    resource.name(),
                    EventReason::warning("CreatePending"),
                    &error.to_string(),
                );
                return Err(error);
            }
            Preflight::Observe {
                record_external_name,
            } => {
                if let Some(external) = record_external_name {
                    resource.meta.external_name = Some(external);
                }
            }
        }
        let version = match self.write_changed(&loaded, &resource, version).await? {
            Some(v) => v,
            None => return conflict,
        };
        let loaded = resource.clone();
        let external_name = resource.external_name().to_owned();
        let parameters = resource.spec.for_provider.clone();
        let ext = ExternalRef::new(&name, &external_name, &parameters);
        let timeout = self.timing.connect_timeout;
        let client = match tokio::time::timeout(timeout, self.provider.connect(&ext)).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                return self
                    .fail(
                        &resource,
                        &resource.status,
                        provider_error(&name, Operation::Connect, source),
                    )
                    .await;
            }
            Err(_) => {
                let source = ProviderError::Timeout {
                    operation: Operation::Connect,
                    after: timeout,
                };
                return self
                    .fail(
                        &resource,
                        &resource.status,
                        provider_error(&name, Operation::Connect, source),
                    )
                    .await;
            }
        };
        let result = self
            .observe_and_act(&loaded, resource, version, &*client, now)
            .await;
        if let Err(e) = client.disconnect().await {
            tracing::debug!(resource = %name, "disconnect failed: {e}");
        }
        result
    }

    fn is_retryable(&self, error: &ReconcileError) -> bool {
        error.is_retryable()
    }
}
