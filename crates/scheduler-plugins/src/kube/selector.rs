//! Selectors and affinity terms in Kubernetes JSON: `NodeSelectorTerm`s, `LabelSelector`s
//! and pod (anti-)affinity terms, shared by a pod's node affinity, pod affinity and topology
//! spread constraints.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Ctx, KubeError, null_as_default};
use crate::interner::Sym;
use crate::selector::{Operator, Requirement, Selector};
use crate::snapshot::{AffinityTerm, AffinityTerms};

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

impl Ctx {
    pub(super) fn requirement(&self, path: &str, e: &Expr) -> Result<Requirement, KubeError> {
        let operator = Operator::parse(&e.operator).ok_or_else(|| {
            self.err(
                format!("{path}.operator"),
                format!("unknown operator `{}`", e.operator),
            )
        })?;
        let n = e.values.len();
        let ok = match operator {
            Operator::In | Operator::NotIn => n > 0,
            Operator::Exists | Operator::DoesNotExist => n == 0,
            Operator::Gt | Operator::Lt => n == 1 && e.values[0].parse::<i64>().is_ok(),
        };
        if !ok {
            return Err(self.err(
                format!("{path}.values"),
                format!("{n} value(s) do not suit operator {}", e.operator),
            ));
        }
        Ok(Requirement {
            key: Sym::new(&e.key),
            operator,
            values: e.values.iter().map(|v| Sym::new(v)).collect(),
        })
    }

    pub(super) fn exprs(&self, path: &str, exprs: &[Expr]) -> Result<Vec<Requirement>, KubeError> {
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| self.requirement(&format!("{path}[{i}]"), e))
            .collect()
    }

    pub(super) fn label_selector(
        &self,
        path: &str,
        s: &Option<LabelSelectorJson>,
    ) -> Result<Selector, KubeError> {
        let Some(s) = s else {
            // A nil selector selects nothing.
            return Ok(Selector(vec![Requirement {
                key: Sym::new(""),
                operator: Operator::In,
                values: Vec::new(),
            }]));
        };
        let mut reqs: Vec<Requirement> = s
            .match_labels
            .iter()
            .map(|(k, v)| Requirement::equals(k, v))
            .collect();
        reqs.extend(self.exprs(&format!("{path}.matchExpressions"), &s.match_expressions)?);
        Ok(Selector(reqs))
    }

    pub(super) fn pod_terms(
        &self,
        path: &str,
        a: &Option<PodAffinityJson>,
    ) -> Result<AffinityTerms, KubeError> {
        let Some(a) = a else {
            return Ok(AffinityTerms::default());
        };
        let term = |p: &str, t: &PodAffinityTermJson| -> Result<AffinityTerm, KubeError> {
            if t.topology_key.is_empty() {
                return Err(self.err(format!("{p}.topologyKey"), "must not be empty"));
            }
            Ok(AffinityTerm {
                selector: self.label_selector(&format!("{p}.labelSelector"), &t.label_selector)?,
                namespaces: t.namespaces.iter().map(|n| Sym::new(n)).collect(),
                topology_key: Sym::new(&t.topology_key),
            })
        };
        let req = "requiredDuringSchedulingIgnoredDuringExecution";
        let pref = "preferredDuringSchedulingIgnoredDuringExecution";
        let mut out = AffinityTerms::default();
        for (i, t) in a
            .required_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            out.required.push(term(&format!("{path}.{req}[{i}]"), t)?);
        }
        for (i, t) in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!("{path}.{pref}[{i}]");
            if !(1..=100).contains(&t.weight) {
                return Err(self.err(
                    format!("{p}.weight"),
                    format!("{} is not in 1..=100", t.weight),
                ));
            }
            out.preferred.push((
                t.weight,
                term(&format!("{p}.podAffinityTerm"), &t.pod_affinity_term)?,
            ));
        }
        Ok(out)
    }
}
