//! Scheduling constraints of an application, in the shapes of a Kubernetes pod spec (so that
//! `affinity` and `topologySpreadConstraints` can be pasted from one), plus rorqual's own
//! underlay-address and gang requirements.
//!
//! ```
//! use rorqual_core::model::AppSpec;
//!
//! let spec = AppSpec::from_yaml(r#"
//! name: game
//! containers: [{name: server, command: [/bin/game]}]
//! priority: 100
//! affinity:
//!   nodeAffinity:
//!     requiredDuringSchedulingIgnoredDuringExecution:
//!       nodeSelectorTerms:
//!       - matchExpressions: [{key: disk, operator: In, values: [ssd]}]
//!   podAntiAffinity:
//!     requiredDuringSchedulingIgnoredDuringExecution:
//!     - labelSelector: {matchLabels: {app: game}}
//!       topologyKey: kubernetes.io/hostname
//! topologySpreadConstraints:
//! - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule,
//!    labelSelector: {matchLabels: {app: game}}}
//! underlay: {pool: games, fixedIp: true}
//! gang: {minMember: 3, timeoutSeconds: 60}
//! "#).unwrap();
//! assert_eq!(spec.priority, 100);
//! assert!(spec.affinity.is_some());
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The node field a `matchFields` requirement may name (the only one Kubernetes supports).
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// How a selector requirement compares a label's value with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    /// The value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present (no values).
    Exists,
    /// The label is absent (no values).
    DoesNotExist,
    /// The value, as an integer, is greater than the single value (node selectors only).
    Gt,
    /// The value, as an integer, is less than the single value (node selectors only).
    Lt,
}

/// One requirement on a label (or, in `matchFields`, on a node field): Kubernetes'
/// `NodeSelectorRequirement` and `LabelSelectorRequirement`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// The comparison.
    pub operator: SelectorOperator,
    /// The values: some for `In`/`NotIn`, none for `Exists`/`DoesNotExist`, one integer for
    /// `Gt`/`Lt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl SelectorRequirement {
    /// Why the operator and values do not go together, or `None`. `numeric`: Gt and Lt are
    /// allowed (node selectors); label selectors take only In, NotIn, Exists and DoesNotExist.
    /// The one rule for every entry point (specs, Kubernetes JSON).
    pub fn values_problem(&self, numeric: bool) -> Option<String> {
        let n = self.values.len();
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn if n == 0 => Some(format!(
                "operator {:?} needs at least one value",
                self.operator
            )),
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if n > 0 => Some(format!(
                "operator {:?} takes no values, got {n}",
                self.operator
            )),
            SelectorOperator::Gt | SelectorOperator::Lt if !numeric => Some(format!(
                "operator {:?} is only allowed in node selectors",
                self.operator
            )),
            SelectorOperator::Gt | SelectorOperator::Lt
                if n != 1 || self.values[0].parse::<i64>().is_err() =>
            {
                Some(format!(
                    "operator {:?} needs exactly one integer value, got {:?}",
                    self.operator, self.values
                ))
            }
            _ => None,
        }
    }

    /// Why this requirement cannot be a node term's `matchFields` entry, with the field at
    /// fault (`key` or `operator`): only `metadata.name` with In or NotIn is supported.
    pub fn node_field_problem(&self) -> Option<(&'static str, String)> {
        if self.key != NODE_NAME_FIELD {
            return Some((
                "key",
                format!("only {NODE_NAME_FIELD:?} is supported, got {:?}", self.key),
            ));
        }
        if !matches!(
            self.operator,
            SelectorOperator::In | SelectorOperator::NotIn
        ) {
            return Some((
                "operator",
                format!("must be In or NotIn, got {:?}", self.operator),
            ));
        }
        None
    }

    /// A requirement on `key`.
    pub fn new<I, S>(key: impl Into<String>, operator: SelectorOperator, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `value` (the label's value, `None` when absent) satisfies the requirement.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => !value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
            SelectorOperator::Gt | SelectorOperator::Lt => {
                let (Some(value), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                let (Ok(value), Ok(bound)) = (value.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == SelectorOperator::Gt {
                    value > bound
                } else {
                    value < bound
                }
            }
        }
    }

    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }
}

/// One term of a node selector: every requirement must hold (Kubernetes'
/// `NodeSelectorTerm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelectorTerm {
    /// Requirements on node labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
    /// Requirements on node fields; only `metadata.name` (the node's name) is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<SelectorRequirement>,
}

impl NodeSelectorTerm {
    /// A term of `match_expressions`.
    pub fn new(match_expressions: Vec<SelectorRequirement>) -> Self {
        NodeSelectorTerm {
            match_expressions,
            match_fields: Vec::new(),
        }
    }

    /// Whether node `name` with `labels` satisfies every requirement.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.match_expressions.iter().all(|r| r.matches(labels))
            && self
                .match_fields
                .iter()
                .all(|r| r.key == NODE_NAME_FIELD && r.matches_value(Some(name)))
    }
}

/// A node selector: any of its terms must hold (Kubernetes' `NodeSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSelector {
    /// The terms, ORed; an empty list matches no node.
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

impl NodeSelector {
    /// Whether node `name` with `labels` satisfies some term.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms
            .iter()
            .any(|t| t.matches(name, labels))
    }
}

/// A weighted node preference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferredSchedulingTerm {
    /// 1..=100.
    pub weight: i32,
    /// The preferred nodes.
    pub preference: NodeSelectorTerm,
}

/// Node affinity (Kubernetes' `NodeAffinity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAffinity {
    /// Nodes the instances must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    /// Nodes the instances prefer, with weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A label selector (Kubernetes' `LabelSelector`): every pair and every expression must hold;
