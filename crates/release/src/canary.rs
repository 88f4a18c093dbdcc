//! Canary: Argo Rollouts' steps (setWeight, setReplicas, pause, analysis, approval) with
//! optional background analysis; for stateful workloads the steps become partitions.
//!
//! Without a traffic router (the basic canary) traffic follows replica counts: a weight
//! becomes canary and stable counts by [`weighted_replica_counts`], and every reconcile moves
//! towards them the way Argo's `CalculateReplicaCountsForBasicCanary` does — never more than
//! `replicas + maxSurge` instances, never fewer than `replicas − maxUnavailable` available,
//! through weight increases, decreases, the final promotion and a roll-over to a third
//! revision. With a router the canary runs ⌈weight × replicas⌉ instances and the stable group
//! keeps full replicas until the rollout completes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::plan::{
    AnalysisRequest, AnalysisStep, Gate, GroupView, Plan, RolloutView, analysis_gate,
    stateful_moves,
};
use super::scale::{IntOrPercent, resolve_fenceposts};
use super::strategy::{ReleaseStrategy, StrategyError};
use crate::analysis::{DurationError, GoDuration};
use crate::traffic::weighted_replica_counts;
use rorqual_core::model::Revision;

/// One canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum CanaryStep {
    /// Send this percentage of traffic to the canary (without a router: that share of the
    /// instances, by [`weighted_replica_counts`]).
    SetWeight(u32),
    /// Run this many canary instances (int, or % of replicas rounded up), whatever the weight;
    /// without a router the stable group keeps the rest of the replicas.
    SetReplicas(IntOrPercent),
    /// Pause for `duration`, or until promoted when absent.
    Pause(PauseStep),
    /// Run an analysis; Successful continues, Failed/Error aborts, Inconclusive pauses.
    Analysis(AnalysisStep),
    /// Wait for an approval decision (or a promote).
    Approval(ApprovalStep),
}

impl CanaryStep {
    /// Pause for `seconds` (a negative value is kept, and rejected by validation).
    pub fn pause(seconds: i64) -> Self {
        CanaryStep::Pause(PauseStep {
            duration: Some(PauseDuration::from_secs(seconds)),
        })
    }

    /// Pause until promoted.
    pub fn pause_until_promoted() -> Self {
        CanaryStep::Pause(PauseStep { duration: None })
    }
}

/// A pause (`{"duration": 30}`, `{"duration": "1m30s"}`, or `{}` to wait for a promote).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PauseStep {
    /// How long; absent waits for a promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<PauseDuration>,
}

/// How long a canary pause lasts, in the forms Argo Rollouts accepts: whole seconds (`30`,
/// or the string `"30"`) or Go notation (`"30s"`, `"1m30s"`, `"1h"`, `"250ms"`).
///
/// A negative length (`-5`, `"-5s"`) is read rather than rejected, so that validation reports
/// it with its step alongside every other problem of the strategy. It is written back as whole
/// seconds when it has no fraction of a second (`90`), otherwise in Go notation (`"1500ms"`);
/// both read back as the same length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PauseDuration {
    negative: bool,
    length: Duration,
}

impl PauseDuration {
    /// `secs` seconds (negative values are kept for validation to report).
    pub const fn from_secs(secs: i64) -> Self {
        PauseDuration {
            negative: secs < 0,
            length: Duration::from_secs(secs.unsigned_abs()),
        }
    }

    /// Parses whole seconds or Go notation, with an optional sign (`"-5s"` is a negative
    /// length). The error names the text and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let text = text.trim();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let length = GoDuration::parse(unsigned)?.as_duration();
        Ok(PauseDuration {
            negative: negative && !length.is_zero(),
            length,
        })
    }

    /// Whether the length is below zero (invalid in a strategy).
    pub const fn is_negative(&self) -> bool {
        self.negative
    }

    /// The length, or `None` when it is negative.
    pub const fn to_duration(&self) -> Option<Duration> {
        if self.negative {
            None
        } else {
            Some(self.length)
        }
    }
}

impl From<Duration> for PauseDuration {
    fn from(length: Duration) -> Self {
        PauseDuration {
            negative: false,
            length,
        }
    }
}

impl FromStr for PauseDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        PauseDuration::parse(s)
    }
}

impl fmt::Display for PauseDuration {
    /// Go notation with a sign when negative: `-5s`, `1m30s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        write!(f, "{}", GoDuration(self.length))
    }
}

