//! [`SimulatedRuntime`]: pods that run nowhere, moving through kwok-like stages on timers
//! (`ContainerCreating` → `Running` → ready), with injectable faults: a crash after some time
//! (then restarts with the kubelet's backoff, or a terminal phase under `restartPolicy:
//! Never`), an exit code, or never becoming ready. For scale tests of controllers and
//! schedulers: thousands of pods cost a timer each.
//!
//! Faults come from the [`SimulatedConfig`] (every pod) or from a pod's annotations (that pod):
//!
//! | annotation | meaning |
//! |---|---|
//! | `sim.rorqual.io/start-delay` | seconds from accepted to running (default from the config) |
//! | `sim.rorqual.io/ready-delay` | seconds from running to ready |
//! | `sim.rorqual.io/crash-after` | seconds each run lasts before the process "exits" |
//! | `sim.rorqual.io/exit-code` | the exit code of that exit (default 1) |
//! | `sim.rorqual.io/never-ready` | `"true"`: running but never ready |
//!
//! The stage arithmetic is the pure [`StagePlan::state_at`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use parking_lot::{Mutex, RwLock};
use rorqual_core::backoff::Backoff;

use super::{
    ContainerPhase, ContainerState, PodKey, PodNotifier, PodRuntime, PodState, RestartPolicy,
    RuntimeError,
};
use crate::node_agent::address::AddressPool;

/// Annotation: seconds from accepted to running.
pub const START_DELAY_ANNOTATION: &str = "sim.rorqual.io/start-delay";
/// Annotation: seconds from running to ready.
pub const READY_DELAY_ANNOTATION: &str = "sim.rorqual.io/ready-delay";
/// Annotation: seconds each run lasts before the simulated process exits.
pub const CRASH_AFTER_ANNOTATION: &str = "sim.rorqual.io/crash-after";
/// Annotation: the exit code of a simulated exit.
pub const EXIT_CODE_ANNOTATION: &str = "sim.rorqual.io/exit-code";
/// Annotation: `"true"` keeps the pod's containers unready.
pub const NEVER_READY_ANNOTATION: &str = "sim.rorqual.io/never-ready";

/// How simulated pods move through their stages, and which faults they have.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StagePlan {
    /// From accepted to running.
    pub start_delay: Duration,
    /// From running to ready.
    pub ready_delay: Duration,
    /// Each run exits after this long (`None`: runs until deleted).
    pub crash_after: Option<Duration>,
    /// The exit code of such an exit.
    pub exit_code: i32,
    /// Running but never ready.
    pub never_ready: bool,
    /// The delays between restarts (the first restart is immediate, as the kubelet's).
    pub restart_backoff: Backoff,
}

impl Default for StagePlan {
    fn default() -> Self {
        StagePlan {
            start_delay: Duration::from_millis(100),
            ready_delay: Duration::from_millis(100),
            crash_after: None,
            exit_code: 1,
            never_ready: false,
            restart_backoff: Backoff::KUBELET_RESTART,
        }
    }
}

/// One simulated container's state `elapsed` after its pod was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageState {
    /// Where it is, with times as offsets from acceptance.
    pub phase: StagePhase,
    /// Whether it is ready.
    pub ready: bool,
    /// How many times it restarted.
    pub restarts: u32,
    /// How its last run ended: (started, ended) offsets.
    pub last_run: Option<(Duration, Duration)>,
    /// When the state changes next (an offset), if ever.
    pub next_change: Option<Duration>,
}

/// A simulated container's phase, with times as offsets from the pod's acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagePhase {
    /// Not started yet.
    Creating,
    /// Running since the offset.
    Running(Duration),
    /// Waiting out a restart backoff.
    BackOff,
    /// Exited for good: (started, ended).
    Exited(Duration, Duration),
}

