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

/// A [`Timing`] that cannot work: a zero duration would requeue in a hot loop or never
/// connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reconciler timing `{field}` must be longer than zero")]
#[non_exhaustive]
pub struct TimingError {
    /// The setting (`poll_interval`).
    pub field: &'static str,
}

impl Timing {
    /// Checks that the poll interval, short wait and connect timeout are longer than zero
    /// (the grace period may be zero: no grace).
    ///
    /// # Errors
    ///
    /// The first zero setting.
    pub fn validate(&self) -> Result<(), TimingError> {
        for (field, value) in [
            ("poll_interval", self.poll_interval),
            ("short_wait", self.short_wait),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(TimingError { field });
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::condition::{ConditionStatus, ConditionType};
    use crate::resource::{DeletionPolicy, ResourceSpec};

    use ManagementPolicy::{All, Create, Delete, LateInitialize, Observe, Update};

    const NOW: u64 = 1_700_000_000_000;
    const S: u64 = 1_000;

    fn resource(policies: &[ManagementPolicy]) -> ManagedResource {
        let spec =
            ResourceSpec::new("orders", json!({"size": 1})).with_policies(policies.iter().copied());
        let mut r = ManagedResource::new(spec, NOW - 3600 * S);
        r.meta.generation = 3;
        r
    }

    fn deleting(mut r: ManagedResource) -> ManagedResource {
        r.meta.deletion_requested_at_ms = Some(NOW - S);
        r
    }

    fn synced(status: &ResourceStatus) -> Option<Reason> {
        status.reason(ConditionType::Synced)
    }

    fn ready(status: &ResourceStatus) -> Option<Reason> {
        status.reason(ConditionType::Ready)
    }

    /// A case, the resource, the validation message, whether names are deterministic, and
    /// the expected preflight (`None`: checked by kind below).
    type PreflightRow = (
        &'static str,
        ManagedResource,
        Option<&'static str>,
        bool,
        Option<Preflight>,
    );

    #[test]
    fn preflight_table() {
        let orphan = {
            let mut r = deleting(resource(&[All]));
            r.spec.deletion_policy = DeletionPolicy::Orphan;
            r
        };
        let pending = {
            let mut r = resource(&[All]);
            r.meta.external_name = Some("orders".into());
            r.meta.create_pending_at_ms = Some(NOW - 10 * S);
            r.meta.create_succeeded_at_ms = Some(NOW - 60 * S);
            r
        };
        let resolved = {
            let mut r = pending.clone();
            r.meta.create_failed_at_ms = Some(NOW - 5 * S);
            r
        };
        let paused = {
            let mut r = resource(&[All]);
            r.spec.paused = true;
            r
        };
        let recorded = |recorded: Option<&str>, asked: Option<&str>| {
            let mut r = resource(&[All]);
            r.meta.external_name = recorded.map(str::to_owned);
            r.spec.external_name = asked.map(str::to_owned);
            r
        };
        let observe = |name: Option<&str>| Preflight::Observe {
            record_external_name: name.map(str::to_owned),
        };
        // (case, resource, invalid, deterministic names, expected kind or observe)
        let rows: Vec<PreflightRow> = vec![
            ("paused", paused.clone(), None, true, None),
            ("paused wins over invalid", paused, Some("bad"), true, None),
            ("no policies pause", resource(&[]), None, true, None),
            ("invalid", resource(&[All]), Some("name: bad"), true, None),
            (
                "orphan deletion releases unobserved",
                orphan,
                None,
                true,
                Some(Preflight::Release),
            ),
            (
                "no Delete policy releases unobserved",
                deleting(resource(&[Observe, Create, Update])),
                None,
                true,
                Some(Preflight::Release),
            ),
            (
                "Delete policy observes",
                deleting(resource(&[Observe, Delete])),
                None,
                true,
                Some(observe(Some("orders"))),
            ),
            (
                "default external name is the name",
                recorded(None, None),
                None,
                true,
                Some(observe(Some("orders"))),
            ),
            (
                "spec's external name",
                recorded(None, Some("legacy_orders")),
                None,
                true,
                Some(observe(Some("legacy_orders"))),
            ),
            (
                "recorded and unchanged",
                recorded(Some("orders"), None),
                None,
                true,
                Some(observe(None)),
            ),
            (
                "a name the service gave is kept",
                recorded(Some("db-7f3a"), None),
                None,
                false,
                Some(observe(None)),
            ),
            (
                "the spec renames",
                recorded(Some("orders"), Some("orders2")),
                None,
                true,
                Some(observe(Some("orders2"))),
            ),
            (
                "pending, deterministic names observe",
                pending.clone(),
                None,
                true,
                Some(observe(None)),
            ),
            (
                "pending, generated names refuse",
                pending,
                None,
                false,
                None,
            ),
            (
                "resolved pending observes",
                resolved,
                None,
                false,
                Some(observe(None)),
            ),
        ];
        for (case, r, invalid, deterministic, expected) in rows {
            let got = preflight(&r, invalid, deterministic, NOW);
            match (&got, expected) {
                (_, Some(expected)) => assert_eq!(got, expected, "{case}"),
                (Preflight::Paused { status }, None) => {
                    assert!(case.contains("pause"), "{case}: {got:?}");
                    assert_eq!(synced(status), Some(Reason::ReconcilePaused), "{case}");
                    assert_eq!(status.observed_generation, 3, "{case}");
                }
                (Preflight::Invalid { status }, None) => {
                    assert_eq!(case, "invalid");
                    let c = status.condition(ConditionType::Synced).unwrap();
                    assert_eq!(
                        (c.reason, c.message.as_str()),
                        (Reason::ReconcileError, "name: bad")
                    );
                }
                (Preflight::RefuseCreatePending { status, since_ms }, None) => {
                    assert_eq!(case, "pending, generated names refuse");
                    assert_eq!(*since_ms, NOW - 10 * S);
                    let c = status.condition(ConditionType::Synced).unwrap();
                    assert_eq!(c.status, ConditionStatus::False);
                    assert!(
                        c.message.contains("resolve the pending create"),
                        "{}",
                        c.message
                    );
                }
                _ => panic!("{case}: unexpected {got:?}"),
            }
        }
    }

    /// One row of the plan table.
    struct Row {
        case: &'static str,
        policies: &'static [ManagementPolicy],
        deleting: bool,
        created_ago: Option<u64>,
        observation: Observation,
        call: Call,
        ready: Option<Reason>,
        synced: Option<Reason>,
        next: Action,
        failure: Option<PlanFailure>,
    }

    #[test]
    fn plan_table() {
        let t = Timing::default();
        let poll = Action::requeue(t.poll_interval);
        let short = Action::requeue(t.short_wait);
        let outdated = || Observation::outdated("size: 2 -> 1");
        let rows = [
            Row {
                case: "missing: create",
                policies: &[All],
                deleting: false,
                created_ago: None,
                observation: Observation::missing(),
                call: Call::Create,
                ready: Some(Reason::Creating),
                synced: Some(Reason::ReconcileSuccess),
                next: short,
                failure: None,
            },
            Row {
                case: "missing long after a create: create again",
                policies: &[All],
                deleting: false,
                created_ago: Some(31 * S),
                observation: Observation::missing(),
                call: Call::Create,
                ready: Some(Reason::Creating),
                synced: Some(Reason::ReconcileSuccess),
                next: short,
                failure: None,
            },
            Row {
                case: "missing just after a create: requeue, not recreate",
                policies: &[All],
                deleting: false,
                created_ago: Some(29 * S),
                observation: Observation::missing(),
                call: Call::Nothing,
                ready: None,
                synced: None,
                next: short,
                failure: None,
            },
            Row {
                case: "missing just after a create while deleting: requeue",
                policies: &[All],
                deleting: true,
                created_ago: Some(5 * S),
                observation: Observation::missing(),
                call: Call::Nothing,
                ready: None,
                synced: None,
                next: short,
                failure: None,
            },
            Row {
                case: "missing, observe only: error",
                policies: &[Observe],
                deleting: false,
                created_ago: None,
                observation: Observation::missing(),
                call: Call::Nothing,
                ready: None,
                synced: Some(Reason::ReconcileError),
                next: poll,
                failure: Some(PlanFailure::ExternalMissing),
            },
            Row {
                case: "missing, no Create policy: error",
                policies: &[Observe, Update, Delete],
                deleting: false,
                created_ago: None,
                observation: Observation::missing(),
                call: Call::Nothing,
                ready: None,
                synced: Some(Reason::ReconcileError),
                next: poll,
                failure: Some(PlanFailure::ExternalMissing),
            },
            Row {
                case: "up to date: poll",
                policies: &[All],
                deleting: false,
                created_ago: Some(3600 * S),
                observation: Observation::up_to_date(),
                call: Call::Nothing,
                ready: Some(Reason::Available),
                synced: Some(Reason::ReconcileSuccess),
                next: poll,
                failure: None,
            },
            Row {
                case: "exists, not available yet",
                policies: &[All],
                deleting: false,
                created_ago: Some(S),
                observation: Observation::up_to_date().available(false),
                call: Call::Nothing,
                ready: Some(Reason::Unavailable),
                synced: Some(Reason::ReconcileSuccess),
                next: poll,
                failure: None,
            },
            Row {
                case: "outdated: update",
                policies: &[All],
                deleting: false,
                created_ago: None,
                observation: outdated(),
                call: Call::Update,
                ready: Some(Reason::Available),
                synced: Some(Reason::ReconcileSuccess),
                next: poll,
                failure: None,
            },
            Row {
                case: "outdated, no Update policy: report only",
                policies: &[Observe, Create, Delete],
                deleting: false,
                created_ago: None,
                observation: outdated(),
                call: Call::Nothing,
                ready: Some(Reason::Available),
                synced: Some(Reason::ReconcileSuccess),
                next: poll,
                failure: None,
            },
            Row {
                case: "observe only imports what exists",
                policies: &[Observe],
                deleting: false,
                created_ago: None,
                observation: outdated(),
                call: Call::Nothing,
                ready: Some(Reason::Available),
                synced: Some(Reason::ReconcileSuccess),
                next: poll,
                failure: None,
            },
            Row {
                case: "deleting, exists: delete",
                policies: &[All],
                deleting: true,
                created_ago: None,
                observation: Observation::up_to_date(),
                call: Call::Delete,
                ready: Some(Reason::Deleting),
                synced: Some(Reason::ReconcileSuccess),
                next: short,
                failure: None,
            },
            Row {
                case: "deleting, outdated: delete, not update",
                policies: &[All],
                deleting: true,
                created_ago: None,
                observation: outdated(),
                call: Call::Delete,
                ready: Some(Reason::Deleting),
                synced: Some(Reason::ReconcileSuccess),
                next: short,
                failure: None,
            },
            Row {
                case: "deleting, gone: release",
                policies: &[All],
                deleting: true,
                created_ago: Some(31 * S),
                observation: Observation::missing(),
                call: Call::Release,
                ready: None,
                synced: None,
                next: Action::forget(),
                failure: None,
            },
        ];
        for row in rows {
            let mut r = resource(row.policies);
            if row.deleting {
                r = deleting(r);
            }
            r.meta.create_succeeded_at_ms = row.created_ago.map(|ago| NOW - ago);
            let p = plan(&r, &row.observation, NOW, &t);
            let case = row.case;
            assert_eq!(p.call, row.call, "{case}");
            assert_eq!(ready(&p.status), row.ready, "{case}");
            assert_eq!(synced(&p.status), row.synced, "{case}");
            assert_eq!(p.failure, row.failure, "{case}");
            if row.failure.is_none() {
                assert_eq!(p.next, row.next, "{case}");
            }
            assert_eq!(p.generation, 3, "{case}");
            for c in &p.status.conditions {
                assert_eq!(c.observed_generation, 3, "{case}");
            }
            assert!(p.late_initialize.is_none(), "{case}");
        }
    }

    #[test]
    fn observed_state_and_diff_are_reported_and_the_diff_cleared_once_in_sync() {
        let t = Timing::default();
        let r = resource(&[Observe]);
        let p = plan(
            &r,
            &Observation::outdated("size: 2 -> 1").at_provider(json!({"size": 2})),
            NOW,
            &t,
        );
        assert_eq!(p.status.diff.as_deref(), Some("size: 2 -> 1"));
        assert_eq!(p.status.at_provider, Some(json!({"size": 2})));
        let mut r = r;
        r.status = p.status;
        let p = plan(&r, &Observation::up_to_date(), NOW, &t);
        assert_eq!(p.status.diff, None);
    }

    #[test]
    fn late_initialisation_persists_only_new_fields_and_only_when_allowed() {
        let t = Timing::default();
        let filled = json!({"size": 1, "encoding": "UTF8"});
        let obs = Observation::up_to_date().late_initialized(filled.clone());
        let p = plan(&resource(&[All]), &obs, NOW, &t);
        assert_eq!(p.late_initialize, Some(filled.clone()));
        assert_eq!(p.generation, 4, "the spec changes");
        assert_eq!(p.status.observed_generation, 4);

        let p = plan(&resource(&[Observe, Create, Update, Delete]), &obs, NOW, &t);
        assert_eq!(p.late_initialize, None, "no LateInitialize policy");
        assert_eq!(p.generation, 3);

        let mut same = resource(&[All]);
        same.spec.for_provider = filled;
        let p = plan(&same, &obs, NOW, &t);
        assert_eq!(
            p.late_initialize, None,
            "nothing new: no write, no generation bump"
        );
        assert_eq!(p.generation, 3);
    }

    #[test]
    fn publishing_needs_a_secret_name_and_an_existing_resource() {
        let t = Timing::default();
        let mut r = resource(&[All]);
        assert!(!plan(&r, &Observation::up_to_date(), NOW, &t).publish);
        r.spec.write_connection_secret_to = Some("orders-db".into());
        assert!(plan(&r, &Observation::up_to_date(), NOW, &t).publish);
        assert!(!plan(&r, &Observation::missing(), NOW, &t).publish);
    }

    #[test]
    fn zero_timings_are_refused() {
        assert_eq!(Timing::default().validate(), Ok(()));
        assert_eq!(
            Timing::default()
                .creation_grace_period(Duration::ZERO)
                .validate(),
            Ok(())
        );
        let err = Timing::default()
            .poll_interval(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "reconciler timing `poll_interval` must be longer than zero"
        );
        assert!(
            Timing::default()
                .short_wait(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            Timing::default()
                .connect_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_failure_keeps_ready_and_reports_synced_false() {
        let t = Timing::default();
        let p = plan(&resource(&[All]), &Observation::missing(), NOW, &t);
        let s = failed(&p.status, "create failed: quota", 3, NOW + S);
        assert_eq!(ready(&s), Some(Reason::Creating));
        let c = s.condition(ConditionType::Synced).unwrap();
        assert_eq!(
            (c.reason, c.message.as_str(), c.last_transition_ms),
            (Reason::ReconcileError, "create failed: quota", NOW + S)
        );
    }

    proptest::proptest! {
        /// Whatever the observation, policies and markers: nothing is created unless the
        /// policies allow Create and the resource is missing and not deleting; nothing is
        /// deleted unless deleting; no update of a resource being deleted; nothing is
        /// created within the grace period after a create succeeded.
        #[test]
        fn calls_respect_policies_and_the_grace_period(
            policy_bits in 0u8..64,
            deleting_ in proptest::bool::ANY,
            exists in proptest::bool::ANY,
            up_to_date in proptest::bool::ANY,
            available in proptest::bool::ANY,
            created_ago in proptest::option::of(0u64..120_000),
        ) {
            let all = [All, Observe, Create, Update, LateInitialize, Delete];
            let policies: Vec<_> = all.iter().enumerate().filter(|(i, _)| policy_bits & (1 << i) != 0).map(|(_, p)| *p).collect();
            let mut r = resource(&policies);
            if deleting_ { r = deleting(r); }
            r.meta.create_succeeded_at_ms = created_ago.map(|ago| NOW - ago);
            let obs = Observation { exists, up_to_date, available, ..Observation::default() };
            let t = Timing::default();
            let p = plan(&r, &obs, NOW, &t);
            let allows = |x| r.spec.allows(x);
            match p.call {
                Call::Create => {
                    proptest::prop_assert!(allows(Create) && !exists && !deleting_);
                    proptest::prop_assert!(created_ago.is_none_or(|a| a >= 30_000));
                }
                Call::Update => proptest::prop_assert!(allows(Update) && exists && !up_to_date && !deleting_),
                Call::Delete => proptest::prop_assert!(deleting_ && exists),
                Call::Release => proptest::prop_assert!(deleting_ && !exists),
                Call::Nothing => {}
            }
            for c in &p.status.conditions {
                proptest::prop_assert!(c.observed_generation >= 3);
            }
        }
    }
}
