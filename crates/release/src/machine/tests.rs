//! Table-driven tests of the machine with a simulated engine: no I/O, no clock, no tasks.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::*;
use crate::plan::GroupView;
use crate::record::RolloutSpec;
use crate::registry::StrategySpec;
use crate::{BlueGreen, Canary, CanaryStep, Recreate};
use rorqual_core::model::{AppSpec, ContainerSpec};

fn app(version: &str, replicas: u32) -> AppSpec {
    AppSpec::new(
        "web",
        vec![ContainerSpec::new("app", ["demo"]).env("V", version)],
    )
    .replicas(replicas)
}

fn rev(version: &str) -> Revision {
    app(version, 1).revision()
}

/// A simulated application: groups (desired, current, available) and identities; new
/// instances become available at the next observation unless their revision is stuck.
#[derive(Debug, Clone)]
struct Sim {
    now: SystemTime,
    groups: Vec<GroupView>,
    identities: Vec<IdentityView>,
    stuck: BTreeSet<Revision>,
    /// Every (effect index, effect) applied, in order.
    log: Vec<Effect>,
}

impl Sim {
    fn new() -> Self {
        Sim {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            groups: Vec::new(),
            identities: Vec::new(),
            stuck: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    fn with_group(mut self, version: &str, n: u32) -> Self {
        self.groups.push(GroupView::new(rev(version), n, n, n));
        self
    }

    fn with_identities(mut self, version: &str, n: u32) -> Self {
        self.identities = (0..n)
            .map(|o| IdentityView::new(o, rev(version), true))
            .collect();
        self
    }

    fn count(&self, version: &str) -> (u32, u32) {
        self.groups
            .iter()
            .find(|g| g.revision == rev(version))
            .map_or((0, 0), |g| (g.current, g.available))
    }

    fn available_total(&self) -> u32 {
        self.groups.iter().map(|g| g.available).sum()
    }

    fn apply(&mut self, effects: &[Effect]) {
        for e in effects {
            self.log.push(e.clone());
            match e {
                Effect::Scale { revision, replicas } => {
                    match self.groups.iter_mut().find(|g| &g.revision == revision) {
                        // Starting is immediate; stopping takes until the next settle.
                        Some(g) if *replicas >= g.current => {
                            g.desired = *replicas;
                            g.current = *replicas;
                        }
                        Some(g) => {
                            g.desired = *replicas;
                            g.available = g.available.min(*replicas);
                        }
                        None => self.groups.push(GroupView::new(
                            revision.clone(),
                            *replicas,
                            *replicas,
                            0,
                        )),
                    }
                }
                Effect::DeleteGroup(revision) => self.groups.retain(|g| &g.revision != revision),
                Effect::MoveIdentity { ordinal, revision } => {
                    if let Some(i) = self.identities.iter_mut().find(|i| i.ordinal == *ordinal) {
                        i.revision = revision.clone();
                        i.ready = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// Instances stopping are gone and instances started become ready (except stuck
    /// revisions).
    fn settle(&mut self) {
        for g in &mut self.groups {
            g.current = g.desired;
            if !self.stuck.contains(&g.revision) {
                g.available = g.current;
            }
        }
        for i in &mut self.identities {
            if !self.stuck.contains(&i.revision) {
                i.ready = true;
            }
        }
    }

    fn observation(&self) -> Observation {
        Observation::new(self.groups.clone(), self.identities.clone())
    }

    /// One step of the machine at the sim's time; applies the effects.
    fn step(&mut self, m: &RolloutMachine<'_>, r: &mut Rollout, routes: bool) -> Transition {
        let obs = self.observation();
        let mut input = Input::new(self.now, &obs);
        input.routes_traffic = routes;
        let t = m.step(r, &input);
        self.apply(&t.effects);
        t
    }

    /// Steps until the rollout pauses (at most 20 steps).
    fn drive_to_pause(&mut self, m: &RolloutMachine<'_>, r: &mut Rollout, routes: bool) {
        self.drive(m, r, routes, 20, |r, _| {
            matches!(r.state, RolloutState::Paused { .. })
        });
    }

    /// Steps `n` times, settling instances and moving time to each wake.
    fn run(&mut self, m: &RolloutMachine<'_>, r: &mut Rollout, routes: bool, n: usize) {
        for _ in 0..n {
            let t = self.step(m, r, routes);
            self.settle();
            let next = t.wake.unwrap_or(self.now + Duration::from_secs(1));
            self.now = next.max(self.now + Duration::from_millis(1));
        }
    }

    /// Steps until `done` (at most `max` steps), settling instances and moving time to each
    /// wake (at least a second).
    fn drive(
        &mut self,
        m: &RolloutMachine<'_>,
        r: &mut Rollout,
        routes: bool,
        max: usize,
        done: impl Fn(&Rollout, &Sim) -> bool,
    ) {
        for _ in 0..max {
            if done(r, self) {
                return;
            }
            let t = self.step(m, r, routes);
            self.settle();
            let next = t.wake.unwrap_or(self.now + Duration::from_secs(1));
            self.now = next.max(self.now + Duration::from_millis(1));
        }
        assert!(
            done(r, self),
            "not reached in {max} steps: {:?}\n{:?}",
            r.state,
            self.groups
        );
    }
}

/// A rollout of `to` over a stable `from`, both with `replicas`.
fn rollout(from: &str, to: &str, replicas: u32, strategy: impl Into<StrategySpec>) -> Rollout {
    let mut r = Rollout::new(
        RolloutSpec::new(app(to, replicas), strategy),
        Sim::new().now,
    );
    r.stable = Some(rev(from));
    r.stable_spec = Some(app(from, replicas));
    r.routed = vec![Routed {
        revision: rev(from),
        weight: 100,
        available: replicas,
    }];
    r
}

fn scale(version: &str, n: u32) -> Effect {
    Effect::Scale {
        revision: rev(version),
        replicas: n,
    }
}

fn position(log: &[Effect], pred: impl Fn(&Effect) -> bool) -> Option<usize> {
    log.iter().position(pred)
}

#[test]
fn promote_is_capped_at_the_last_step_and_the_final_switch_waits_for_availability() {
    let canary = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause_until_promoted(),
    ]);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 10, canary.clone());
    let mut sim = Sim::new().with_group("v1", 10);
    sim.drive_to_pause(&m, &mut r, false);
    assert_eq!(r.step, 1);
    m.verb(&mut r, Verb::Promote, sim.now).unwrap();
    assert_eq!(r.step, 2, "to the final step");
    let err = m.verb(&mut r, Verb::Promote, sim.now).unwrap_err();
    assert!(
        matches!(err, VerbRefusal::NotSkippable { step: 2, .. }),
        "{err}"
    );
    assert_eq!(r.step, 2, "a refused promote changes nothing");
    // The canary's new instances never become ready: the stable revision keeps serving.
    sim.stuck.insert(rev("v2"));
    sim.run(&m, &mut r, false, 30);
    assert_ne!(r.state, RolloutState::Healthy);
    assert!(sim.count("v1").1 > 0, "stable kept: {:?}", sim.groups);
    assert!(
        sim.available_total() >= 8,
        "within maxUnavailable: {:?}",
        sim.groups
    );
    assert_eq!(r.stable, Some(rev("v1")));
}

#[test]
fn blue_green_promote_does_not_skip_a_running_pre_promotion_analysis() {
    let bg = BlueGreen::default();
    let m = RolloutMachine::new(&bg);
    let mut r = rollout("v1", "v2", 4, bg.clone());
    r.step = 1;
    let err = m
        .verb(&mut r, Verb::Promote, SystemTime::UNIX_EPOCH)
        .unwrap_err();
    assert!(
        err.to_string().contains("promote does not skip it"),
        "{err}"
    );
    r.step = 2;
    r.state = RolloutState::WaitingApproval {
        message: "promote?".into(),
    };
    m.verb(&mut r, Verb::Promote, SystemTime::UNIX_EPOCH)
        .unwrap();
    assert_eq!(
        r.step, 3,
        "the promotion gate is passed, to the full scale-up"
    );
}

#[test]
fn traffic_moves_before_instances_that_receive_it_are_removed() {
    let canary = Canary::new(vec![
        CanaryStep::SetWeight(50),
        CanaryStep::pause_until_promoted(),
    ]);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 10, canary.clone());
    let mut sim = Sim::new().with_group("v1", 10);
    sim.drive_to_pause(&m, &mut r, true);
    assert_eq!(r.routed_weight(&rev("v2")), 50);
    // A third revision arrives mid-rollout.
    sim.log.clear();
    r.spec = RolloutSpec::new(app("v3", 10), canary.clone());
    r.restart(sim.now, "rollout updated");
    r.target = rev("v3");
    sim.drive(&m, &mut r, true, 20, |_, s| s.count("v2").0 == 0);
    let split = position(
        &sim.log,
        |e| matches!(e, Effect::SetSplit(w) if !w.iter().any(|(rv, w)| rv == &rev("v2") && *w > 0)),
    )
    .expect("v2's traffic moved");
    let down = position(&sim.log, |e| *e == scale("v2", 0)).unwrap();
    assert!(split < down, "traffic first: {:?}", sim.log);
    // An abort: all traffic back to v1 before v3 is removed.
    sim.drive_to_pause(&m, &mut r, true);
    sim.log.clear();
    m.verb(&mut r, Verb::Abort, sim.now).unwrap();
    sim.drive(&m, &mut r, true, 80, |_, s| s.count("v3").0 == 0);
    let split = position(&sim.log, |e| *e == Effect::SetSplit(vec![(rev("v1"), 100)])).unwrap();
    let down = position(&sim.log, |e| *e == scale("v3", 0)).unwrap();
    assert!(split < down, "{:?}", sim.log);
}

#[test]
fn the_switched_revision_is_stable_during_the_scale_down_delay() {
    let canary = Canary::new(vec![CanaryStep::SetWeight(50)]).scale_down_delay(30);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 4, canary.clone());
    let mut sim = Sim::new().with_group("v1", 4);
    sim.drive(&m, &mut r, true, 30, |r, _| {
        r.state == RolloutState::Healthy
    });
    assert_eq!(r.stable, Some(rev("v2")), "stable at once");
    assert_eq!(r.retiring.len(), 1);
    assert_eq!(sim.count("v1").0, 4, "kept for its delay");
    assert_eq!(r.routed_weight(&rev("v2")), 100);
    // A new release inside the delay starts from v2, and v1 never gets traffic back.
    r.spec = RolloutSpec::new(app("v3", 4), canary.clone());
    r.restart(sim.now, "rollout updated");
    r.target = rev("v3");
    sim.log.clear();
    sim.drive(&m, &mut r, true, 60, |r, _| r.stable == Some(rev("v3")));
    assert!(
        !sim.log.iter().any(|e| matches!(e, Effect::SetSplit(w) if w.iter().any(|(rv, w)| rv == &rev("v1") && *w > 0))),
        "{:?}",
        sim.log
    );
    assert!(sim.count("v2").0 > 0 || r.retiring.iter().any(|x| x.revision == rev("v2")));
}

#[test]
fn the_old_revision_goes_only_after_its_delay() {
    let canary = Canary::new(vec![CanaryStep::SetWeight(50)]).scale_down_delay(30);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 4, canary.clone());
    let mut sim = Sim::new().with_group("v1", 4);
    sim.drive(&m, &mut r, true, 30, |r, _| {
        r.state == RolloutState::Healthy
    });
    let switched = r.retiring[0].until - r.retiring[0].delay;
    sim.drive(&m, &mut r, true, 60, |_, s| s.count("v1") == (0, 0));
    let waited = sim.now.duration_since(switched).unwrap();
    assert!(waited >= Duration::from_secs(30), "{waited:?}");
    sim.run(&m, &mut r, true, 3);
    assert!(r.retiring.is_empty(), "{:?}", r.retiring);
    assert_eq!(
        sim.groups.len(),
        1,
        "the old group is deleted: {:?}",
        sim.groups
    );
}

#[test]
fn aborting_a_basic_canary_removes_it_at_once() {
    let canary = Canary::new(vec![
        CanaryStep::SetWeight(50),
        CanaryStep::pause_until_promoted(),
    ]);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 10, canary.clone());
    let mut sim = Sim::new().with_group("v1", 10);
    sim.drive_to_pause(&m, &mut r, false);
    m.verb(&mut r, Verb::Abort, sim.now).unwrap();
    let t = sim.step(&m, &mut r, false);
    assert!(t.effects.contains(&scale("v2", 0)), "{:?}", t.effects);
    sim.settle();
    sim.drive(&m, &mut r, false, 20, |r, _| {
        matches!(r.state, RolloutState::Degraded { .. })
    });
    assert_eq!(RolloutStatus::of(&r).weight, Some(0));
}