impl Serialize for PauseDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.length.as_secs()) {
            Ok(secs) if self.length.subsec_nanos() == 0 => {
                s.serialize_i64(if self.negative { -secs } else { secs })
            }
            _ => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for PauseDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PauseDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("whole seconds or a Go duration such as \"1m30s\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PauseDuration, E> {
                Ok(PauseDuration::from_secs(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PauseDuration, E> {
                Ok(PauseDuration::from(Duration::from_secs(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PauseDuration, E> {
                PauseDuration::parse(v)
                    .map_err(|err| E::custom(format!("invalid pause duration `{v}`: {err}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An approval step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ApprovalStep {
    /// What the approver is asked.
    #[serde(default)]
    pub message: Option<String>,
}

/// Background analysis running across steps from `startingStep` until the rollout is fully
/// promoted (through the final scale-up of the canary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct BackgroundAnalysis {
    /// The analysis.
    #[serde(flatten)]
    pub analysis: AnalysisStep,
    /// The step from which it runs (default 0).
    #[serde(default)]
    pub starting_step: usize,
}

/// The Canary strategy.
///
/// Without a traffic router the canary honours `maxSurge` and `maxUnavailable` (Argo's basic
/// canary, defaults 25 % each: surge rounded up, unavailable rounded down, and 1 unavailable
/// when both come out 0). For stateful workloads the steps become partitions and
/// `maxUnavailable` means how many identities move at once (default 1); `maxSurge` does not
/// apply (an identity exists once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Canary {
    /// The steps.
    pub steps: Vec<CanaryStep>,
    /// Background analysis.
    #[serde(default)]
    pub analysis: Option<BackgroundAnalysis>,
    /// Seconds the stable group is kept after full promotion with a traffic router (30).
    #[serde(default = "thirty")]
    pub scale_down_delay_seconds: u64,
    /// Stateless, without a traffic router: instances allowed above the replicas (default
    /// 25 %, rounded up).
    #[serde(default)]
    pub max_surge: Option<IntOrPercent>,
    /// Stateless, without a traffic router: instances allowed to be unavailable (default 25 %,
    /// rounded down). Stateful: identities moved at once (default 1).
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
}

fn thirty() -> u64 {
    30
}

const QUARTER: IntOrPercent = IntOrPercent::Percent(25);

/// What a step asks of the canary's size.
#[derive(Debug, Clone, Copy)]
enum Share {
    /// A traffic weight in percent.
    Weight(u32),
    /// An explicit number of canary instances.
    Replicas(IntOrPercent),
    /// The final promotion: everything on the canary.
    Full,
}

impl Canary {
    /// A canary with `steps`.
    pub fn new(steps: Vec<CanaryStep>) -> Self {
        Canary {
            steps,
            analysis: None,
            scale_down_delay_seconds: 30,
            max_surge: None,
            max_unavailable: None,
        }
    }

    /// Adds background analysis from `starting_step`.
    #[must_use]
    pub fn background(mut self, analysis: AnalysisStep, starting_step: usize) -> Self {
        self.analysis = Some(BackgroundAnalysis {
            analysis,
            starting_step,
        });
        self
    }

    /// Sets the scale-down delay.
    #[must_use]
    pub fn scale_down_delay(mut self, seconds: u64) -> Self {
        self.scale_down_delay_seconds = seconds;
        self
    }

    /// Sets maxSurge (stateless, without a traffic router).
    #[must_use]
    pub fn max_surge(mut self, surge: IntOrPercent) -> Self {
        self.max_surge = Some(surge);
        self
    }

    /// Sets maxUnavailable (stateless: instances; stateful: identities moved at once).
    #[must_use]
    pub fn max_unavailable(mut self, unavailable: IntOrPercent) -> Self {
        self.max_unavailable = Some(unavailable);
        self
    }

    /// `(surge, unavailable)` for `replicas` stateless instances: Kubernetes' fenceposts of
    /// maxSurge and maxUnavailable (defaults 25 % each), unavailable capped at `replicas`.
    /// 10 replicas with the defaults → `(3, 2)`.
    pub fn fenceposts(&self, replicas: u32) -> (u32, u32) {
        let (surge, unavailable) = resolve_fenceposts(
            self.max_surge.unwrap_or(QUARTER),
            self.max_unavailable.unwrap_or(QUARTER),
            replicas,
        );
        (surge, unavailable.min(replicas))
    }

    fn share(&self, step: usize) -> Share {
        if step >= self.steps.len() {
            return Share::Full;
        }
        self.steps[..=step]
            .iter()
            .rev()
            .find_map(|s| match s {
                CanaryStep::SetWeight(w) => Some(Share::Weight(*w)),
                CanaryStep::SetReplicas(n) => Some(Share::Replicas(*n)),
                _ => None,
            })
            .unwrap_or(Share::Weight(0))
    }

    /// The `(canary, stable)` instance counts a stateless canary aims for at `step` (a step
    /// at or past the number of steps is the final promotion).
    ///
    /// With a traffic router (`routes_traffic`): ⌈weight × replicas⌉ canary instances and a
    /// full stable group, which is only removed after the final step (Argo's traffic-routed
    /// counts). Without one: [`weighted_replica_counts`] with this canary's maxSurge (10
    /// replicas at 25 % with the default surge → `(3, 8)`), and all on the canary at the final
    /// promotion. A setReplicas step runs that many canary instances (int, or % rounded up)
    /// and, without a router, keeps the rest of the replicas on the stable revision.
    pub fn replica_counts(&self, step: usize, replicas: u32, routes_traffic: bool) -> (u32, u32) {
        let n = self.steps.len();
        match (self.share(step), routes_traffic) {
            (Share::Full, true) if step == n => (replicas, replicas),
            (Share::Full, _) => (replicas, 0),
            (Share::Replicas(count), true) => {
                (count.scaled(replicas, true).min(replicas), replicas)
            }
            (Share::Replicas(count), false) => {
                let canary = count.scaled(replicas, true).min(replicas);
                (canary, replicas - canary)
            }
            (Share::Weight(w), true) => (
                IntOrPercent::Percent(w.min(100))
                    .scaled(replicas, true)
                    .min(replicas),
                replicas,
            ),
            (Share::Weight(w), false) => {
                weighted_replica_counts(w, replicas, self.fenceposts(replicas).0)
            }
        }
    }

    /// Stateful: identities on the canary revision at `step` (no surge: an identity exists
    /// once).
    fn stateful_canary(&self, step: usize, replicas: u32, routes_traffic: bool) -> u32 {
        match self.share(step) {
            Share::Full => replicas,
            Share::Replicas(count) => count.scaled(replicas, true).min(replicas),
            Share::Weight(w) if routes_traffic => IntOrPercent::Percent(w.min(100))
                .scaled(replicas, true)
                .min(replicas),
            Share::Weight(w) => weighted_replica_counts(w, replicas, 0).0,
        }
    }

    /// The traffic weight at `step` (100 after the last step).
    pub fn weight(&self, step: usize) -> u32 {
        if step >= self.steps.len() {
            return 100;
        }
        self.steps[..=step]
            .iter()
            .rev()
            .find_map(|s| match s {
                CanaryStep::SetWeight(w) => Some(*w),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The weight to announce: the step's once the canary has its instances, until then no
    /// more than the previous step's.
    fn announced_weight(&self, step: usize, canary_ready: bool) -> u32 {
        let previous = if step == 0 { 0 } else { self.weight(step - 1) };
        if canary_ready {
            self.weight(step)
        } else {
            previous.min(self.weight(step))
        }
    }
}

fn is_zero(value: Option<IntOrPercent>) -> bool {
    matches!(value, Some(IntOrPercent::Int(0) | IntOrPercent::Percent(0)))
}

impl ReleaseStrategy for Canary {
    fn analyses(&self) -> Vec<(String, AnalysisStep)> {
        let mut found: Vec<(String, AnalysisStep)> = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| match step {
                CanaryStep::Analysis(a) => Some((format!("steps[{i}].analysis"), a.clone())),
                _ => None,
            })
            .collect();
        if let Some(bg) = &self.analysis {
            found.push(("analysis".into(), bg.analysis.clone()));
        }
        found
    }

    fn name(&self) -> &'static str {
        "canary"
    }

    fn validate(&self, stateful: bool) -> Result<(), StrategyError> {
        let mut problems = Vec::new();
        for (index, step) in self.steps.iter().enumerate() {
            let err = |field: &str, message: String| StrategyError::Step {
                index,
                field: field.to_owned(),
                message,
            };
            match step {
                CanaryStep::SetWeight(w) if *w > 100 => {
                    problems.push(err("setWeight", format!("must be 0-100, got {w}")));
                }
                CanaryStep::SetReplicas(IntOrPercent::Percent(p)) if *p > 100 => {
                    problems.push(err(
                        "setReplicas",
                        format!("must be at most 100%, got {p}%"),
                    ));
                }
                CanaryStep::Pause(PauseStep { duration: Some(d) }) if d.is_negative() => {
                    problems.push(err(
                        "pause.duration",
                        format!("must not be negative, got {d}"),
                    ));
                }
                CanaryStep::Analysis(a) => {
                    if let Err(source) = a.spec.validate(&a.args) {
                        problems.push(StrategyError::Analysis {
                            location: format!("steps[{index}].analysis"),
                            source,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(bg) = &self.analysis {
            if bg.starting_step > self.steps.len() {
                problems.push(StrategyError::Field {
                    field: "analysis.startingStep".into(),
                    message: format!(
                        "must be at most the number of steps ({}), got {}",
                        self.steps.len(),
                        bg.starting_step
                    ),
                });
            }
            if let Err(source) = bg.analysis.spec.validate(&bg.analysis.args) {
                problems.push(StrategyError::Analysis {
                    location: "analysis".into(),
                    source,
                });
            }
        }
        if let Some(IntOrPercent::Percent(p)) = self.max_unavailable
            && p > 100
        {
            problems.push(StrategyError::Field {
                field: "maxUnavailable".into(),
                message: format!("must be at most 100%, got {p}%"),
            });
        }
        if !stateful && is_zero(self.max_surge) && is_zero(self.max_unavailable) {
            problems.push(StrategyError::Field {
                field: "maxSurge".into(),
                message: "maxSurge and maxUnavailable must not both be 0".into(),
            });
        }
        StrategyError::from_problems(problems)
    }

    fn steps(&self) -> usize {
        self.steps.len()
    }

    fn stateful_max_unavailable(&self, replicas: u32) -> u32 {
        self.max_unavailable
            .map_or(1, |m| m.scaled(replicas, false))
            .max(1)
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        let step = view.step.min(self.steps.len() + 1);
        let plan = if view.stateful {
            self.stateful_plan(view, step)
        } else if view.routes_traffic {
            self.routed_plan(view, step)
        } else {
            self.basic_plan(view, step)
        };
        self.with_background(view, step, plan)
    }
}

impl Canary {
    /// Stateful: the step's canary count becomes a partition, moved in order.
    fn stateful_plan(&self, view: &RolloutView, step: usize) -> Plan {
        let n = self.steps.len();
        let replicas = view.replicas;
        let canary = self.stateful_canary(step, replicas, view.routes_traffic);
        let partition = replicas - canary.min(replicas);
        let (moves, reached) = stateful_moves(
            &view.identities,
            &view.stable,
            &view.target,
            partition,
            self.stateful_max_unavailable(replicas),
        );
        let mut plan = Plan::gate(Gate::Progressing(String::new()));
        plan.partition = Some(partition);
        plan.moves = moves;
        plan.target_weight = Some(self.weight(step));
        plan.gate = if !reached {
            Gate::Progressing(format!("moving identities to partition {partition}"))
        } else if step >= n {
            Gate::Done
        } else {
            self.step_gate(view, step, &mut plan)
        };
        plan
    }

    /// With a traffic router: the canary at ⌈weight × replicas⌉, the stable group full until
    /// the scale-down delay after the last step is over, superseded canaries removed (they
    /// receive no traffic).
    fn routed_plan(&self, view: &RolloutView, step: usize) -> Plan {
        let n = self.steps.len();
        let replicas = view.replicas;
        let (canary_target, stable_target) = self.replica_counts(step, replicas, true);
        let canary = view.target_group();
        let stable = view.stable_group();
        let mut plan = Plan::gate(Gate::Progressing(String::new()));
        for g in view.others() {
            plan.replicas.push((g.revision.clone(), 0));
        }
        plan.replicas.push((view.target.clone(), canary_target));
        plan.replicas.push((view.stable.clone(), stable_target));
        if step > n {
            // After the final promotion and the scale-down delay: remove the stable group.
            plan.target_weight = Some(100);
            plan.gate = if stable.current == 0 {
                Gate::Done
            } else {
                Gate::Progressing("scaling down the old stable revision".into())
            };
            return plan;
        }
        let canary_ready = canary.available >= canary_target;
        plan.target_weight = Some(self.announced_weight(step, canary_ready));
        plan.gate = if !canary_ready {
            Gate::Progressing(format!(
                "{}/{canary_target} canary instances available",
                canary.available
            ))
        } else if step == n {
            let delay = Duration::from_secs(self.scale_down_delay_seconds);
            let elapsed = view.scale_down_elapsed.unwrap_or_default();
            if elapsed >= delay {
                Gate::StepComplete
            } else {
                Gate::ScaleDownDelay(
                    delay - elapsed,
                    "scale-down delay before removing the old stable revision".into(),
                )
            }
        } else {
            self.step_gate(view, step, &mut plan)
        };
        plan
    }

    /// Without a traffic router: Argo's basic canary, one move per reconcile within
    /// maxSurge / maxUnavailable; the step waits until the counts are reached.
    fn basic_plan(&self, view: &RolloutView, step: usize) -> Plan {
        let replicas = view.replicas;
        let (surge, unavailable) = self.fenceposts(replicas);
        let want = self.replica_counts(step, replicas, false);
        let counts = basic_counts(view, want, surge, unavailable);
        let (want_canary, want_stable) = counts.want;
        let mut plan = Plan::gate(Gate::Progressing(String::new()));
        plan.replicas.extend(counts.others);
        plan.replicas.push((view.target.clone(), counts.canary));
        if let Some(stable) = counts.stable {
            plan.replicas.push((view.stable.clone(), stable));
        }
        let canary = view.target_group();
        let stable = view.stable_group();
        let canary_ready = canary.available >= want_canary;
        plan.target_weight = Some(self.announced_weight(step, canary_ready));
        let reached = canary_ready
            && canary.desired == want_canary
            && canary.current == want_canary
            && (counts.stable.is_none()
                || (stable.desired == want_stable && stable.current == want_stable))
            && view.others().all(|g| g.desired == 0 && g.available == 0);
        plan.gate = if !reached {
            let others: u32 = view.others().map(|g| g.current).sum();
            let mut reason = format!(
                "{}/{want_canary} canary instances available, {} stable (want {want_stable})",
                canary.available, stable.current
            );
            if others > 0 {
                reason.push_str(&format!(", {others} of superseded revisions"));
            }
            Gate::Progressing(reason)
        } else if step >= self.steps.len() {
            Gate::Done
        } else {
            self.step_gate(view, step, &mut plan)
        };
        plan
    }

    fn step_gate(&self, view: &RolloutView, step: usize, plan: &mut Plan) -> Gate {
        match &self.steps[step] {
            CanaryStep::SetWeight(_) | CanaryStep::SetReplicas(_) => Gate::StepComplete,
            CanaryStep::Pause(PauseStep { duration: None }) => {
                Gate::Pause(None, format!("paused at step {step} until promoted"))
            }
            CanaryStep::Pause(PauseStep { duration: Some(d) }) => {
                // Validation rejects negative pauses; one that slipped through waits nothing.
                let d = d.to_duration().unwrap_or_default();
                if view.step_elapsed >= d {
                    Gate::StepComplete
                } else {
                    Gate::Pause(Some(d - view.step_elapsed), format!("pause at step {step}"))
                }
            }
            CanaryStep::Analysis(a) => {
                let key = format!("step-{step}");
                plan.analyses
                    .push(AnalysisRequest::new(key.clone(), a.clone(), false));
                analysis_gate(view, &key)
            }
            CanaryStep::Approval(a) => match view.approval {
                Some(true) => Gate::StepComplete,
                Some(false) => Gate::Abort(format!("approval for step {step} was rejected")),
                None => Gate::Approval(
                    a.message
                        .clone()
                        .unwrap_or_else(|| format!("approve step {step} of the canary")),
                ),
            },
        }
    }

    /// Background analysis runs from its starting step until the rollout is fully promoted:
    /// through the final step's scale-up, until the plan is done or (with a router) in the
    /// scale-down delay, when all traffic is on the fully available new revision. A failed
    /// run aborts whatever the step waits for; an inconclusive one pauses a completed step.
    fn with_background(&self, view: &RolloutView, step: usize, mut plan: Plan) -> Plan {
        let Some(bg) = &self.analysis else {
            return plan;
        };
        let n = self.steps.len();
        let promoted = step > n
            || matches!(plan.gate, Gate::Done | Gate::ScaleDownDelay(..))
            || (step == n && plan.gate == Gate::StepComplete);
        if step < bg.starting_step || promoted {
            return plan;
        }
        plan.analyses.push(AnalysisRequest::new(
            "background",
            bg.analysis.clone(),
            true,
        ));
        match analysis_gate(view, "background") {
            g @ Gate::Abort(_) => plan.gate = g,
            g @ Gate::Pause(..) if plan.gate == Gate::StepComplete => plan.gate = g,
            _ => {}
        }
        plan
    }
}

/// One reconcile of a basic canary: the counts to set and the counts the step aims for.
#[derive(Debug)]
struct BasicCounts {
    /// The canary group's count now.
    canary: u32,
    /// The stable group's count now (`None` when there is no separate stable group).
    stable: Option<u32>,
    /// Superseded groups' counts now.
    others: Vec<(Revision, u32)>,
    /// `(canary, stable)` the step aims for (all canary without a stable group).
    want: (u32, u32),
}

/// How many of `g`'s instances count towards what may be scaled down (Argo's
/// `GetReplicasForScaleDown`): its desired count when instances are already going away or
/// when its availability is ignored, else its available instances.
fn countable(g: &GroupView, ignore_availability: bool) -> i64 {
    if g.desired < g.available || ignore_availability {
        i64::from(g.desired)
    } else {
        i64::from(g.available)
    }
}

/// The count of a group being drained towards `want` by up to `count` instances (Argo's
/// `calculateScaleDownReplicaCount`); `planned` when it is not above `want`.
fn drained(g: &GroupView, want: i64, count: i64, planned: i64) -> i64 {
    if i64::from(g.desired) > want {
        want.max(i64::from(g.desired) - count)
    } else {
        planned
    }
}

/// Argo's `adjustReplicaWithinLimits`: after draining one group, trims the other to stay
/// within `max_total`, keeps back enough of its available instances for `min_available`, and
/// takes any remaining excess from the drained group. Returns `(drain, adjust)`.
fn within_limits(
    drain: (&GroupView, i64),
    adjust: Option<(&GroupView, i64)>,
    max_total: i64,
    min_available: i64,
) -> (i64, i64) {
    let (drain_group, mut drain_count) = drain;
    let Some((adjust_group, mut adjust_count)) = adjust else {
        return (drain_count, 0);
    };
    let over = (adjust_count + drain_count - max_total).max(0);
    adjust_count -= over;
    let drain_available = i64::from(drain_group.available).min(drain_count);
    let adjust_available = i64::from(adjust_group.available);
    let available = drain_available + adjust_available.min(adjust_count);
    let lost = (adjust_available - adjust_count).max(0);
    let short = (min_available - available).max(0);
    adjust_count += lost.min(short);
    drain_count -= (adjust_count + drain_count - max_total).max(0);
    (drain_count, adjust_count)
}

/// Argo Rollouts' `CalculateReplicaCountsForBasicCanary` plus its scale-down of older
/// ReplicaSets, on this view: `want` is the step's `(canary, stable)`.
///
/// 1. Scale up, within `replicas + surge` counted over every group: the stable group first,
///    then the canary.
/// 2. While superseded groups still have instances, only they are scaled down: unready
///    instances first, then as many as keep `replicas − unavailable` available (in the order
///    of the view's groups; Argo goes newest first).
/// 3. Otherwise scale down the group above its aim — the stable group while the canary
///    grows (counting the canary's available instances), the canary when the weight
///    decreases (counting the stable group's) — as far as availability allows, and trim the
///    other to stay within the surge.
fn basic_counts(view: &RolloutView, want: (u32, u32), surge: u32, unavailable: u32) -> BasicCounts {
    let replicas = i64::from(view.replicas);
    let max_total = replicas + i64::from(surge);
    let min_available = replicas - i64::from(unavailable);
    let canary = view.target_group();
    let stable_group = view
        .group(&view.stable)
        .filter(|_| view.stable != view.target);
    // Without a separate stable group there are no steps to follow: all on the canary.
    let (want_canary, want_stable) = match stable_group {
        Some(_) => (i64::from(want.0), i64::from(want.1)),
        None => (replicas, 0),
    };
    let others: Vec<&GroupView> = view.others().collect();
    let others_desired: i64 = others.iter().map(|g| i64::from(g.desired)).sum();

    let mut canary_count = i64::from(canary.desired);
    let mut stable_count = stable_group.map_or(0, |g| i64::from(g.desired));
    let total = others_desired + canary_count + stable_count;
    let mut room = max_total - total;
    if let Some(stable) = stable_group
        && i64::from(stable.desired) < want_stable
        && room > 0
    {
        stable_count = (i64::from(stable.desired) + room).min(want_stable);
        room -= stable_count - i64::from(stable.desired);
    }
    if canary_count < want_canary && room > 0 {
        canary_count = (canary_count + room).min(want_canary);
    }

    let mut other_counts: Vec<(Revision, i64)> = others
        .iter()
        .map(|g| (g.revision.clone(), i64::from(g.desired)))
        .collect();
    if others_desired > 0 {
        // Unready instances of superseded groups serve nothing: they go first.
        for ((_, count), g) in other_counts.iter_mut().zip(&others) {
            *count = (*count).min(i64::from(g.available));
        }
        let available: i64 = view.groups.iter().map(|g| i64::from(g.available)).sum();
        let mut budget = available - min_available;
        for (_, count) in &mut other_counts {
            if budget <= 0 {
                break;
            }
            let down = (*count).min(budget);
            *count -= down;
            budget -= down;
        }
    } else {
        let increasing = want_canary >= i64::from(canary.desired);
        let scalable =
            countable(&canary, !increasing) + stable_group.map_or(0, |g| countable(g, increasing));
        if scalable > min_available {
            let count = scalable - min_available;
            if !increasing {
                canary_count = drained(&canary, want_canary, count, canary_count);
                let (c, s) = within_limits(
                    (&canary, canary_count),
                    stable_group.map(|g| (g, stable_count)),
                    max_total,
                    min_available,
                );
                canary_count = c;
                if stable_group.is_some() {
                    stable_count = s;
                }
            } else if let Some(stable) = stable_group {
                stable_count = drained(stable, want_stable, count, stable_count);
                let (s, c) = within_limits(
                    (stable, stable_count),
                    Some((&canary, canary_count)),
                    max_total,
                    min_available,
                );
                stable_count = s;
                canary_count = c;
            }
        }
    }
    let fit = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    BasicCounts {
        canary: fit(canary_count),
        stable: stable_group.map(|_| fit(stable_count)),
        others: other_counts
            .into_iter()
            .map(|(rev, n)| (rev, fit(n)))
            .collect(),
        want: (fit(want_canary), fit(want_stable)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::analysis::AnalysisPhase;
    use crate::plan::IdentityView;

    fn view(step: usize, canary: (u32, u32), stable: (u32, u32)) -> RolloutView {
        let mut v = RolloutView::new("s".into(), "c".into(), 10);
        v.step = step;
        v.groups = vec![
            GroupView::new("s".into(), stable.0, stable.0, stable.1),
            GroupView::new("c".into(), canary.0, canary.0, canary.1),
        ];
        v
    }

    fn counts(p: &Plan) -> (Option<u32>, Option<u32>) {
        (p.replicas_of(&"c".into()), p.replicas_of(&"s".into()))
    }

    #[test]
    fn weight_41_percent_of_10_is_4_canary_6_stable() {
        let c = Canary::new(vec![CanaryStep::SetWeight(41)]);
        let p = c.plan(&view(0, (4, 4), (6, 6)));
        assert_eq!(counts(&p), (Some(4), Some(6)));
        assert_eq!(p.target_weight, Some(41));
        assert_eq!(p.gate, Gate::StepComplete);
    }

    #[test]
    fn weight_25_percent_of_10_surges_to_3_canary_8_stable() {
        let c = Canary::new(vec![CanaryStep::SetWeight(25)]);
        assert_eq!(c.replica_counts(0, 10, false), (3, 8));
        let p = c.plan(&view(0, (3, 3), (8, 8)));
        assert_eq!(counts(&p), (Some(3), Some(8)));
        assert_eq!(
            p.gate,
            Gate::StepComplete,
            "11 instances is the step's goal"
        );
        let no_surge = c.clone().max_surge(IntOrPercent::Int(0));
        assert_eq!(no_surge.replica_counts(0, 10, false), (3, 7));
    }

    #[test]
    fn first_move_surges_the_canary_and_drains_the_stable_within_max_unavailable() {
        // Default 25 % / 25 % of 10: surge 3, unavailable 2 (Argo's rounding).
        let c = Canary::new(vec![CanaryStep::SetWeight(50)]);
        assert_eq!(c.fenceposts(10), (3, 2));
        let p = c.plan(&view(0, (0, 0), (10, 10)));
        assert_eq!(counts(&p), (Some(3), Some(8)), "13 at most, 8 available");
        assert_eq!(p.target_weight, Some(0));
        // Two of five canaries ready: the stable group keeps 6 so that 8 stay available.
        let p = c.plan(&view(0, (5, 2), (10, 10)));
        assert_eq!(counts(&p), (Some(5), Some(6)));
        assert!(matches!(p.gate, Gate::Progressing(_)));
    }

    #[test]
    fn with_a_router_stable_stays_full_and_canary_rounds_up() {
        let c = Canary::new(vec![CanaryStep::SetWeight(5)]);
        let mut v = view(0, (1, 1), (10, 10));
        v.routes_traffic = true;
        let p = c.plan(&v);
        assert_eq!(counts(&p), (Some(1), Some(10)));
        assert_eq!(p.target_weight, Some(5));
        assert_eq!(c.replica_counts(0, 10, true), (1, 10));
        assert_eq!(
            c.replica_counts(1, 10, true),
            (10, 10),
            "kept through the delay"
        );
        assert_eq!(c.replica_counts(2, 10, true), (10, 0));
    }

    #[test]
    fn set_replicas_pause_and_approval() {
        let c = Canary::new(vec![
            CanaryStep::SetReplicas(IntOrPercent::Percent(25)),
            CanaryStep::pause(60),
            CanaryStep::pause_until_promoted(),
            CanaryStep::Approval(ApprovalStep::default()),
        ]);
        assert_eq!(
            c.replica_counts(0, 10, false),
            (3, 7),
            "25% of 10 rounded up"
        );
        let mut v = view(1, (3, 3), (7, 7));
        v.step_elapsed = Duration::from_secs(20);
        assert_eq!(
            c.plan(&v).gate,
            Gate::Pause(Some(Duration::from_secs(40)), "pause at step 1".into())
        );
        v.step_elapsed = Duration::from_secs(60);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
        v.step = 2;
        assert!(matches!(c.plan(&v).gate, Gate::Pause(None, _)));
        v.step = 3;
        assert!(matches!(c.plan(&v).gate, Gate::Approval(_)));
        v.approval = Some(false);
        assert!(matches!(c.plan(&v).gate, Gate::Abort(_)));
        v.approval = Some(true);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
    }

    #[test]
    fn final_promotion_then_stable_removed() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]);
        let p = c.plan(&view(1, (10, 10), (8, 8)));
        assert_eq!(counts(&p), (Some(10), Some(0)));
        assert_eq!(p.target_weight, Some(100));
        assert!(matches!(p.gate, Gate::Progressing(_)));
        assert_eq!(c.plan(&view(1, (10, 10), (0, 0))).gate, Gate::Done);
    }

    #[test]
    fn final_promotion_surges_no_more_than_max_surge() {
        // Old behaviour: the canary went straight to 10 beside 8 stable (18 instances).
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]);
        let p = c.plan(&view(1, (2, 2), (8, 8)));
        assert_eq!(
            counts(&p),
            (Some(5), Some(6)),
            "10 + surge 3 = 13 at most; 2 canaries + 6 stable = 8 available"
        );
        // Once those are ready the stable group gives way as far as 8 stay available.
        let p = c.plan(&view(1, (5, 5), (8, 8)));
        assert_eq!(counts(&p), (Some(5), Some(3)));
    }

    #[test]
    fn decreasing_weight_keeps_available_capacity() {
        // setWeight 50 → 20 on 10 replicas: the stable group surges back first, and the canary
        // shrinks only as far as 10 − 2 = 8 instances stay available (the old code dropped
        // the canary to 2 at once: 7 available).
        let c = Canary::new(vec![CanaryStep::SetWeight(50), CanaryStep::SetWeight(20)]);
        let p = c.plan(&view(1, (5, 5), (5, 5)));
        assert_eq!(counts(&p), (Some(3), Some(8)));
        let p = c.plan(&view(1, (3, 3), (8, 8)));
        assert_eq!(counts(&p), (Some(2), Some(8)));
        assert_eq!(c.plan(&view(1, (2, 2), (8, 8))).gate, Gate::StepComplete);
    }

    #[test]
    fn a_third_revision_drains_the_superseded_canary_within_max_unavailable() {
        // Stable a at 5, canary b at 5 (setWeight 50), then c arrives: b is not dropped at
        // once (the old code did: 5 available of 10).
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]);
        let mut v = RolloutView::new("a".into(), "c".into(), 10);
        v.groups = vec![
            GroupView::new("a".into(), 5, 5, 5),
            GroupView::new("b".into(), 5, 5, 5),
        ];
        let p = c.plan(&v);
        assert_eq!(
            p.replicas_of(&"a".into()),
            Some(8),
            "stable surges back first"
        );
        assert_eq!(p.replicas_of(&"b".into()), Some(3), "b down by 10 − 8 only");
        assert_eq!(
            p.replicas_of(&"c".into()),
            Some(0),
            "no room left for c yet"
        );
        assert!(matches!(p.gate, Gate::Progressing(_)));
    }

    struct ArgoCase {
        name: &'static str,
        replicas: u32,
        weight: u32,
        surge: IntOrPercent,
        unavailable: IntOrPercent,
        promote_full: bool,
        stable: (u32, u32),
        canary: (u32, u32),
        older: Option<(u32, u32)>,
        expect_stable: u32,
        expect_canary: u32,
    }

    /// The basic-canary rows of Argo Rollouts' `TestCalculateReplicaCountsForCanary`
    /// (utils/replicaset/canary_test.go); rows with a traffic router, setCanaryScale or an
    /// abort test other code paths.
    #[test]
    fn argo_basic_canary_count_table() {
        use IntOrPercent::{Int, Percent};
        fn row(
            name: &'static str,
            replicas: u32,
            weight: u32,
            (surge, unavailable): (IntOrPercent, IntOrPercent),
            stable: (u32, u32),
            canary: (u32, u32),
            (expect_stable, expect_canary): (u32, u32),
        ) -> ArgoCase {
            ArgoCase {
                name,
                replicas,
                weight,
                surge,
                unavailable,
                promote_full: false,
                stable,
                canary,
                older: None,
                expect_stable,
                expect_canary,
            }
        }
        let cases = [
            row(
                "no extra RSs in scaleDownCount when spec < available",
                10,
                100,
                (Int(3), Int(0)),
                (7, 8),
                (6, 3),
                (7, 6),
            ),
            row(
                "max surge int scales up the canary",
                10,
                20,
                (Int(2), Int(0)),
                (10, 10),
                (0, 0),
                (10, 2),
            ),
            row(
                "max surge percentage scales up the canary",
                10,
                20,
                (Percent(20), Int(0)),
                (10, 10),
                (0, 0),
                (10, 2),
            ),
            row(
                "scale down extra stable replicas",
                10,
                20,
                (Percent(20), Int(0)),
                (10, 10),
                (2, 2),
                (8, 2),
            ),
            row(
                "do not go past max surge",
                10,
                30,
                (Int(2), Int(0)),
                (10, 10),
                (0, 0),
                (10, 2),
            ),
            row(
                "max unavailable int scales down the stable",
                10,
                20,
                (Int(0), Int(2)),
                (10, 10),
                (0, 0),
                (8, 0),
            ),
            row(
                "max unavailable percentage scales down the stable",
                10,
                20,
                (Int(0), Percent(20)),
                (10, 10),
                (0, 0),
                (8, 0),
            ),
            row(
                "do not go past max unavailable",
                10,
                30,
                (Int(0), Int(2)),
                (10, 10),
                (0, 0),
                (8, 0),
            ),
            row(
                "max surge and max unavailable",
                10,
                50,
                (Int(2), Int(1)),
                (10, 10),
                (0, 0),
                (9, 2),
            ),
            row(
                "canary to zero at weight 0",
                10,
                0,
                (Int(1), Int(1)),
                (10, 10),
                (1, 1),
                (10, 0),
            ),
            row(
                "stable to zero at weight 100",
                10,
                100,
                (Int(1), Int(1)),
                (1, 1),
                (10, 10),
                (0, 10),
            ),
            row(
                "no zero canary at a non-zero weight",
                1,
                20,
                (Int(1), Int(0)),
                (1, 1),
                (0, 0),
                (1, 1),
            ),
            row(
                "no zero canary below 100",
                1,
                90,
                (Int(1), Int(0)),
                (1, 1),
                (0, 0),
                (1, 1),
            ),
            row(
                "zero canary below 50 without surge",
                1,
                49,
                (Int(0), Int(1)),
                (1, 1),
                (0, 0),
                (1, 0),
            ),
            row(
                "stable to zero from 51 without surge",
                1,
                51,
                (Int(0), Int(1)),
                (1, 1),
                (0, 0),
                (0, 0),
            ),
            row(
                "canary to one from 51 without stable",
                1,
                51,
                (Int(0), Int(1)),
                (0, 0),
                (0, 0),
                (0, 1),
            ),
            row(
                "scale down canary and stable",
                10,
                30,
                (Int(0), Int(3)),
                (8, 5),
                (4, 4),
                (7, 3),
            ),
            row(
                "scale down stable and canary available",
                10,
                100,
                (Int(1), Int(0)),
                (10, 2),
                (10, 8),
                (2, 9),
            ),
            row(
                "uneven weight does not round past max surge",
                10,
                5,
                (Int(0), Int(1)),
                (10, 10),
                (0, 0),
                (9, 0),
            ),
            row(
                "uneven weight does not round past max surge (2)",
                10,
                5,
                (Int(0), Int(1)),
                (9, 9),
                (0, 0),
                (9, 1),
            ),
            row(
                "both 0% means one unavailable",
                10,
                10,
                (Percent(0), Percent(0)),
                (10, 10),
                (0, 0),
                (9, 0),
            ),
            row(
                "setWeight without a router",
                10,
                20,
                (Percent(20), Int(0)),
                (10, 10),
                (0, 0),
                (10, 2),
            ),
            row(
                "max surge during scale-up with the stable unavailable",
                4,
                100,
                (Int(1), Int(0)),
                (4, 1),
                (0, 0),
                (4, 1),
            ),
            row(
                "scale down to max unavailable within max surge",
                3,
                99,
                (Int(0), Int(2)),
                (3, 3),
                (0, 0),
                (1, 0),
            ),
            row(
                "scale down to max unavailable within max surge (2)",
                3,
                99,
                (Int(0), Int(2)),
                (1, 1),
                (0, 0),
                (1, 2),
            ),
            row(
                "max unavailable with the stable unavailable",
                4,
                100,
                (Int(1), Int(0)),
                (4, 1),
                (1, 1),
                (3, 1),
            ),
            row(
                "reducing weight 1: surge the stable first",
                4,
                0,
                (Int(1), Int(0)),
                (0, 0),
                (4, 4),
                (1, 4),
            ),
            row(
                "reducing weight 2: wait for the stable",
                4,
                0,
                (Int(1), Int(0)),
                (1, 0),
                (4, 4),
                (1, 4),
            ),
            row(
                "reducing weight 3: one canary at a time",
                4,
                0,
                (Int(1), Int(0)),
                (1, 1),
                (4, 4),
                (1, 3),
            ),
            ArgoCase {
                older: Some((3, 3)),
                ..row(
                    "scale up the stable before the canary",
                    10,
                    30,
                    (Int(1), Int(0)),
                    (1, 1),
                    (0, 0),
                    (7, 1),
                )
            },
            ArgoCase {
                older: Some((3, 3)),
                ..row(
                    "no canary or stable scale-down while older instances remain",
                    10,
                    30,
                    (Int(0), Int(1)),
                    (8, 6),
                    (4, 2),
                    (8, 4),
                )
            },
            ArgoCase {
                promote_full: true,
                ..row(
                    "promote full ignores the weight",
                    4,
                    1,
                    (Int(4), Int(4)),
                    (4, 4),
                    (0, 0),
                    (0, 4),
                )
            },
            ArgoCase {
                promote_full: true,
                ..row(
                    "promote full still honours surge and unavailable",
                    4,
                    1,
                    (Int(3), Int(0)),
                    (4, 4),
                    (0, 0),
                    (4, 3),
                )
            },
        ];
        for case in cases {
            let c = Canary::new(vec![CanaryStep::SetWeight(case.weight)])
                .max_surge(case.surge)
                .max_unavailable(case.unavailable);
            let mut v = RolloutView::new("s".into(), "c".into(), case.replicas);
            v.step = usize::from(case.promote_full);
            v.groups = vec![
                GroupView::new("s".into(), case.stable.0, case.stable.0, case.stable.1),
                GroupView::new("c".into(), case.canary.0, case.canary.0, case.canary.1),
            ];
            if let Some((d, a)) = case.older {
                v.groups.push(GroupView::new("o".into(), d, d, a));
            }
            let p = c.plan(&v);
            assert_eq!(
                counts(&p),
                (Some(case.expect_canary), Some(case.expect_stable)),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn without_a_separate_stable_group_everything_goes_to_the_canary() {
        // Argo's TestCalculateReplicaCountsForNewDeployment: no stable to follow steps from.
        let c = Canary::new(vec![CanaryStep::SetWeight(10)])
            .max_surge(IntOrPercent::Int(0))
            .max_unavailable(IntOrPercent::Int(1));
        let mut v = RolloutView::new("s".into(), "c".into(), 10);
        v.groups = vec![GroupView::new("c".into(), 10, 10, 0)];
        let p = c.plan(&v);
        assert_eq!(counts(&p), (Some(10), None));
    }

    /// Runs `canary` from `view` to Done: each reconcile applies the plan, removes instances at
    /// once (unready ones first) and makes started ones ready only every `ready_every`
    /// reconciles; pauses are promoted. Checks the surge/unavailability envelope after every
    /// reconcile and returns the (canary, stable) counts at each completed step.
    fn simulate(canary: &Canary, mut v: RolloutView, ready_every: usize) -> Vec<(u32, u32)> {
        let (surge, unavailable) = canary.fenceposts(v.replicas);
        let (max_total, min_available) = (v.replicas + surge, v.replicas - unavailable);
        let mut reached = Vec::new();
        for tick in 0..500 {
            if tick % ready_every == 0 {
                for g in &mut v.groups {
                    g.available = g.current;
                }
            }
            let plan = canary.plan(&v);
            for (rev, n) in &plan.replicas {
                if v.group(rev).is_none() {
                    v.groups.push(GroupView::new(rev.clone(), 0, 0, 0));
                }
                let g = v.groups.iter_mut().find(|g| &g.revision == rev).unwrap();
                g.available = g.available.min(*n);
                g.desired = *n;
                g.current = *n;
            }
            let total: u32 = v.groups.iter().map(|g| g.current).sum();
            let available: u32 = v.groups.iter().map(|g| g.available).sum();
            assert!(
                total <= max_total,
                "{total} instances > {max_total} at step {}: {:?}",
                v.step,
                v.groups
            );
            assert!(
                available >= min_available,
                "{available} available < {min_available} at step {}: {:?}",
                v.step,
                v.groups
            );
            match plan.gate {
                Gate::Done => return reached,
                Gate::StepComplete | Gate::Pause(..) => {
                    let c = v.target_group().current;
                    let s = v.stable_group().current;
                    reached.push((c, s));
                    v.step += 1;
                }
                Gate::Progressing(_) => {}
                other => panic!("unexpected gate {other:?}"),
            }
        }
        panic!("no progress: {:?}", v.groups)
    }

    fn steps() -> Canary {
        Canary::new(vec![
            CanaryStep::SetWeight(20),
            CanaryStep::pause(10),
            CanaryStep::SetWeight(50),
            CanaryStep::pause_until_promoted(),
            CanaryStep::SetWeight(20),
            CanaryStep::SetWeight(80),
            CanaryStep::SetReplicas(IntOrPercent::Int(3)),
        ])
    }

    #[test]
    fn simulated_rollout_stays_within_surge_and_unavailability() {
        for replicas in [1, 2, 3, 4, 5, 10, 17] {
            for ready_every in [1, 3] {
                let mut v = RolloutView::new("s".into(), "c".into(), replicas);
                v.groups = vec![GroupView::new("s".into(), replicas, replicas, replicas)];
                let reached = simulate(&steps(), v, ready_every);
                assert_eq!(reached.len(), 7, "{replicas} replicas: {reached:?}");
                if replicas == 10 {
                    assert_eq!(
                        reached,
                        vec![(2, 8), (2, 8), (5, 5), (5, 5), (2, 8), (8, 2), (3, 7)],
                        "Argo's counts at each step"
                    );
                }
            }
        }
        for surge in [0, 1, 5] {
            for unavailable in [0, 1, 4] {
                if surge == 0 && unavailable == 0 {
                    continue;
                }
                let c = steps()
                    .max_surge(IntOrPercent::Int(surge))
                    .max_unavailable(IntOrPercent::Int(unavailable));
                let mut v = RolloutView::new("s".into(), "c".into(), 10);
                v.groups = vec![GroupView::new("s".into(), 10, 10, 10)];
                simulate(&c, v, 2);
            }
        }
    }

    #[test]
    fn simulated_roll_over_to_a_third_revision_stays_within_the_envelope() {
        for (b, a) in [(5, 5), (8, 2), (2, 8), (10, 0)] {
            let mut v = RolloutView::new("a".into(), "c".into(), 10);
            v.groups = vec![
                GroupView::new("a".into(), a, a, a),
                GroupView::new("b".into(), b, b, b),
            ];
            simulate(&steps(), v.clone(), 1);
            simulate(&steps(), v, 3);
        }
    }

    #[test]
    fn with_a_router_the_scale_down_delay_counts_from_its_own_start() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]).scale_down_delay(10);
        let mut v = view(1, (10, 10), (10, 10));
        v.routes_traffic = true;
        // 40 s into the final step (the canary took that long to scale up): the delay has
        // not begun yet, so all of it is still to run.
        v.step_elapsed = Duration::from_secs(40);
        let p = c.plan(&v);
        assert_eq!(p.replicas_of(&"s".into()), Some(10), "stable kept");
        assert_eq!(p.target_weight, Some(100));
        assert!(matches!(p.gate, Gate::ScaleDownDelay(d, _) if d == Duration::from_secs(10)));
        v.scale_down_elapsed = Some(Duration::from_secs(4));
        assert!(
            matches!(c.plan(&v).gate, Gate::ScaleDownDelay(d, _) if d == Duration::from_secs(6))
        );
        v.scale_down_elapsed = Some(Duration::from_secs(10));
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
    }

    fn analysis() -> AnalysisStep {
        let spec: crate::analysis::AnalysisSpec = serde_json::from_value(serde_json::json!({
            "metrics": [{"name": "m", "provider": {"command": {"command": ["true"]}}}]
        }))
        .unwrap();
        AnalysisStep::new(spec, Default::default())
    }

    #[test]
    fn background_analysis_runs_from_its_step_and_aborts_on_failure() {
        let c = Canary::new(vec![
            CanaryStep::SetWeight(10),
            CanaryStep::pause_until_promoted(),
            CanaryStep::SetWeight(50),
        ])
        .background(analysis(), 1);
        assert!(c.plan(&view(0, (1, 1), (9, 9))).analyses.is_empty());
        let mut v = view(1, (1, 1), (9, 9));
        let p = c.plan(&v);
        assert_eq!(p.analyses.len(), 1);
        assert!(p.analyses[0].background);
        assert!(matches!(p.gate, Gate::Pause(None, _)));
        v.analysis
            .insert("background".into(), AnalysisPhase::Failed);
        assert!(matches!(c.plan(&v).gate, Gate::Abort(_)));
    }

    #[test]
    fn background_analysis_runs_through_the_final_scale_up() {
        let c = Canary::new(vec![CanaryStep::SetWeight(50)]).background(analysis(), 0);
        // Final step, canary still scaling to 100 %: still measured, and a failure aborts.
        let mut v = view(1, (8, 5), (5, 5));
        let p = c.plan(&v);
        assert!(matches!(p.gate, Gate::Progressing(_)));
        assert_eq!(p.analyses.len(), 1, "requested during the final scale-up");
        v.analysis
            .insert("background".into(), AnalysisPhase::Failed);
        assert!(matches!(c.plan(&v).gate, Gate::Abort(_)));
        // Fully promoted: no longer requested, and a late failure changes nothing.
        let mut done = view(1, (10, 10), (0, 0));
        done.analysis = v.analysis.clone();
        let p = c.plan(&done);
        assert_eq!(p.gate, Gate::Done);
        assert!(p.analyses.is_empty());
    }

    #[test]
    fn with_a_router_background_analysis_stops_at_the_scale_down_delay() {
        let c = Canary::new(vec![CanaryStep::SetWeight(50)]).background(analysis(), 0);
        let mut v = view(1, (8, 6), (10, 10));
        v.routes_traffic = true;
        assert_eq!(c.plan(&v).analyses.len(), 1, "canary still scaling up");
        v.groups[1] = GroupView::new("c".into(), 10, 10, 10);
        let p = c.plan(&v);
        assert!(matches!(p.gate, Gate::ScaleDownDelay(..)));
        assert!(
            p.analyses.is_empty(),
            "all traffic on the fully available canary"
        );
    }

    #[test]
    fn stateful_steps_are_partitions() {
        let c = Canary::new(vec![
            CanaryStep::SetReplicas(IntOrPercent::Int(2)),
            CanaryStep::SetWeight(60),
        ]);
        let mut v = RolloutView::new("s".into(), "c".into(), 5);
        v.stateful = true;
        v.identities = (0..5)
            .map(|o| IdentityView::new(o, "s".into(), true))
            .collect();
        let p = c.plan(&v);
        assert_eq!(p.partition, Some(3));
        assert_eq!(
            p.moves,
            vec![(4, "c".into())],
            "highest first, one at a time"
        );
        v.identities[4] = IdentityView::new(4, "c".into(), true);
        v.identities[3] = IdentityView::new(3, "c".into(), true);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
        v.step = 1;
        let p = c.plan(&v);
        assert_eq!(p.partition, Some(2), "60% of 5 = 3 on the new revision");
        assert_eq!(p.moves, vec![(2, "c".into())]);
        v.step = 2;
        assert_eq!(c.plan(&v).partition, Some(0));
    }

    #[test]
    fn stateful_max_unavailable_is_identities_moved_at_once() {
        let c = Canary::new(vec![CanaryStep::SetWeight(50)]);
        assert_eq!(c.stateful_max_unavailable(5), 1, "default 1");
        let two = c.clone().max_unavailable(IntOrPercent::Int(2));
        assert_eq!(two.stateful_max_unavailable(5), 2);
        let half = c.max_unavailable(IntOrPercent::Percent(50));
        assert_eq!(half.stateful_max_unavailable(5), 2, "rounded down");
        assert_eq!(half.stateful_max_unavailable(1), 1, "at least one");
    }

    #[test]
    fn promote_goes_one_step_and_never_past_the_steps() {
        let c = Canary::new(vec![
            CanaryStep::SetWeight(20),
            CanaryStep::pause_until_promoted(),
        ]);
        assert_eq!(c.promote_step(0), Some(1));
        assert_eq!(c.promote_step(1), Some(2));
        assert_eq!(
            c.promote_step(2),
            None,
            "the final step waits for availability"
        );
        assert_eq!(c.promote_full_step(0), 2);
        assert!(!c.recreates());
    }

    #[test]
    fn validation_names_the_step() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20), CanaryStep::SetWeight(120)]);
        assert_eq!(
            c.validate(false).unwrap_err().to_string(),
            "steps[1].setWeight: must be 0-100, got 120"
        );
        let c = Canary::new(vec![CanaryStep::pause(-5)]);
        assert_eq!(
            c.validate(false).unwrap_err().to_string(),
            "steps[0].pause.duration: must not be negative, got -5s"
        );
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let bad = AnalysisStep::new(Default::default(), Default::default());
        let c = Canary::new(vec![
            CanaryStep::SetWeight(20),
            CanaryStep::SetWeight(120),
            CanaryStep::Pause(PauseStep {
                duration: Some("-5s".parse().unwrap()),
            }),
            CanaryStep::Analysis(bad.clone()),
        ])
        .background(bad, 9)
        .max_unavailable(IntOrPercent::Percent(150));
        let err = c.validate(false).unwrap_err();
        let paths: Vec<String> = err
            .problems()
            .iter()
            .map(|p| p.to_string().split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "steps[1].setWeight",
                "steps[2].pause.duration",
                "steps[3].analysis",
                "analysis.startingStep",
                "analysis",
                "maxUnavailable"
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with(
                "6 problems: steps[1].setWeight: must be 0-100, got 120; \
                 steps[2].pause.duration: must not be negative, got -5s; steps[3].analysis"
            ),
            "{text}"
        );
        let zeros = Canary::new(vec![])
            .max_surge(IntOrPercent::Int(0))
            .max_unavailable(IntOrPercent::Percent(0));
        assert!(
            zeros
                .validate(false)
                .unwrap_err()
                .to_string()
                .contains("both be 0")
        );
        zeros.validate(true).unwrap();
    }

    #[test]
    fn steps_deserialize_in_argo_shape() {
        let c: Canary = serde_json::from_str(
            r#"{"steps":[{"setWeight":20},{"pause":{"duration":30}},{"pause":{}},{"setReplicas":"50%"},{"approval":{}},
                {"pause":{"duration":"1m30s"}},{"pause":{"duration":"30s"}},{"pause":{"duration":"1h"}}],
                "maxSurge":"50%","maxUnavailable":0}"#,
        )
        .unwrap();
        assert_eq!(c.steps.len(), 8);
        assert_eq!(
            c.steps[3],
            CanaryStep::SetReplicas(IntOrPercent::Percent(50))
        );
        let secs = |i: usize| match &c.steps[i] {
            CanaryStep::Pause(p) => p.duration.and_then(|d| d.to_duration()),
            other => panic!("{other:?}"),
        };
        assert_eq!(secs(1), Some(Duration::from_secs(30)));
        assert_eq!(secs(2), None);
        assert_eq!(secs(5), Some(Duration::from_secs(90)));
        assert_eq!(secs(6), Some(Duration::from_secs(30)));
        assert_eq!(secs(7), Some(Duration::from_secs(3600)));
        assert_eq!(c.fenceposts(10), (5, 0));
        // Written back in a form that reads back the same.
        let back: Canary = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn pause_durations_in_both_forms_and_their_errors() {
        let read = |json: &str| serde_json::from_str::<PauseStep>(json);
        let d = |json: &str| read(json).unwrap().duration.unwrap();
        assert_eq!(d(r#"{"duration":90}"#), d(r#"{"duration":"1m30s"}"#));
        assert_eq!(
            d(r#"{"duration":"90"}"#).to_duration(),
            Some(Duration::from_secs(90))
        );
        // Negative values are read and left to validation, which names the step.
        assert!(d(r#"{"duration":-5}"#).is_negative());
        assert_eq!(d(r#"{"duration":"-5s"}"#), PauseDuration::from_secs(-5));
        assert_eq!(d(r#"{"duration":"-5s"}"#).to_string(), "-5s");
        assert_eq!(d(r#"{"duration":"-0s"}"#), PauseDuration::from_secs(0));
        let err = read(r#"{"duration":"5 minutes"}"#).unwrap_err().to_string();
        assert!(
            err.contains("invalid pause duration `5 minutes`") && err.contains("unknown unit"),
            "{err}"
        );
        let err = read(r#"{"duration":1.5}"#).unwrap_err().to_string();
        assert!(err.contains("whole seconds or a Go duration"), "{err}");
        assert!(
            read(r#"{"duration":"1h30"}"#).is_err(),
            "number without unit"
        );
        // Round trips: whole seconds as numbers, fractions in Go notation.
        for text in ["90", "\"1m30s\"", "\"1500ms\"", "-5", "\"-250ms\"", "0"] {
            let json = format!(r#"{{"duration":{text}}}"#);
            let step = read(&json).unwrap();
            let again = serde_json::to_string(&step).unwrap();
            assert_eq!(read(&again).unwrap(), step, "{json} -> {again}");
        }
        assert_eq!(
            serde_json::to_string(&read(r#"{"duration":"1m30s"}"#).unwrap()).unwrap(),
            r#"{"duration":90}"#
        );
        assert_eq!(
            serde_json::to_string(&CanaryStep::pause_until_promoted()).unwrap(),
            r#"{"pause":{}}"#
        );
    }
}
