//! The managed-resource state machine, without I/O: given a managed resource (spec,
//! bookkeeping, status), what the provider observed and the time, what to do next and the
//! status to report. The [`ManagedReconciler`](crate::ManagedReconciler) carries the decisions
//! out; this module is where Crossplane's semantics live and are tested.
//!
//! One reconcile asks two questions:
//!
//! 1. [`preflight`], before touching the provider: paused (stop), invalid (report, wait for a
//!    change), deleted with nothing to delete (release without observing: deletion policy
//!    `Orphan` or no `Delete` management policy), a create whose result was never recorded
//!    (refuse until a human resolves it, unless external names are deterministic), or observe
//!    (setting the external name first when it is not recorded yet).
//! 2. [`plan`], given the observation: in this order, missing and created less than the
//!    grace period ago (requeue: the service may not show it yet), deleted (delete it, or
//!    release the managed resource once it is gone), missing (create it, if allowed),
//!    late-initialised fields (persist them, if allowed), up to date (report success, poll),
//!    otherwise update (if allowed).
//!
//! The status of a failed call is [`failed`]: the plan's status with `Synced` false.

use std::time::Duration;

use rorqual_runtime::Action;
use serde_json::Value;

use crate::condition::{Reason, ResourceStatus};
use crate::provider::Observation;
use crate::resource::{ManagedResource, ManagementPolicy};

/// The reconciler's timing (Crossplane's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// How often a resource in sync is observed again, to catch drift (1 min).
    pub poll_interval: Duration,
    /// How long after a create a missing resource is taken to be not visible yet, rather
    /// than gone (30 s): eventually consistent services.
    pub creation_grace_period: Duration,
    /// How soon a resource being created or deleted is looked at again (5 s).
    pub short_wait: Duration,
    /// How long [`Provider::connect`](crate::Provider::connect) may take (1 min).
    pub connect_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll_interval: Duration::from_secs(60),
            creation_grace_period: Duration::from_secs(30),
            short_wait: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// Sets the poll interval.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the creation grace period.
    #[must_use]
    pub fn creation_grace_period(mut self, period: Duration) -> Self {
        self.creation_grace_period = period;
        self
    }

    /// Sets the short wait.
    #[must_use]
    pub fn short_wait(mut self, wait: Duration) -> Self {
        self.short_wait = wait;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// What to do before talking to the provider; see [`preflight`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Preflight {
    /// Paused: report it and wait for a change.
    Paused {
        /// The status to write.
        status: ResourceStatus,
    },
    /// The spec is invalid: report it and wait for a change (retrying cannot help).
    Invalid {
        /// The status to write.
        status: ResourceStatus,
    },
    /// Deleted, and the external resource is to be left alone: drop the managed resource
    /// (and its published connection details) without observing.
    Release,
    /// A create started and its result was never recorded, and external names are not
    /// deterministic: creating again could make a second resource. Report it and wait for a
    /// human to resolve it.
    RefuseCreatePending {
        /// The status to write.
        status: ResourceStatus,
        /// When the create started.
        since_ms: u64,
    },
    /// Connect and observe.
    Observe {
        /// The external name to record first, when it is not recorded yet or the spec asks
        /// for another.
        record_external_name: Option<String>,
    },
}

/// Decides what to do before talking to the provider. `invalid` is the validation message
/// when the spec (or its parameters) is invalid; `deterministic_names` is the provider's
/// [`deterministic_external_names`](crate::Provider::deterministic_external_names).
pub fn preflight(
    resource: &ManagedResource,
    invalid: Option<&str>,
    deterministic_names: bool,
    now_ms: u64,
) -> Preflight {
    let generation = resource.meta.generation;
    let mut status = resource.status.clone();
    if resource.spec.is_paused() {
        status.set(
            Reason::ReconcilePaused,
            "reconciling is paused",
            generation,
            now_ms,
        );
        return Preflight::Paused { status };
    }
    if let Some(message) = invalid {
        status.set(Reason::ReconcileError, message, generation, now_ms);
        return Preflight::Invalid { status };
    }
    if resource.is_deleting() && !resource.spec.deletes_external() {
        return Preflight::Release;
    }
    let wanted = resource.spec.external_name();
    let record_external_name = match (&resource.meta.external_name, &resource.spec.external_name) {
        (None, _) => Some(wanted.to_owned()),
        (Some(recorded), Some(asked)) if recorded != asked => Some(asked.clone()),
        _ => None,
    };
    if resource.meta.create_incomplete() && !deterministic_names {
        let since_ms = resource.meta.create_pending_at_ms.unwrap_or_default();
        status.set(
            Reason::ReconcileError,
            format!(
                "a create of `{}` started at {since_ms} ms and its result was never recorded: \
                 check whether it exists, then resolve the pending create",
                resource.external_name()
            ),
            generation,
            now_ms,
        );
        return Preflight::RefuseCreatePending { status, since_ms };
    }
    Preflight::Observe {
        record_external_name,
    }
}