#[test]
fn abort_delay_with_a_router_and_zero_means_never() {
    for (delay, removed) in [(30, true), (0, false)] {
        let canary = Canary::new(vec![
            CanaryStep::SetWeight(50),
            CanaryStep::pause_until_promoted(),
        ]);
        let m = RolloutMachine::new(&canary);
        let mut r = rollout("v1", "v2", 4, canary.clone());
        r.spec = r.spec.clone().abort_scale_down_delay(delay);
        let mut sim = Sim::new().with_group("v1", 4);
        sim.drive_to_pause(&m, &mut r, true);
        m.verb(&mut r, Verb::Abort, sim.now).unwrap();
        let aborted = sim.now;
        sim.drive(&m, &mut r, true, 40, |r, _| {
            matches!(r.state, RolloutState::Degraded { .. })
        });
        assert_eq!(
            sim.count("v2").0 == 0,
            removed,
            "delay {delay}: {:?}",
            sim.groups
        );
        if removed {
            assert!(sim.now.duration_since(aborted).unwrap() >= Duration::from_secs(30));
        }
        assert_eq!(r.routed_weight(&rev("v2")), 0);
    }
}

#[test]
fn stateful_fast_rollback_moves_one_identity_at_a_time() {
    let canary = Canary::new(vec![CanaryStep::SetWeight(100)]);
    let m = RolloutMachine::new(&canary);
    let spec = RolloutSpec::new(app("v1", 5).kind(WorkloadKind::Stateful), canary.clone());
    let mut r = Rollout::new(spec, Sim::new().now);
    r.stable = Some(r.target.clone());
    r.stable_spec = Some(app("v1", 5).kind(WorkloadKind::Stateful));
    let mut sim = Sim::new().with_identities("v2", 5);
    let v2 = app("v2", 5).kind(WorkloadKind::Stateful).revision();
    sim.identities
        .iter_mut()
        .for_each(|i| i.revision = v2.clone());
    // The engine was asked for five identities.
    sim.groups = vec![GroupView::new(v2, 5, 5, 5)];
    let v1 = r.target.clone();
    for _ in 0..20 {
        let t = sim.step(&m, &mut r, false);
        let moves = t
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::MoveIdentity { .. }))
            .count();
        assert!(moves <= 1, "{:?}", t.effects);
        sim.settle();
        sim.now += Duration::from_secs(1);
    }
    assert!(sim.identities.iter().all(|i| i.revision == v1));
    assert_eq!(r.state, RolloutState::Healthy);
}

