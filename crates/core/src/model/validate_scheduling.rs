//! Validation of an application's scheduling constraints (`affinity`,
//! `topologySpreadConstraints`, `underlay`, `gang`), with Kubernetes' rules where Kubernetes
//! has the field.

use super::scheduling::{LabelSelector, NodeSelectorTerm, PodAffinity, SelectorRequirement};
use super::spec::AppSpec;
use super::validate::Collector;

/// Weights of preferred terms.
const WEIGHTS: std::ops::RangeInclusive<i32> = 1..=100;

impl AppSpec {
    /// Checks the scheduling fields, adding every problem to `c`.
    pub(super) fn validate_scheduling(&self, c: &mut Collector) {
        if let Some(affinity) = &self.affinity {
            if let Some(na) = &affinity.node_affinity {
                let at = "affinity.nodeAffinity";
                if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                    let at = format!("{at}.requiredDuringSchedulingIgnoredDuringExecution");
                    if req.node_selector_terms.is_empty() {
                        c.push(
                            format!("{at}.nodeSelectorTerms"),
                            "at least one term is required (an empty list matches no node)",
                        );
                    }
                    for (i, term) in req.node_selector_terms.iter().enumerate() {
                        node_term(c, &format!("{at}.nodeSelectorTerms[{i}]"), term);
                    }
                }
                for (i, p) in na
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .enumerate()
                {
                    let at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                    weight(c, &at, p.weight);
                    node_term(c, &format!("{at}.preference"), &p.preference);
                }
            }
            for (field, terms) in [
                ("podAffinity", &affinity.pod_affinity),
                ("podAntiAffinity", &affinity.pod_anti_affinity),
            ] {
                if let Some(terms) = terms {
                    pod_terms(c, &format!("affinity.{field}"), terms);
                }
            }
        }
        for (i, s) in self.topology_spread_constraints.iter().enumerate() {
            let at = format!("topologySpreadConstraints[{i}]");
            if s.max_skew < 1 {
                c.push(
                    format!("{at}.maxSkew"),
                    format!("must be >= 1, got {}", s.max_skew),
                );
            }
            topology_key(c, &at, &s.topology_key);
            if let Some(sel) = &s.label_selector {
                label_selector(c, &format!("{at}.labelSelector"), sel);
            }
        }
        if let Some(u) = &self.underlay
            && u.pool.as_deref().is_some_and(str::is_empty)
        {
            c.push("underlay.pool", "must not be empty when given");
        }
        if let Some(g) = &self.gang {
            if g.name.as_deref().is_some_and(str::is_empty) {
                c.push("gang.name", "must not be empty when given");
            }
            // Not checked against `replicas`: engines run groups of the size they are asked
            // for (`Engine::apply_group`), and release strategies run smaller groups (a
            // canary step), so the spec's `replicas` says nothing about a group's size. A
            // group smaller than minMember waits until the gang's timeout rejects it.
            if g.min_member == 0 {
                c.push("gang.minMember", "must be >= 1, got 0");
            }
            if g.timeout_seconds == Some(0) {
                c.push("gang.timeoutSeconds", "must be >= 1, got 0");
            }
        }
    }
}

fn weight(c: &mut Collector, at: &str, weight: i32) {
    if !WEIGHTS.contains(&weight) {
        c.push(
            format!("{at}.weight"),
            format!("must be in 1..=100, got {weight}"),
        );
    }
}

fn topology_key(c: &mut Collector, at: &str, key: &str) {
    if key.is_empty() {
        c.push(format!("{at}.topologyKey"), "must not be empty");
    }
}

/// Checks one requirement; `numeric` allows `Gt`/`Lt` (node selectors only).
fn requirement(c: &mut Collector, at: &str, r: &SelectorRequirement, numeric: bool) {
    if r.key.is_empty() {
        c.push(format!("{at}.key"), "must not be empty");
    }
    let problem = r.values_problem(numeric);
    if let Some(message) = problem {
        c.push(format!("{at}.values"), message);
    }
}

fn node_term(c: &mut Collector, at: &str, term: &NodeSelectorTerm) {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        c.push(
            at,
            "needs matchExpressions or matchFields (an empty term matches no node)",
        );
    }
    for (i, r) in term.match_expressions.iter().enumerate() {
        requirement(c, &format!("{at}.matchExpressions[{i}]"), r, true);
    }
    for (i, r) in term.match_fields.iter().enumerate() {
        let rat = format!("{at}.matchFields[{i}]");
        if let Some((field, message)) = r.node_field_problem() {
            c.push(format!("{rat}.{field}"), message);
        }
        requirement(c, &rat, r, false);
    }
}

fn label_selector(c: &mut Collector, at: &str, s: &LabelSelector) {
    for (i, r) in s.match_expressions.iter().enumerate() {
        requirement(c, &format!("{at}.matchExpressions[{i}]"), r, false);
    }
}

