//! Selectors and affinity terms in Kubernetes JSON: `NodeSelectorTerm`s, `LabelSelector`s
//! and pod (anti-)affinity terms, shared by a pod's node affinity, pod affinity and topology
//! spread constraints. The JSON is checked here (errors name the field) and decoded into
//! core's types, which [`crate::convert`] turns into the scheduler's, as for core's
//! `PlacementRequest`.

use std::collections::BTreeMap;

use rorqual_core::model::{
    LabelSelector, NodeSelectorTerm, PodAffinity, PodAffinityTerm, SelectorOperator,
    SelectorRequirement, WeightedPodAffinityTerm,
};
use serde::Deserialize;

use super::{Ctx, KubeError, null_as_default};
use crate::convert;
use crate::snapshot::AffinityTerms;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Expr {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) key: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) operator: String,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct NodeTerm {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) match_expressions: Vec<Expr>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) match_fields: Vec<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct NodeSelectorJson {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) node_selector_terms: Vec<NodeTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct PreferredNodeTerm {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) weight: i32,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) preference: NodeTerm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct NodeAffinityJson {
    pub(super) required_during_scheduling_ignored_during_execution: Option<NodeSelectorJson>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) preferred_during_scheduling_ignored_during_execution: Vec<PreferredNodeTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct LabelSelectorJson {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) match_labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) match_expressions: Vec<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct PodAffinityTermJson {
    pub(super) label_selector: Option<LabelSelectorJson>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) namespaces: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) topology_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct WeightedPodTerm {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) weight: i32,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) pod_affinity_term: PodAffinityTermJson,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct PodAffinityJson {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) required_during_scheduling_ignored_during_execution: Vec<PodAffinityTermJson>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct AffinityJson {
    pub(super) node_affinity: Option<NodeAffinityJson>,
    pub(super) pod_affinity: Option<PodAffinityJson>,
    pub(super) pod_anti_affinity: Option<PodAffinityJson>,
}

/// Parses a Kubernetes selector operator name.
fn operator(name: &str) -> Option<SelectorOperator> {
    Some(match name {
        "In" => SelectorOperator::In,
        "NotIn" => SelectorOperator::NotIn,
        "Exists" => SelectorOperator::Exists,
        "DoesNotExist" => SelectorOperator::DoesNotExist,
        "Gt" => SelectorOperator::Gt,
        "Lt" => SelectorOperator::Lt,
        _ => return None,
    })
}

impl Ctx {
    /// A requirement, checked by core's rule ([`SelectorRequirement::values_problem`]);
    /// `numeric`: Gt and Lt are allowed (node selectors).
    pub(super) fn requirement(
        &self,
        path: &str,
        e: &Expr,
        numeric: bool,
    ) -> Result<SelectorRequirement, KubeError> {
        let op = operator(&e.operator).ok_or_else(|| {
            self.err(
                format!("{path}.operator"),
                format!("unknown operator `{}`", e.operator),
            )
        })?;
        let r = SelectorRequirement {
            key: e.key.clone(),
            operator: op,
            values: e.values.clone(),
        };
        if let Some(message) = r.values_problem(numeric) {
            return Err(self.err(format!("{path}.values"), message));
        }
        Ok(r)
    }

    pub(super) fn exprs(
        &self,
        path: &str,
        exprs: &[Expr],
        numeric: bool,
    ) -> Result<Vec<SelectorRequirement>, KubeError> {
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| self.requirement(&format!("{path}[{i}]"), e, numeric))
            .collect()
    }

    /// A node selector term; `matchFields` may only name `metadata.name`.
    pub(super) fn node_term(
        &self,
        path: &str,
        t: &NodeTerm,
    ) -> Result<NodeSelectorTerm, KubeError> {
        let match_fields = self.exprs(&format!("{path}.matchFields"), &t.match_fields, false)?;
        for (i, r) in match_fields.iter().enumerate() {
            if let Some((field, message)) = r.node_field_problem() {
                return Err(self.err(format!("{path}.matchFields[{i}].{field}"), message));
            }
        }
        Ok(NodeSelectorTerm {
            match_expressions: self.exprs(
                &format!("{path}.matchExpressions"),
                &t.match_expressions,
                true,
            )?,
            match_fields,
        })
    }

    pub(super) fn label_selector(
        &self,
        path: &str,
        s: &Option<LabelSelectorJson>,
    ) -> Result<Option<LabelSelector>, KubeError> {
        let Some(s) = s else {
            return Ok(None);
        };
        Ok(Some(LabelSelector {
            match_labels: s.match_labels.clone(),
            match_expressions: self.exprs(
                &format!("{path}.matchExpressions"),
                &s.match_expressions,
                false,
            )?,
        }))
    }

    pub(super) fn pod_terms(
        &self,
        path: &str,
        a: &Option<PodAffinityJson>,
    ) -> Result<AffinityTerms, KubeError> {
        let Some(a) = a else {
            return Ok(AffinityTerms::default());
        };
        let term = |p: &str, t: &PodAffinityTermJson| -> Result<PodAffinityTerm, KubeError> {
            if t.topology_key.is_empty() {
                return Err(self.err(format!("{p}.topologyKey"), "must not be empty"));
            }
            Ok(PodAffinityTerm {
                label_selector: self
                    .label_selector(&format!("{p}.labelSelector"), &t.label_selector)?,
                namespaces: t.namespaces.clone(),
                topology_key: t.topology_key.clone(),
            })
        };
        let req = "requiredDuringSchedulingIgnoredDuringExecution";
        let pref = "preferredDuringSchedulingIgnoredDuringExecution";
        let mut out = PodAffinity::default();
        for (i, t) in a
            .required_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            out.required_during_scheduling_ignored_during_execution
                .push(term(&format!("{path}.{req}[{i}]"), t)?);
        }
        for (i, t) in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!("{path}.{pref}[{i}]");
            self.weight(&p, t.weight)?;
            out.preferred_during_scheduling_ignored_during_execution
                .push(WeightedPodAffinityTerm {
                    weight: t.weight,
                    pod_affinity_term: term(&format!("{p}.podAffinityTerm"), &t.pod_affinity_term)?,
                });
        }
        Ok(convert::affinity_terms(Some(&out)))
    }

    /// Checks the weight of a preferred term at `path`.
    pub(super) fn weight(&self, path: &str, weight: i32) -> Result<(), KubeError> {
        if (1..=100).contains(&weight) {
            Ok(())
        } else {
            Err(self.err(
                format!("{path}.weight"),
                format!("{weight} is not in 1..=100"),
            ))
        }
    }
}