#[test]
fn aborting_a_recreate_never_runs_both_revisions() {
    let recreate = Recreate::default();
    let m = RolloutMachine::new(&recreate);
    let mut r = rollout("v1", "v2", 3, Recreate::default());
    let mut sim = Sim::new().with_group("v1", 3);
    sim.drive(&m, &mut r, false, 10, |_, s| s.count("v2").1 == 3);
    m.verb(&mut r, Verb::Abort, sim.now)
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..20 {
        sim.step(&m, &mut r, false);
        assert!(
            sim.count("v1").0 == 0 || sim.count("v2").0 == 0,
            "both run: {:?}",
            sim.groups
        );
        sim.settle();
        sim.now += Duration::from_secs(1);
    }
    assert!(
        matches!(r.state, RolloutState::Degraded { .. }),
        "{:?}",
        r.state
    );
    assert_eq!(sim.count("v1"), (3, 3));
}

#[test]
fn verbs_refuse_clearly_and_repeat_harmlessly() {
    let canary = Canary::new(vec![CanaryStep::pause_until_promoted()]);
    let m = RolloutMachine::new(&canary);
    let now = SystemTime::UNIX_EPOCH;
    let mut healthy = rollout("v1", "v1", 2, canary.clone());
    healthy.state = RolloutState::Healthy;
    let err = m.verb(&mut healthy, Verb::Promote, now).unwrap_err();
    assert_eq!(err.to_string(), "is Healthy: nothing to promote");
    let mut r = rollout("v1", "v2", 2, canary.clone());
    m.verb(&mut r, Verb::Pause, now).unwrap();
    m.verb(&mut r, Verb::Pause, now).unwrap();
    assert_eq!(
        r.state,
        RolloutState::Paused {
            why: PauseReason::Operator
        }
    );
    m.verb(&mut r, Verb::Resume, now).unwrap();
    assert_eq!(r.state, RolloutState::Progressing);
    m.verb(&mut r, Verb::Abort, now).unwrap();
    let at = r.state.clone();
    m.verb(&mut r, Verb::Abort, now + Duration::from_secs(5))
        .unwrap();
    assert_eq!(r.state, at, "a second abort changes nothing");
    assert_eq!(
        m.verb(&mut r, Verb::Promote, now).unwrap_err(),
        VerbRefusal::Aborted
    );
    let attempt = r.attempt;
    m.verb(&mut r, Verb::Retry, now).unwrap();
    assert_eq!((r.attempt, r.step), (attempt + 1, 0));
    assert!(matches!(
        m.verb(&mut r, Verb::Retry, now).unwrap_err(),
        VerbRefusal::NotRetryable(_)
    ));
}