/// an empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// `key=value` pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

impl LabelSelector {
    /// A selector of `key=value` pairs.
    pub fn match_labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// Which instances (pods) an affinity term is about, and what "together" means (Kubernetes'
/// `PodAffinityTerm`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAffinityTerm {
    /// The instances the term is about; absent selects none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Their namespaces; empty means the application's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The node label whose equal values count as "together" (e.g. `kubernetes.io/hostname`).
    pub topology_key: String,
}

impl PodAffinityTerm {
    /// A term about instances selected by `selector`, per `topology_key`.
    pub fn new(selector: LabelSelector, topology_key: impl Into<String>) -> Self {
        PodAffinityTerm {
            label_selector: Some(selector),
            namespaces: Vec::new(),
            topology_key: topology_key.into(),
        }
    }
}

/// A weighted pod affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedPodAffinityTerm {
    /// 1..=100.
    pub weight: i32,
    /// The term.
    pub pod_affinity_term: PodAffinityTerm,
}

/// Pod affinity or anti-affinity (Kubernetes' `PodAffinity` / `PodAntiAffinity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAffinity {
    /// Terms every placement must satisfy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    /// Weighted terms placements prefer to satisfy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

impl PodAffinity {
    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.required_during_scheduling_ignored_during_execution
            .is_empty()
            && self
                .preferred_during_scheduling_ignored_during_execution
                .is_empty()
    }
}

/// Node affinity, pod affinity and pod anti-affinity (Kubernetes' `Affinity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Affinity {
    /// Which nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    /// Near which instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    /// Away from which instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
}

impl Affinity {
    /// The required node affinity, if any.
    pub fn required_node_affinity(&self) -> Option<&NodeSelector> {
        self.node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()
    }
}

/// What a topology spread constraint does when it cannot be met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WhenUnsatisfiable {
    /// Nodes that would exceed the skew are not used (the default).
    #[default]
    DoNotSchedule,
    /// Nodes that reduce the skew are preferred.
    ScheduleAnyway,
}

/// Spreads instances over the values of a node label (Kubernetes'
/// `TopologySpreadConstraint`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologySpreadConstraint {
    /// Largest allowed difference between the most and the least loaded domain (≥ 1).
    pub max_skew: i32,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// Hard (`DoNotSchedule`) or soft (`ScheduleAnyway`).
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// Which instances count; absent counts none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

impl TopologySpreadConstraint {
    /// At most `max_skew` difference over the values of `topology_key` among instances
    /// selected by `selector`.
    pub fn new(
        max_skew: i32,
        topology_key: impl Into<String>,
        when_unsatisfiable: WhenUnsatisfiable,
        selector: LabelSelector,
    ) -> Self {
        TopologySpreadConstraint {
            max_skew,
            topology_key: topology_key.into(),
            when_unsatisfiable,
            label_selector: Some(selector),
        }
    }
}

/// An application's need for underlay (routable, pool-managed) addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnderlaySpec {
    /// Only this pool; absent: any pool with a free address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Stateful identities keep their address across restarts and moves, through a fixed-IP
    /// claim keyed `<namespace>/<app>-<ordinal>` (ignored for stateless applications).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_ip: bool,
}

/// Gang (co-)scheduling: no instance is started until `minMember` of the gang fit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GangSpec {
    /// The gang's name, unique in the namespace (default: the application's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many instances must fit before any is started (≥ 1; not checked against
    /// `replicas`, since engines and release strategies run groups of other sizes: a group
    /// smaller than this waits until the gang's timeout rejects it).
    pub min_member: u32,
    /// How long placed members wait for the rest, in seconds (default: the scheduler's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl GangSpec {
    /// A gang of at least `min_member` instances, named after the application.
    pub fn new(min_member: u32) -> Self {
        GangSpec {
            name: None,
            min_member,
            timeout_seconds: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn requirements_match_like_kubernetes() {
        use SelectorOperator::*;
        let l = labels(&[("zone", "a"), ("cores", "16")]);
        let r = |key: &str, op, values: &[&str]| {
            SelectorRequirement::new(key, op, values.iter().copied())
        };
        assert!(r("zone", In, &["a", "b"]).matches(&l));
        assert!(!r("zone", NotIn, &["a"]).matches(&l));
        assert!(r("gpu", NotIn, &["x"]).matches(&l));
        assert!(r("zone", Exists, &[]).matches(&l));
        assert!(r("gpu", DoesNotExist, &[]).matches(&l));
        assert!(r("cores", Gt, &["8"]).matches(&l));
        assert!(!r("cores", Lt, &["8"]).matches(&l));
        assert!(!r("zone", Gt, &["8"]).matches(&l));
        let term = NodeSelectorTerm {
            match_expressions: vec![r("zone", In, &["a"])],
            match_fields: vec![r(NODE_NAME_FIELD, In, &["n1"])],
        };
        assert!(term.matches("n1", &l));
        assert!(!term.matches("n2", &l));
        assert!(!NodeSelector::default().matches("n1", &l));
    }

    #[test]
    fn pod_spec_json_round_trips_and_omits_defaults() {
        let json = serde_json::json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}]
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}},
                    "topologyKey": "kubernetes.io/hostname"}}]}
        });
        let affinity: Affinity = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&affinity).unwrap(), json);
        let spread: TopologySpreadConstraint =
            serde_json::from_value(serde_json::json!({"maxSkew": 1, "topologyKey": "zone"}))
                .unwrap();
        assert_eq!(spread.when_unsatisfiable, WhenUnsatisfiable::DoNotSchedule);
        assert_eq!(
            serde_json::to_value(UnderlaySpec::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
