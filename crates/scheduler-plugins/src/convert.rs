//! Core's scheduling types ([`rorqual_core::model`]'s affinity, selectors and spread
//! constraints, in Kubernetes' shapes) → the scheduler's interned selectors and terms.
//!
//! One mapping for every way a pod reaches the scheduler: [`pod_from_request`] (core's
//! `Placement` seam) and [`crate::kube`] (Kubernetes JSON, decoded into the core types and
//! checked there with field paths) both convert through these functions, so the same
//! constraint always yields the same selector.
//!
//! A `matchFields` requirement on `metadata.name` (the only field Kubernetes supports) becomes
//! a requirement on the node's [`HOSTNAME_LABEL`], which [`NodeInfo::new`] sets to the node's
//! name (nodes whose hostname label differs from their name are matched by the label).
//!
//! [`pod_from_request`]: crate::scheduler::placement::pod_from_request
//! [`NodeInfo::new`]: crate::snapshot::NodeInfo::new

use rorqual_core::model::{
    LabelSelector, NODE_NAME_FIELD, NodeSelector as CoreNodeSelector, NodeSelectorTerm,
    PodAffinity, PodAffinityTerm, PreferredSchedulingTerm, SelectorOperator, SelectorRequirement,
    TopologySpreadConstraint, WhenUnsatisfiable as CoreWhen,
};

use crate::interner::Sym;
use crate::selector::{NodeSelector, Operator, Requirement, Selector};
use crate::snapshot::{
    AffinityTerm, AffinityTerms, HOSTNAME_LABEL, SpreadConstraint, WhenUnsatisfiable,
};

impl From<SelectorOperator> for Operator {
    fn from(op: SelectorOperator) -> Operator {
        match op {
            SelectorOperator::In => Operator::In,
            SelectorOperator::NotIn => Operator::NotIn,
            SelectorOperator::Exists => Operator::Exists,
            SelectorOperator::DoesNotExist => Operator::DoesNotExist,
            SelectorOperator::Gt => Operator::Gt,
            SelectorOperator::Lt => Operator::Lt,
        }
    }
}

impl From<CoreWhen> for WhenUnsatisfiable {
    fn from(w: CoreWhen) -> WhenUnsatisfiable {
        match w {
            CoreWhen::DoNotSchedule => WhenUnsatisfiable::DoNotSchedule,
            CoreWhen::ScheduleAnyway => WhenUnsatisfiable::ScheduleAnyway,
        }
    }
}

/// One requirement on a label.
pub fn requirement(r: &SelectorRequirement) -> Requirement {
    Requirement {
        key: Sym::new(&r.key),
        operator: r.operator.into(),
        values: r.values.iter().map(|v| Sym::new(v)).collect(),
    }
}

/// A node selector term: its label requirements, then its `metadata.name` field requirements
/// as requirements on the hostname label (other fields are not supported: callers validate).
pub fn node_selector_term(term: &NodeSelectorTerm) -> Selector {
    let fields = term
        .match_fields
        .iter()
        .filter(|r| r.key == NODE_NAME_FIELD)
        .map(|r| Requirement {
            key: Sym::new(HOSTNAME_LABEL),
            ..requirement(r)
        });
    Selector(
        term.match_expressions
            .iter()
            .map(requirement)
            .chain(fields)
            .collect(),
    )
}

/// A required node selector (its terms ORed).
pub fn node_selector(selector: &CoreNodeSelector) -> NodeSelector {
    NodeSelector(
        selector
            .node_selector_terms
            .iter()
            .map(node_selector_term)
            .collect(),
    )
}

/// Preferred node affinity terms with their weights.
pub fn preferred_node_terms(terms: &[PreferredSchedulingTerm]) -> Vec<(i32, Selector)> {
    terms
        .iter()
        .map(|t| (t.weight, node_selector_term(&t.preference)))
        .collect()
}

/// A label selector: `matchLabels` pairs, then `matchExpressions`. An absent selector selects
/// nothing (Kubernetes' rule for a nil selector in affinity terms and spread constraints).
pub fn label_selector(selector: Option<&LabelSelector>) -> Selector {
    let Some(s) = selector else {
        return Selector(vec![Requirement {
            key: Sym::new(""),
            operator: Operator::In,
            values: Vec::new(),
        }]);
    };
    Selector(
        s.match_labels
            .iter()
            .map(|(k, v)| Requirement::equals(k, v))
            .chain(s.match_expressions.iter().map(requirement))
            .collect(),
    )
}

/// A pod (anti-)affinity term.
pub fn affinity_term(term: &PodAffinityTerm) -> AffinityTerm {
    AffinityTerm {
        selector: label_selector(term.label_selector.as_ref()),
        namespaces: term.namespaces.iter().map(|n| Sym::new(n)).collect(),
        topology_key: Sym::new(&term.topology_key),
    }
}

/// Required and preferred pod (anti-)affinity terms (`None`: no terms).
pub fn affinity_terms(affinity: Option<&PodAffinity>) -> AffinityTerms {
    let Some(a) = affinity else {
        return AffinityTerms::default();
    };
    AffinityTerms {
        required: a
            .required_during_scheduling_ignored_during_execution
            .iter()
            .map(affinity_term)
            .collect(),
        preferred: a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .map(|w| (w.weight, affinity_term(&w.pod_affinity_term)))
            .collect(),
    }
}

/// A topology spread constraint (a `maxSkew` below 1, which validation rejects, counts as 1).
pub fn spread_constraint(c: &TopologySpreadConstraint) -> SpreadConstraint {
    SpreadConstraint {
        max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
        topology_key: Sym::new(&c.topology_key),
        when_unsatisfiable: c.when_unsatisfiable.into(),
        selector: label_selector(c.label_selector.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interner::Labels;

    #[test]
    fn match_fields_name_the_node() {
        let term = NodeSelectorTerm {
            match_expressions: Vec::new(),
            match_fields: vec![SelectorRequirement::new(
                NODE_NAME_FIELD,
                SelectorOperator::In,
                ["n1"],
            )],
        };
        let selector = node_selector_term(&term);
        let n1 = crate::snapshot::NodeInfo::new("n1", Default::default());
        let n2 = crate::snapshot::NodeInfo::new("n2", Default::default());
        assert!(selector.matches(&n1.labels));
        assert!(!selector.matches(&n2.labels));
        assert!(!label_selector(None).matches(&Labels::new()));
        assert!(label_selector(Some(&LabelSelector::default())).matches(&Labels::new()));
    }
}
