//! Pure: a runtime's [`PodState`] → a Kubernetes `PodStatus`, as the kubelet computes it
//! (phase from the containers' states and the restart policy; conditions `PodScheduled`,
//! `Initialized`, `ContainersReady` and `Ready`; container statuses; addresses and start time).
//!
//! Transition times are kept from the previous status while a condition's status is unchanged,
//! so writing the same state twice changes nothing.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    ContainerState as K8sContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::runtime::{ContainerPhase, ContainerState, PodState, RestartPolicy};

/// Converts a system time into a Kubernetes time (whole seconds, as the API keeps them).
pub fn to_time(at: SystemTime) -> Time {
    let ts = Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH);
    // The API stores seconds; rounding here keeps a status equal to what is read back.
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// The pod phase the kubelet reports for `containers` under the pod's restart policy.
pub(crate) fn phase(containers: &[ContainerState], policy: RestartPolicy) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.phase {
            ContainerPhase::Running { .. } => running += 1,
            ContainerPhase::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            ContainerPhase::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
            ContainerPhase::Waiting { .. } => waiting += 1,
        }
    }
    if containers.is_empty() || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    // Everything has stopped at least once.
    match policy {
        RestartPolicy::Always => "Running",
        RestartPolicy::OnFailure if succeeded == stopped => "Succeeded",
        RestartPolicy::OnFailure => "Running",
        RestartPolicy::Never if succeeded == stopped => "Succeeded",
        RestartPolicy::Never => "Failed",
    }
}

fn k8s_state(phase: &ContainerPhase) -> K8sContainerState {
    match phase {
        ContainerPhase::Waiting { reason, message } => K8sContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..K8sContainerState::default()
        },
        ContainerPhase::Running { started_at } => K8sContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(to_time(*started_at)),
            }),
            ..K8sContainerState::default()
        },
        ContainerPhase::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => K8sContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                message: message.clone(),
                started_at: started_at.map(to_time),
                finished_at: Some(to_time(*finished_at)),
                container_id: None,
            }),
            ..K8sContainerState::default()
        },
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let earlier = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        last_transition_time: Some(earlier.unwrap_or_else(|| to_time(now))),
        reason: reason.map(str::to_owned),
        ..PodCondition::default()
    }
}

/// The status to write for `pod` given what the runtime reports, the node's address, the
/// status last read or written (`previous`, for transition times) and the time now.
pub fn pod_status(
    pod: &Pod,
    state: &PodState,
    host_ip: &str,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodStatus {
    let policy = RestartPolicy::of(pod);
    let spec_containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let statuses: Vec<ContainerStatus> = state
        .containers
        .iter()
        .map(|c| {
            let image = spec_containers
                .iter()
                .find(|s| s.name == c.name)
                .and_then(|s| s.image.clone())
                .unwrap_or_default();
            let running = matches!(c.phase, ContainerPhase::Running { .. });
            ContainerStatus {
                name: c.name.clone(),
                image,
                image_id: String::new(),
                ready: c.ready && running,
                started: Some(running),
                restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
                state: Some(k8s_state(&c.phase)),
                last_state: Some(
                    c.last_termination
                        .as_ref()
                        .map(k8s_state)
                        .unwrap_or_default(),
                ),
                ..ContainerStatus::default()
            }
        })
        .collect();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let phase = phase(&state.containers, policy);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_ready = |ok: bool| {
        if ok {
            None
        } else if terminal {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        }
    };
    let conditions = vec![
        condition("Initialized", true, None, previous, now),
        condition("Ready", all_ready, not_ready(all_ready), previous, now),
        condition(
            "ContainersReady",
            all_ready,
            not_ready(all_ready),
            previous,
            now,
        ),
        condition("PodScheduled", true, None, previous, now),
    ];
    let pod_ip = state.pod_ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        host_ip: Some(host_ip.to_owned()),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: state.started_at.map(to_time),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        ..PodStatus::default()
    }
}