#[test]
fn approval_requests_carry_what_the_approver_needs() {
    let canary = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::Approval(crate::ApprovalStep::default()),
    ]);
    let m = RolloutMachine::new(&canary).cluster(Some("prod-sh"));
    let mut r = rollout("v1", "v2", 10, canary.clone());
    r.spec = r.spec.clone().released("alice", Some("3f2c1d0".into()));
    let mut sim = Sim::new().with_group("v1", 10);
    sim.drive(&m, &mut r, false, 20, |r, _| {
        matches!(r.state, RolloutState::WaitingApproval { .. })
    });
    let req = sim
        .log
        .iter()
        .find_map(|e| match e {
            Effect::RequestApproval(req) => Some((**req).clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(req.key.step, 1);
    assert_eq!(req.key.attempt, r.attempt);
    assert_eq!(req.context.cluster.as_deref(), Some("prod-sh"));
    assert_eq!(req.context.step_count, 2);
    assert_eq!(req.context.updated_percent, (sim.count("v2").0 * 100) / 10);
    assert_eq!(req.context.released_by.as_deref(), Some("alice"));
    assert_eq!(req.context.commit.as_deref(), Some("3f2c1d0"));
    // Asked once, however often the machine looks again.
    let before = sim.log.len();
    sim.step(&m, &mut r, false);
    assert!(
        !sim.log[before..]
            .iter()
            .any(|e| matches!(e, Effect::RequestApproval(_)))
    );
    // A rejection aborts.
    let obs = sim.observation();
    let mut input = Input::new(sim.now, &obs);
    input.approval = Some(false);
    m.step(&mut r, &input);
    assert!(r.state.is_aborted(), "{:?}", r.state);
}

#[test]
fn one_decision_passes_one_approval_step() {
    let canary = Canary::new(vec![
        CanaryStep::Approval(crate::ApprovalStep::default()),
        CanaryStep::Approval(crate::ApprovalStep::default()),
    ]);
    let m = RolloutMachine::new(&canary);
    let mut r = rollout("v1", "v2", 4, canary.clone());
    let mut sim = Sim::new().with_group("v1", 4);
    sim.drive(&m, &mut r, false, 10, |r, _| {
        matches!(r.state, RolloutState::WaitingApproval { .. })
    });
    assert_eq!(r.step, 0);
    let obs = sim.observation();
    let mut input = Input::new(sim.now, &obs);
    input.approval = Some(true);
    m.step(&mut r, &input);
    assert_eq!(r.step, 1, "the first approval is passed");
    assert!(
        matches!(r.state, RolloutState::WaitingApproval { .. }),
        "the second waits for its own decision: {:?}",
        r.state
    );
}

#[test]
fn recreate_behind_a_traffic_router_releases_and_aborts() {
    let recreate = Recreate::default();
    let m = RolloutMachine::new(&recreate);
    let mut r = rollout("v1", "v2", 3, Recreate::default());
    let mut sim = Sim::new().with_group("v1", 3);
    sim.drive(&m, &mut r, true, 20, |_, s| s.count("v2").1 == 3);
    assert_eq!(sim.count("v1").0, 0);
    let mut r = rollout("v1", "v2", 3, Recreate::default());
    let mut sim = Sim::new().with_group("v1", 3);
    sim.drive(&m, &mut r, true, 20, |_, s| {
        s.count("v2").1 == 3 && s.count("v1").0 == 0
    });
    m.verb(&mut r, Verb::Abort, sim.now).unwrap();
    sim.drive(&m, &mut r, true, 20, |r, _| {
        matches!(r.state, RolloutState::Degraded { .. })
    });
    assert_eq!(sim.count("v1"), (3, 3));
    assert_eq!(sim.count("v2").0, 0);
}