impl StagePlan {
    /// The plan of `pod`: `defaults` overridden by the pod's `sim.rorqual.io/*` annotations
    /// (unparsable values are ignored).
    pub fn for_pod(defaults: &StagePlan, pod: &Pod) -> StagePlan {
        let mut plan = defaults.clone();
        let Some(annotations) = pod.metadata.annotations.as_ref() else {
            return plan;
        };
        let seconds = |key: &str| {
            annotations
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
        };
        if let Some(d) = seconds(START_DELAY_ANNOTATION) {
            plan.start_delay = d;
        }
        if let Some(d) = seconds(READY_DELAY_ANNOTATION) {
            plan.ready_delay = d;
        }
        if let Some(d) = seconds(CRASH_AFTER_ANNOTATION) {
            plan.crash_after = Some(d);
        }
        if let Some(code) = annotations
            .get(EXIT_CODE_ANNOTATION)
            .and_then(|v| v.parse().ok())
        {
            plan.exit_code = code;
        }
        if annotations.get(NEVER_READY_ANNOTATION).map(String::as_str) == Some("true") {
            plan.never_ready = true;
        }
        plan
    }

    /// The state `elapsed` after acceptance under `policy`.
    pub(crate) fn state_at(&self, elapsed: Duration, policy: RestartPolicy) -> StageState {
        if elapsed < self.start_delay {
            return StageState {
                phase: StagePhase::Creating,
                ready: false,
                restarts: 0,
                last_run: None,
                next_change: Some(self.start_delay),
            };
        }
        let mut start = self.start_delay;
        let mut restarts = 0u32;
        let mut last_run = None;
        loop {
            let ready_at = (!self.never_ready).then(|| start + self.ready_delay);
            let end = self
                .crash_after
                .map(|c| start + c.max(Duration::from_millis(1)));
            let ready_before_end = |at: Duration| end.is_none_or(|e| at < e);
            if end.is_none_or(|e| elapsed < e) {
                let ready = ready_at.is_some_and(|at| elapsed >= at && ready_before_end(at));
                let next = [
                    ready_at.filter(|at| *at > elapsed && ready_before_end(*at)),
                    end,
                ]
                .into_iter()
                .flatten()
                .min();
                return StageState {
                    phase: StagePhase::Running(start),
                    ready,
                    restarts,
                    last_run,
                    next_change: next,
                };
            }
            let end = end.unwrap_or(start);
            if !policy.restarts(self.exit_code == 0) {
                return StageState {
                    phase: StagePhase::Exited(start, end),
                    ready: false,
                    restarts,
                    last_run,
                    next_change: None,
                };
            }
            last_run = Some((start, end));
            let backoff = if restarts == 0 {
                Duration::ZERO
            } else {
                self.restart_backoff.delay(restarts - 1)
            };
            if elapsed < end + backoff {
                return StageState {
                    phase: StagePhase::BackOff,
                    ready: false,
                    restarts,
                    last_run,
                    next_change: Some(end + backoff),
                };
            }
            start = end + backoff;
            restarts += 1;
        }
    }
}

/// Settings of a [`SimulatedRuntime`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimulatedConfig {
    /// The stages of every pod (annotations override them per pod).
    pub plan: StagePlan,
    /// The first pod address (default `10.88.0.0`; pods get distinct addresses from there).
    pub first_address: Ipv4Addr,
    /// How many addresses there are (default 65,536).
    pub addresses: u32,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            plan: StagePlan::default(),
            first_address: Ipv4Addr::new(10, 88, 0, 0),
            addresses: 1 << 16,
        }
    }
}

#[derive(Debug)]
struct SimPod {
    accepted: Instant,
    accepted_at: SystemTime,
    plan: StagePlan,
    policy: RestartPolicy,
    containers: Vec<String>,
    ip: Ipv4Addr,
    timer: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    notifier: RwLock<Option<PodNotifier>>,
}

impl Shared {
    fn notify(&self, key: &PodKey) {
        if let Some(n) = self.notifier.read().as_ref() {
            n(key);
        }
    }
}

/// A [`PodRuntime`] whose pods run nowhere: their states follow a [`StagePlan`] on timers.
#[derive(Clone)]
pub struct SimulatedRuntime {
    config: Arc<SimulatedConfig>,
    pods: Arc<Mutex<HashMap<PodKey, SimPod>>>,
    addresses: Arc<Mutex<AddressPool>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimulatedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedRuntime")
            .field("config", &self.config)
            .field("pods", &self.pods.lock().len())
            .finish_non_exhaustive()
    }
}