/// The external call a [`Plan`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// None.
    Nothing,
    /// Create it: record the create-pending marker, create, record the result.
    Create,
    /// Update it.
    Update,
    /// Delete it.
    Delete,
    /// It is gone and the managed resource is deleted: drop the managed resource and its
    /// published connection details.
    Release,
}

/// Why a plan fails the reconcile without calling the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanFailure {
    /// The external resource does not exist and the policies do not allow creating it (an
    /// observe-only import of a resource that is not there).
    ExternalMissing,
}

/// What to do after observing; see [`plan`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// The external call.
    pub call: Call,
    /// Parameters to persist into the spec (late initialisation), when they change it.
    pub late_initialize: Option<Value>,
    /// Whether to publish the observed connection details.
    pub publish: bool,
    /// The generation of the spec after this reconcile (one more when late initialisation
    /// changes the spec).
    pub generation: u64,
    /// The status to write when the call succeeds (for a failed call, see [`failed`]).
    pub status: ResourceStatus,
    /// When to look again after success.
    pub next: Action,
    /// Set when the reconcile fails without a call.
    pub failure: Option<PlanFailure>,
}

/// Decides what to do given what the provider observed. See the [module docs](self) for the
/// order of the rules.
pub fn plan(
    resource: &ManagedResource,
    observation: &Observation,
    now_ms: u64,
    timing: &Timing,
) -> Plan {
    let spec = &resource.spec;
    let mut status = resource.status.clone();
    let mut out = Plan {
        call: Call::Nothing,
        late_initialize: None,
        publish: false,
        generation: resource.meta.generation,
        status: ResourceStatus::default(),
        next: Action::requeue(timing.poll_interval),
        failure: None,
    };
    let generation = out.generation;

    if !observation.exists
        && let Some(succeeded) = resource.meta.create_succeeded_at_ms
        && now_ms.saturating_sub(succeeded) < millis(timing.creation_grace_period)
    {
        out.status = status;
        out.next = Action::requeue(timing.short_wait);
        return out;
    }

    if resource.is_deleting() {
        if observation.exists {
            status.set(Reason::Deleting, "", generation, now_ms);
            status.set(Reason::ReconcileSuccess, "", generation, now_ms);
            out.call = Call::Delete;
            out.next = Action::requeue(timing.short_wait);
        } else {
            out.call = Call::Release;
            out.next = Action::forget();
        }
        out.status = status;
        return out;
    }

    if !observation.exists {
        if spec.allows(ManagementPolicy::Create) {
            status.set(Reason::Creating, "", generation, now_ms);
            status.set(Reason::ReconcileSuccess, "", generation, now_ms);
            out.call = Call::Create;
            out.next = Action::requeue(timing.short_wait);
        } else {
            status.set(
                Reason::ReconcileError,
                format!(
                    "external resource `{}` does not exist and the management policies do not allow Create",
                    resource.external_name()
                ),
                generation,
                now_ms,
            );
            out.failure = Some(PlanFailure::ExternalMissing);
        }
        out.status = status;
        return out;
    }

    out.publish = spec.write_connection_secret_to.is_some();
    if spec.allows(ManagementPolicy::LateInitialize)
        && let Some(filled) = &observation.late_initialized
        && *filled != spec.for_provider
    {
        out.late_initialize = Some(filled.clone());
        out.generation += 1;
    }
    let generation = out.generation;
    status.at_provider = observation.at_provider.clone();
    status.diff = if observation.up_to_date {
        None
    } else {
        observation.diff.clone()
    };
    let ready = if observation.available {
        Reason::Available
    } else {
        Reason::Unavailable
    };
    status.set(ready, "", generation, now_ms);
    if !observation.up_to_date && spec.allows(ManagementPolicy::Update) {
        out.call = Call::Update;
    }
    status.set(Reason::ReconcileSuccess, "", generation, now_ms);
    out.status = status;
    out
}

/// The status after a failed step: `status` (what the plan would have reported) with
/// `Synced` false and `message`.
pub fn failed(
    status: &ResourceStatus,
    message: &str,
    generation: u64,
    now_ms: u64,
) -> ResourceStatus {
    let mut status = status.clone();
    status.set(Reason::ReconcileError, message, generation, now_ms);
    status
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