/// Whether `new` differs from `old` in anything but heartbeat-like details: what decides
/// whether a status must be written.
pub fn status_changed(old: Option<&PodStatus>, new: &PodStatus) -> bool {
    old != Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_agent::runtime::PodKey;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"restartPolicy": policy, "containers": [
                {"name": "app", "image": "busybox"}, {"name": "side", "image": "x"}]}
        }))
        .expect("valid pod")
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn running(name: &str, ready: bool) -> ContainerState {
        let mut c = ContainerState::creating(name);
        c.phase = ContainerPhase::Running { started_at: at(1) };
        c.ready = ready;
        c
    }

    fn state(containers: Vec<ContainerState>) -> PodState {
        PodState {
            key: PodKey::new("ns", "web", "u1"),
            pod_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 1, 0, 7))),
            started_at: Some(at(0)),
            containers,
        }
    }

    fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
            .expect("condition present")
    }

    #[test]
    fn running_and_ready_when_every_container_is() {
        let s = pod_status(
            &pod("Always"),
            &state(vec![running("app", true), running("side", true)]),
            "127.0.0.1",
            None,
            at(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.7"));
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.start_time, Some(to_time(at(0))));
        let cs = s.container_statuses.expect("statuses");
        assert_eq!(cs[0].image, "busybox");
        assert!(
            cs[0]
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_some()
        );
    }

    #[test]
    fn one_unready_container_keeps_the_pod_unready() {
        let s = pod_status(
            &pod("Always"),
            &state(vec![running("app", true), running("side", false)]),
            "127.0.0.1",
            None,
            at(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
    }

    #[test]
    fn a_container_that_never_started_keeps_the_pod_pending_with_its_reason() {
        let mut broken = ContainerState::creating("app");
        broken.phase = ContainerPhase::waiting(
            "RunContainerError",
            Some("cannot run `/no/such`".to_owned()),
        );
        let s = pod_status(
            &pod("Always"),
            &state(vec![broken, running("side", true)]),
            "127.0.0.1",
            None,
            at(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let waiting = s.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|s| s.waiting)
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("RunContainerError"));
        assert_eq!(waiting.message.as_deref(), Some("cannot run `/no/such`"));
    }

    #[test]
    fn crash_loops_are_running_with_restarts_and_the_last_exit() {
        let mut looping = ContainerState::creating("app");
        looping.phase = ContainerPhase::waiting("CrashLoopBackOff", None);
        looping.restart_count = 3;
        looping.last_termination = Some(ContainerPhase::terminated(
            1,
            None,
            Some(at(1)),
            at(2),
            None,
        ));
        let s = pod_status(
            &pod("Always"),
            &state(vec![looping, running("side", true)]),
            "127.0.0.1",
            None,
            at(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = &s.container_statuses.expect("statuses")[0];
        assert_eq!(c.restart_count, 3);
        let last = c
            .last_state
            .clone()
            .and_then(|s| s.terminated)
            .expect("terminated");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    }

    #[test]
    fn terminal_phases_follow_the_restart_policy() {
        let done = |code| {
            let mut c = ContainerState::creating("app");
            c.phase = ContainerPhase::terminated(code, None, Some(at(1)), at(2), None);
            c
        };
        let cases = [
            ("Never", 0, 0, "Succeeded"),
            ("Never", 0, 1, "Failed"),
            ("OnFailure", 0, 0, "Succeeded"),
            ("OnFailure", 1, 0, "Running"),
            ("Always", 0, 0, "Running"),
        ];
        for (policy, a, b, want) in cases {
            let s = pod_status(
                &pod(policy),
                &state(vec![done(a), done(b)]),
                "127.0.0.1",
                None,
                at(5),
            );
            assert_eq!(s.phase.as_deref(), Some(want), "{policy} {a} {b}");
        }
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let p = pod("Always");
        let first = pod_status(
            &p,
            &state(vec![running("app", false), running("side", true)]),
            "h",
            None,
            at(5),
        );
        let again = pod_status(
            &p,
            &state(vec![running("app", false), running("side", true)]),
            "h",
            Some(&first),
            at(9),
        );
        assert!(
            !status_changed(Some(&first), &again),
            "same state, same status"
        );
        let ready = pod_status(
            &p,
            &state(vec![running("app", true), running("side", true)]),
            "h",
            Some(&again),
            at(12),
        );
        assert!(status_changed(Some(&again), &ready));
        assert_eq!(
            cond(&ready, "Ready").last_transition_time,
            Some(to_time(at(12)))
        );
        assert_eq!(
            cond(&ready, "PodScheduled").last_transition_time,
            Some(to_time(at(5)))
        );
    }
}