impl SimulatedRuntime {
    /// A runtime with `config`.
    pub fn new(config: SimulatedConfig) -> Self {
        let addresses = AddressPool::new(config.first_address, config.addresses);
        SimulatedRuntime {
            config: Arc::new(config),
            pods: Arc::default(),
            addresses: Arc::new(Mutex::new(addresses)),
            shared: Arc::default(),
        }
    }

    /// How many pods it runs.
    pub fn len(&self) -> usize {
        self.pods.lock().len()
    }

    /// Whether it runs no pod.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for SimulatedRuntime {
    fn default() -> Self {
        SimulatedRuntime::new(SimulatedConfig::default())
    }
}

fn state_of(key: &PodKey, pod: &SimPod, now: Instant) -> PodState {
    let elapsed = now.saturating_duration_since(pod.accepted);
    let stage = pod.plan.state_at(elapsed, pod.policy);
    let at = |offset: Duration| pod.accepted_at + offset;
    let terminated = |(start, end): (Duration, Duration)| {
        ContainerPhase::terminated(pod.plan.exit_code, None, Some(at(start)), at(end), None)
    };
    let phase = match stage.phase {
        StagePhase::Creating => ContainerPhase::waiting("ContainerCreating", None),
        StagePhase::Running(since) => ContainerPhase::Running {
            started_at: at(since),
        },
        StagePhase::BackOff => ContainerPhase::waiting(
            "CrashLoopBackOff",
            Some(format!("back-off restarting failed container of pod {key}")),
        ),
        StagePhase::Exited(start, end) => terminated((start, end)),
    };
    PodState {
        key: key.clone(),
        pod_ip: Some(IpAddr::V4(pod.ip)),
        started_at: Some(pod.accepted_at),
        containers: pod
            .containers
            .iter()
            .map(|name| {
                let mut c = ContainerState::creating(name.clone());
                c.phase = phase.clone();
                c.ready = stage.ready;
                c.restart_count = stage.restarts;
                c.last_termination = stage.last_run.map(terminated);
                c
            })
            .collect(),
    }
}