fn pod_terms(c: &mut Collector, at: &str, terms: &PodAffinity) {
    let term = |c: &mut Collector, at: &str, t: &super::scheduling::PodAffinityTerm| {
        topology_key(c, at, &t.topology_key);
        if let Some(sel) = &t.label_selector {
            label_selector(c, &format!("{at}.labelSelector"), sel);
        }
    };
    for (i, t) in terms
        .required_during_scheduling_ignored_during_execution
        .iter()
        .enumerate()
    {
        term(
            c,
            &format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
            t,
        );
    }
    for (i, w) in terms
        .preferred_during_scheduling_ignored_during_execution
        .iter()
        .enumerate()
    {
        let at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
        weight(c, &at, w.weight);
        term(c, &format!("{at}.podAffinityTerm"), &w.pod_affinity_term);
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{
        Affinity, AppSpec, ContainerSpec, GangSpec, LabelSelector, NodeAffinity, NodeSelector,
        NodeSelectorTerm, PodAffinity, PodAffinityTerm, PreferredSchedulingTerm, SelectorOperator,
        SelectorRequirement, TopologySpreadConstraint, UnderlaySpec, ValidationTarget,
        WeightedPodAffinityTerm, WhenUnsatisfiable,
    };

    fn spec() -> AppSpec {
        AppSpec::new("web", vec![ContainerSpec::new("app", ["/bin/demo"])]).replicas(3)
    }

    #[test]
    fn valid_constraints_pass() {
        let web = LabelSelector::match_labels([("app", "web")]);
        let spec = spec()
            .priority(10)
            .affinity(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm::new(vec![
                            SelectorRequirement::new("cores", SelectorOperator::Gt, ["4"]),
                        ])],
                    }),
                    preferred_during_scheduling_ignored_during_execution: Vec::new(),
                }),
                pod_affinity: None,
                pod_anti_affinity: Some(PodAffinity {
                    required_during_scheduling_ignored_during_execution: vec![
                        PodAffinityTerm::new(web.clone(), "kubernetes.io/hostname"),
                    ],
                    preferred_during_scheduling_ignored_during_execution: Vec::new(),
                }),
            })
            .spread(TopologySpreadConstraint::new(
                1,
                "zone",
                WhenUnsatisfiable::ScheduleAnyway,
                web,
            ))
            .underlay(UnderlaySpec {
                pool: Some("games".into()),
                fixed_ip: true,
            })
            .gang(GangSpec::new(3));
        spec.validate(ValidationTarget::LOCAL).unwrap();
    }

    #[test]
    fn every_scheduling_error_names_its_field() {
        let bad = |key: &str, op, values: &[&str]| {
            SelectorRequirement::new(key, op, values.iter().copied())
        };
        let mut spec = spec().affinity(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        NodeSelectorTerm::default(),
                        NodeSelectorTerm::new(vec![
                            bad("zone", SelectorOperator::In, &[]),
                            bad("cores", SelectorOperator::Lt, &["x"]),
                        ]),
                    ],
                }),
                preferred_during_scheduling_ignored_during_execution: vec![
                    PreferredSchedulingTerm {
                        weight: 0,
                        preference: NodeSelectorTerm::new(vec![bad(
                            "gpu",
                            SelectorOperator::Exists,
                            &["1"],
                        )]),
                    },
                ],
            }),
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Vec::new(),
                preferred_during_scheduling_ignored_during_execution: vec![
                    WeightedPodAffinityTerm {
                        weight: 101,
                        pod_affinity_term: PodAffinityTerm::new(LabelSelector::default(), ""),
                    },
                ],
            }),
            pod_anti_affinity: None,
        });
        spec.topology_spread_constraints
            .push(TopologySpreadConstraint {
                max_skew: 0,
                topology_key: String::new(),
                when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
                label_selector: Some(LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![bad("n", SelectorOperator::Gt, &["1"])],
                }),
            });
        spec.underlay = Some(UnderlaySpec {
            pool: Some(String::new()),
            fixed_ip: false,
        });
        spec.gang = Some(GangSpec::new(0));
        let err = spec.validate(ValidationTarget::LOCAL).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        let na = "affinity.nodeAffinity";
        let req = format!("{na}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms");
        let pref = format!("{na}.preferredDuringSchedulingIgnoredDuringExecution[0]");
        let pa = "affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]";
        assert_eq!(
            paths,
            [
                format!("{req}[0]").as_str(),
                &format!("{req}[1].matchExpressions[0].values"),
                &format!("{req}[1].matchExpressions[1].values"),
                &format!("{pref}.weight"),
                &format!("{pref}.preference.matchExpressions[0].values"),
                &format!("{pa}.weight"),
                &format!("{pa}.podAffinityTerm.topologyKey"),
                "topologySpreadConstraints[0].maxSkew",
                "topologySpreadConstraints[0].topologyKey",
                "topologySpreadConstraints[0].labelSelector.matchExpressions[0].values",
                "underlay.pool",
                "gang.minMember",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("operator Lt needs exactly one integer value, got [\"x\"]"),
            "{text}"
        );
        assert!(
            text.contains("gang.minMember: must be >= 1, got 0"),
            "{text}"
        );
    }
}