#[async_trait]
impl PodRuntime for SimulatedRuntime {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    async fn create_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        let Some(key) = PodKey::of(pod) else {
            return Ok(());
        };
        let mut pods = self.pods.lock();
        if pods.contains_key(&key) {
            return Ok(());
        }
        let ip = {
            let mut pool = self.addresses.lock();
            pool.allocate()
                .ok_or_else(|| RuntimeError::AddressesExhausted {
                    range: pool.describe(),
                    used: pool.used(),
                })?
        };
        let plan = StagePlan::for_pod(&self.config.plan, pod);
        let policy = RestartPolicy::of(pod);
        let accepted = Instant::now();
        let timer = {
            let (plan, key, shared) = (plan.clone(), key.clone(), self.shared.clone());
            tokio::spawn(async move {
                shared.notify(&key);
                while let Some(next) = plan.state_at(accepted.elapsed(), policy).next_change {
                    tokio::time::sleep_until((accepted + next).into()).await;
                    shared.notify(&key);
                }
            })
        };
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        pods.insert(
            key,
            SimPod {
                accepted,
                accepted_at: SystemTime::now(),
                plan,
                policy,
                containers,
                ip,
                timer,
            },
        );
        Ok(())
    }

    async fn update_pod(&self, _pod: &Pod) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn delete_pod(&self, key: &PodKey, _grace: Duration) -> Result<(), RuntimeError> {
        if let Some(pod) = self.pods.lock().remove(key) {
            pod.timer.abort();
            self.addresses.lock().release(pod.ip);
        }
        Ok(())
    }

    async fn pod_state(&self, key: &PodKey) -> Result<Option<PodState>, RuntimeError> {
        let now = Instant::now();
        Ok(self.pods.lock().get(key).map(|p| state_of(key, p, now)))
    }

    async fn list_pods(&self) -> Result<Vec<PodKey>, RuntimeError> {
        Ok(self.pods.lock().keys().cloned().collect())
    }

    fn notify_pods(&self, notifier: PodNotifier) {
        *self.shared.notifier.write() = Some(notifier);
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        for (_, pod) in self.pods.lock().drain() {
            pod.timer.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn plan() -> StagePlan {
        StagePlan {
            start_delay: S(1),
            ready_delay: S(2),
            ..StagePlan::default()
        }
    }

    #[test]
    fn healthy_pods_start_then_become_ready() {
        let p = plan();
        let s = p.state_at(MS(500), RestartPolicy::Always);
        assert_eq!((s.phase, s.next_change), (StagePhase::Creating, Some(S(1))));
        let s = p.state_at(S(2), RestartPolicy::Always);
        assert_eq!(
            (s.phase, s.ready, s.next_change),
            (StagePhase::Running(S(1)), false, Some(S(3)))
        );
        let s = p.state_at(S(3), RestartPolicy::Always);
        assert_eq!((s.ready, s.next_change, s.restarts), (true, None, 0));
    }

    #[test]
    fn never_ready_stays_unready() {
        let p = StagePlan {
            never_ready: true,
            ..plan()
        };
        let s = p.state_at(S(100), RestartPolicy::Always);
        assert_eq!(
            (s.phase, s.ready, s.next_change),
            (StagePhase::Running(S(1)), false, None)
        );
    }

    #[test]
    fn crashes_restart_at_once_then_back_off() {
        // Runs 1–6 s, crashes; restarts at once; runs 6–11 s; backs off 10 s; runs 21–26 s;
        // backs off 20 s; runs from 46 s.
        let p = StagePlan {
            crash_after: Some(S(5)),
            ..plan()
        };
        let at = |s| p.state_at(S(s), RestartPolicy::Always);
        assert_eq!(
            (at(4).phase, at(4).ready, at(4).restarts),
            (StagePhase::Running(S(1)), true, 0)
        );
        assert_eq!(
            (at(7).phase, at(7).restarts, at(7).last_run),
            (StagePhase::Running(S(6)), 1, Some((S(1), S(6))))
        );
        assert_eq!(
            (at(12).phase, at(12).restarts, at(12).next_change),
            (StagePhase::BackOff, 1, Some(S(21)))
        );
        assert_eq!(
            (at(22).phase, at(22).restarts, at(22).ready),
            (StagePhase::Running(S(21)), 2, false)
        );
        assert_eq!(
            (at(30).phase, at(30).next_change),
            (StagePhase::BackOff, Some(S(46)))
        );
        assert_eq!(at(47).restarts, 3);
    }

    #[test]
    fn crashes_before_ready_are_never_ready() {
        let p = StagePlan {
            crash_after: Some(S(1)),
            ..plan()
        };
        let s = p.state_at(MS(1500), RestartPolicy::Always);
        assert_eq!(
            (s.ready, s.next_change),
            (false, Some(S(2))),
            "readiness at 3 s is after the crash"
        );
    }

    #[test]
    fn never_restart_ends_terminal() {
        let p = StagePlan {
            crash_after: Some(S(5)),
            exit_code: 0,
            ..plan()
        };
        let s = p.state_at(S(10), RestartPolicy::OnFailure);
        assert_eq!(
            (s.phase, s.next_change),
            (StagePhase::Exited(S(1), S(6)), None)
        );
        let s = p.state_at(S(10), RestartPolicy::Always);
        assert_eq!(s.restarts, 1);
    }

    #[test]
    fn annotations_override_the_defaults() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u", "annotations": {
                CRASH_AFTER_ANNOTATION: "2.5", EXIT_CODE_ANNOTATION: "3",
                NEVER_READY_ANNOTATION: "true", START_DELAY_ANNOTATION: "bogus"}},
            "spec": {"containers": []}
        }))
        .expect("valid pod");
        let p = StagePlan::for_pod(&plan(), &pod);
        assert_eq!(p.crash_after, Some(MS(2500)));
        assert_eq!((p.exit_code, p.never_ready, p.start_delay), (3, true, S(1)));
    }
}
