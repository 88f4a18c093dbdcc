//! Kubernetes JSON → snapshots: the subset of `Pod` and `Node` the plugins read, decoded from
//! the API's JSON (what an extender receives). With feature `k8s`, typed k8s-openapi objects
//! convert through the same mapping, so both paths agree.
//!
//! rorqual's own pod annotations: [`ANNOTATION_IDENTITY`] (`namespace/name-ordinal`),
//! [`ANNOTATION_PREVIOUS_NODE`], [`ANNOTATION_PREVIOUS_ZONE`], [`ANNOTATION_UNDERLAY_POOL`]
//! (a pool name, or `*` for any), [`ANNOTATION_UNDERLAY_CLAIM`] (`pool/address` of a bound
//! fixed-IP claim), [`ANNOTATION_GANG`], [`ANNOTATION_GANG_MIN_MEMBER`],
//! [`ANNOTATION_GANG_TIMEOUT`] (seconds).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rorqual_core::model::{
    Cpu, Memory, Resources, Taint, TaintEffect, Toleration, TolerationOperator,
};
use serde::Deserialize;
use serde_json::Value;

use crate::interner::Sym;
use crate::selector::{NodeSelector, Operator, Requirement, Selector};
use crate::snapshot::{
    AffinityTerm, AffinityTerms, GangMembership, HostPort, NodeInfo, PodInfo, Protocol,
    SpreadConstraint, StatefulIdentity, UnderlayRequest, WhenUnsatisfiable,
};

/// Stable identity of a stateful pod.
pub const ANNOTATION_IDENTITY: &str = "rorqual.io/identity";
/// The node the identity ran on last.
pub const ANNOTATION_PREVIOUS_NODE: &str = "rorqual.io/previous-node";
/// The zone the identity ran in last.
pub const ANNOTATION_PREVIOUS_ZONE: &str = "rorqual.io/previous-zone";
/// The pod needs an underlay address from this pool (`*`: any pool).
pub const ANNOTATION_UNDERLAY_POOL: &str = "rorqual.io/underlay-pool";
/// The pod's fixed-IP claim is bound to `pool/address`.
pub const ANNOTATION_UNDERLAY_CLAIM: &str = "rorqual.io/underlay-claim";
/// The pod's gang (pod group) name.
pub const ANNOTATION_GANG: &str = "rorqual.io/gang";
/// The gang's minMember.
pub const ANNOTATION_GANG_MIN_MEMBER: &str = "rorqual.io/gang-min-member";
/// How long gang members wait at Permit, in seconds.
pub const ANNOTATION_GANG_TIMEOUT: &str = "rorqual.io/gang-timeout-seconds";

/// A Kubernetes object that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{name}`: {path}: {reason}")]
pub struct KubeError {
    /// `Pod` or `Node`.
    pub kind: &'static str,
    /// The object's name (or `?`).
    pub name: String,
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Decodes an optional field whose JSON may be `null` (as Kubernetes clients send for unset
/// fields) as its default, like a missing field; k8s-openapi models these fields as
/// `Option`s.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Decodes `value` as `T`, naming the object (from `metadata.name`, and `namespace` for pods)
/// and the failing field's path in the error.
fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    value: &Value,
) -> Result<T, KubeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let meta = value.get("metadata");
        let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
        let name = match (kind, text("name")) {
            (_, None) => "?".to_owned(),
            ("Pod", Some(name)) => format!("{}/{name}", text("namespace").unwrap_or("default")),
            (_, Some(name)) => name.to_owned(),
        };
        let path = e.path().to_string();
        KubeError {
            kind,
            name,
            path: if path == "." { "$".to_owned() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    #[serde(deserialize_with = "null_as_default")]
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Container {
    #[serde(deserialize_with = "null_as_default")]
    resources: ContainerResources,
    #[serde(deserialize_with = "null_as_default")]
    ports: Vec<ContainerPort>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerResources {
    #[serde(deserialize_with = "null_as_default")]
    requests: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerPort {
    host_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Expr {
    #[serde(deserialize_with = "null_as_default")]
    key: String,
    #[serde(deserialize_with = "null_as_default")]
    operator: String,
    #[serde(deserialize_with = "null_as_default")]
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeTerm {
    #[serde(deserialize_with = "null_as_default")]
    match_expressions: Vec<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeSelectorJson {
    #[serde(deserialize_with = "null_as_default")]
    node_selector_terms: Vec<NodeTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PreferredNodeTerm {
    #[serde(deserialize_with = "null_as_default")]
    weight: i32,
    #[serde(deserialize_with = "null_as_default")]
    preference: NodeTerm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeAffinityJson {
    required_during_scheduling_ignored_during_execution: Option<NodeSelectorJson>,
    #[serde(deserialize_with = "null_as_default")]
    preferred_during_scheduling_ignored_during_execution: Vec<PreferredNodeTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct LabelSelectorJson {
    #[serde(deserialize_with = "null_as_default")]
    match_labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    match_expressions: Vec<Expr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodAffinityTermJson {
    label_selector: Option<LabelSelectorJson>,
    #[serde(deserialize_with = "null_as_default")]
    namespaces: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    topology_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct WeightedPodTerm {
    #[serde(deserialize_with = "null_as_default")]
    weight: i32,
    #[serde(deserialize_with = "null_as_default")]
    pod_affinity_term: PodAffinityTermJson,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodAffinityJson {
    #[serde(deserialize_with = "null_as_default")]
    required_during_scheduling_ignored_during_execution: Vec<PodAffinityTermJson>,
    #[serde(deserialize_with = "null_as_default")]
    preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodTerm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct AffinityJson {
    node_affinity: Option<NodeAffinityJson>,
    pod_affinity: Option<PodAffinityJson>,
    pod_anti_affinity: Option<PodAffinityJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TolerationJson {
    #[serde(deserialize_with = "null_as_default")]
    key: String,
    #[serde(deserialize_with = "null_as_default")]
    operator: String,
    #[serde(deserialize_with = "null_as_default")]
    value: String,
    #[serde(deserialize_with = "null_as_default")]
    effect: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SpreadJson {
    #[serde(deserialize_with = "null_as_default")]
    max_skew: i64,
    #[serde(deserialize_with = "null_as_default")]
    topology_key: String,
    #[serde(deserialize_with = "null_as_default")]
    when_unsatisfiable: String,
    label_selector: Option<LabelSelectorJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    node_name: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    node_selector: BTreeMap<String, String>,
    affinity: Option<AffinityJson>,
    #[serde(deserialize_with = "null_as_default")]
    tolerations: Vec<TolerationJson>,
    #[serde(deserialize_with = "null_as_default")]
    containers: Vec<Container>,
    #[serde(deserialize_with = "null_as_default")]
    init_containers: Vec<Container>,
    #[serde(deserialize_with = "null_as_default")]
    overhead: BTreeMap<String, Value>,
    priority: Option<i32>,
    #[serde(deserialize_with = "null_as_default")]
    topology_spread_constraints: Vec<SpreadJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodJson {
    #[serde(deserialize_with = "null_as_default")]
    metadata: Meta,
    #[serde(deserialize_with = "null_as_default")]
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TaintJson {
    #[serde(deserialize_with = "null_as_default")]
    key: String,
    #[serde(deserialize_with = "null_as_default")]
    value: String,
    #[serde(deserialize_with = "null_as_default")]
    effect: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeSpec {
    #[serde(deserialize_with = "null_as_default")]
    taints: Vec<TaintJson>,
    #[serde(deserialize_with = "null_as_default")]
    unschedulable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Condition {
    #[serde(rename = "type")]
    #[serde(deserialize_with = "null_as_default")]
    kind: String,
    #[serde(deserialize_with = "null_as_default")]
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeStatus {
    #[serde(deserialize_with = "null_as_default")]
    allocatable: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    capacity: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    conditions: Vec<Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeJson {
    #[serde(deserialize_with = "null_as_default")]
    metadata: Meta,
    #[serde(deserialize_with = "null_as_default")]
    spec: NodeSpec,
    #[serde(deserialize_with = "null_as_default")]
    status: NodeStatus,
}

struct Ctx {
    kind: &'static str,
    name: String,
}

impl Ctx {
    fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> KubeError {
        KubeError {
            kind: self.kind,
            name: self.name.clone(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    fn quantity(&self, path: &str, v: &Value) -> Result<String, KubeError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.err(path, format!("expected a quantity, found {other}"))),
        }
    }

    fn resources(&self, path: &str, map: &BTreeMap<String, Value>) -> Result<Resources, KubeError> {
        let mut r = Resources::default();
        if let Some(v) = map.get("cpu") {
            let q = self.quantity(&format!("{path}.cpu"), v)?;
            r.cpu = q
                .parse::<Cpu>()
                .map_err(|e| self.err(format!("{path}.cpu"), e.to_string()))?;
        }
        if let Some(v) = map.get("memory") {
            let q = self.quantity(&format!("{path}.memory"), v)?;
            r.memory = q
                .parse::<Memory>()
                .map_err(|e| self.err(format!("{path}.memory"), e.to_string()))?;
        }
        Ok(r)
    }

    fn requirement(&self, path: &str, e: &Expr) -> Result<Requirement, KubeError> {
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

    fn exprs(&self, path: &str, exprs: &[Expr]) -> Result<Vec<Requirement>, KubeError> {
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| self.requirement(&format!("{path}[{i}]"), e))
            .collect()
    }

    fn label_selector(
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

    fn pod_terms(
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

fn effect(s: &str) -> Option<TaintEffect> {
    match s {
        "NoSchedule" => Some(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(TaintEffect::NoExecute),
        _ => None,
    }
}

/// Reads a pod from its Kubernetes JSON.
pub fn pod_from_json(value: &Value) -> Result<PodInfo, KubeError> {
    let pod: PodJson = decode("Pod", value)?;
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let cx = Ctx {
        kind: "Pod",
        name: format!("{namespace}/{}", meta.name),
    };
    let spec = &pod.spec;
    let mut requests = Resources::default();
    for (i, c) in spec.containers.iter().enumerate() {
        requests = requests.saturating_add(cx.resources(
            &format!("spec.containers[{i}].resources.requests"),
            &c.resources.requests,
        )?);
    }
    for (i, c) in spec.init_containers.iter().enumerate() {
        let r = cx.resources(
            &format!("spec.initContainers[{i}].resources.requests"),
            &c.resources.requests,
        )?;
        requests.cpu = requests.cpu.max(r.cpu);
        requests.memory = requests.memory.max(r.memory);
    }
    requests = requests.saturating_add(cx.resources("spec.overhead", &spec.overhead)?);
    let uid = meta
        .uid
        .clone()
        .unwrap_or_else(|| format!("{namespace}/{}", meta.name));
    let mut info = PodInfo::new(&uid, &namespace, &meta.name, requests);
    info.priority = spec.priority.unwrap_or(0);
    info.node_name = spec
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(Sym::new);
    info.node_selector = Selector::match_labels(
        spec.node_selector
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for (i, t) in spec.tolerations.iter().enumerate() {
        let path = format!("spec.tolerations[{i}]");
        let operator = match t.operator.as_str() {
            "" | "Equal" => TolerationOperator::Equal,
            "Exists" => TolerationOperator::Exists,
            other => {
                return Err(cx.err(
                    format!("{path}.operator"),
                    format!("unknown operator `{other}`"),
                ));
            }
        };
        let effect = match t.effect.as_str() {
            "" => None,
            e => Some(effect(e).ok_or_else(|| {
                cx.err(format!("{path}.effect"), format!("unknown effect `{e}`"))
            })?),
        };
        info.tolerations.push(Toleration {
            key: t.key.clone(),
            operator,
            value: t.value.clone(),
            effect,
        });
    }
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().enumerate() {
            let Some(port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            let port = u16::try_from(port).map_err(|_| {
                cx.err(
                    format!("spec.containers[{i}].ports[{j}].hostPort"),
                    format!("{port} is not a port"),
                )
            })?;
            let protocol = match p.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(cx.err(
                        format!("spec.containers[{i}].ports[{j}].protocol"),
                        format!("unknown protocol `{other}`"),
                    ));
                }
            };
            info.host_ports.push(HostPort { protocol, port });
        }
    }
    if let Some(aff) = &spec.affinity {
        if let Some(na) = &aff.node_affinity {
            let base = "spec.affinity.nodeAffinity";
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let mut terms = Vec::new();
                for (i, t) in req.node_selector_terms.iter().enumerate() {
                    terms.push(Selector(cx.exprs(&format!("{base}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}].matchExpressions"), &t.match_expressions)?));
                }
                info.required_node_affinity = Some(NodeSelector(terms));
            }
            for (i, t) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let path = format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                if !(1..=100).contains(&t.weight) {
                    return Err(cx.err(
                        format!("{path}.weight"),
                        format!("{} is not in 1..=100", t.weight),
                    ));
                }
                info.preferred_node_affinity.push((
                    t.weight,
                    Selector(cx.exprs(
                        &format!("{path}.preference.matchExpressions"),
                        &t.preference.match_expressions,
                    )?),
                ));
            }
        }
        info.affinity = cx.pod_terms("spec.affinity.podAffinity", &aff.pod_affinity)?;
        info.anti_affinity =
            cx.pod_terms("spec.affinity.podAntiAffinity", &aff.pod_anti_affinity)?;
    }
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let path = format!("spec.topologySpreadConstraints[{i}]");
        let max_skew = u32::try_from(c.max_skew)
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| {
                cx.err(
                    format!("{path}.maxSkew"),
                    format!("{} is not a positive integer", c.max_skew),
                )
            })?;
        let when_unsatisfiable = match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" | "" => WhenUnsatisfiable::DoNotSchedule,
            "ScheduleAnyway" => WhenUnsatisfiable::ScheduleAnyway,
            other => {
                return Err(cx.err(
                    format!("{path}.whenUnsatisfiable"),
                    format!("unknown value `{other}`"),
                ));
            }
        };
        info.spread.push(SpreadConstraint {
            max_skew,
            topology_key: Sym::new(&c.topology_key),
            when_unsatisfiable,
            selector: cx.label_selector(&format!("{path}.labelSelector"), &c.label_selector)?,
        });
    }
    let ann = &meta.annotations;
    let ann_path = |key: &str| format!("metadata.annotations[{key}]");
    if let Some(key) = ann.get(ANNOTATION_IDENTITY) {
        info.identity = Some(StatefulIdentity {
            key: Arc::from(key.as_str()),
            previous_node: ann.get(ANNOTATION_PREVIOUS_NODE).map(|n| Sym::new(n)),
            previous_zone: ann.get(ANNOTATION_PREVIOUS_ZONE).map(|z| Sym::new(z)),
        });
    }
    let claim = match ann.get(ANNOTATION_UNDERLAY_CLAIM) {
        Some(c) => {
            let (pool, ip) = c.split_once('/').ok_or_else(|| {
                cx.err(
                    ann_path(ANNOTATION_UNDERLAY_CLAIM),
                    format!("`{c}` is not pool/address"),
                )
            })?;
            let ip = ip.parse().map_err(|_| {
                cx.err(
                    ann_path(ANNOTATION_UNDERLAY_CLAIM),
                    format!("`{ip}` is not an IP address"),
                )
            })?;
            Some((Arc::from(pool), ip))
        }
        None => None,
    };
    if claim.is_some() || ann.contains_key(ANNOTATION_UNDERLAY_POOL) {
        info.underlay = Some(UnderlayRequest {
            pool: ann
                .get(ANNOTATION_UNDERLAY_POOL)
                .filter(|p| p.as_str() != "*" && !p.is_empty())
                .map(|p| Arc::from(p.as_str())),
            bound_claim: claim,
        });
    }
    if let Some(name) = ann.get(ANNOTATION_GANG) {
        let min_member = ann
            .get(ANNOTATION_GANG_MIN_MEMBER)
            .map(|m| {
                m.parse::<u32>().ok().filter(|m| *m >= 1).ok_or_else(|| {
                    cx.err(
                        ann_path(ANNOTATION_GANG_MIN_MEMBER),
                        format!("`{m}` is not a positive integer"),
                    )
                })
            })
            .transpose()?
            .unwrap_or(1);
        let timeout = ann
            .get(ANNOTATION_GANG_TIMEOUT)
            .map(|t| {
                t.parse::<u64>().map(Duration::from_secs).map_err(|_| {
                    cx.err(
                        ann_path(ANNOTATION_GANG_TIMEOUT),
                        format!("`{t}` is not a number of seconds"),
                    )
                })
            })
            .transpose()?;
        info.gang = Some(GangMembership {
            name: Arc::from(name.as_str()),
            min_member,
            timeout,
        });
    }
    // Last, so that values the pod's own selectors mention (`app=web` in an anti-affinity
    // to its own replicas) are interned by now and stored as symbols. Other values are not
    // interned: they may be unbounded (`controller-uid`).
    for (k, v) in &meta.labels {
        info.labels.insert_str(k, v);
    }
    Ok(info)
}

/// Reads a node from its Kubernetes JSON.
pub fn node_from_json(value: &Value) -> Result<NodeInfo, KubeError> {
    let node: NodeJson = decode("Node", value)?;
    let cx = Ctx {
        kind: "Node",
        name: node.metadata.name.clone(),
    };
    if node.metadata.name.is_empty() {
        return Err(cx.err("metadata.name", "must not be empty"));
    }
    let source = if node.status.allocatable.is_empty() {
        &node.status.capacity
    } else {
        &node.status.allocatable
    };
    let allocatable = cx.resources("status.allocatable", source)?;
    let mut info = NodeInfo::new(&node.metadata.name, allocatable);
    for (k, v) in &node.metadata.labels {
        info.labels.insert(Sym::new(k), Sym::new(v));
    }
    if let Some(pods) = source.get("pods") {
        let q = cx.quantity("status.allocatable.pods", pods)?;
        info.max_pods = q.parse().map_err(|_| {
            cx.err(
                "status.allocatable.pods",
                format!("`{q}` is not a pod count"),
            )
        })?;
    }
    for (i, t) in node.spec.taints.iter().enumerate() {
        let effect = effect(&t.effect).ok_or_else(|| {
            cx.err(
                format!("spec.taints[{i}].effect"),
                format!("unknown effect `{}`", t.effect),
            )
        })?;
        info.taints.push(Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect,
        });
    }
    info.unschedulable = node.spec.unschedulable;
    if let Some(ready) = node.status.conditions.iter().find(|c| c.kind == "Ready") {
        info.ready = ready.status == "True";
    }
    Ok(info)
}

/// The node name of a Kubernetes Node JSON (for `Nodes`-mode results).
pub fn node_name(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}

#[cfg(feature = "k8s")]
mod typed {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};

    impl TryFrom<&Pod> for PodInfo {
        type Error = KubeError;
        /// Converts through the pod's JSON, the same mapping the extender uses.
        fn try_from(pod: &Pod) -> Result<PodInfo, KubeError> {
            let value = serde_json::to_value(pod).map_err(|e| KubeError {
                kind: "Pod",
                name: pod.metadata.name.clone().unwrap_or_default(),
                path: "$".into(),
                reason: e.to_string(),
            })?;
            pod_from_json(&value)
        }
    }

    impl TryFrom<&Node> for NodeInfo {
        type Error = KubeError;
        /// Converts through the node's JSON, the same mapping the extender uses.
        fn try_from(node: &Node) -> Result<NodeInfo, KubeError> {
            let value = serde_json::to_value(node).map_err(|e| KubeError {
                kind: "Node",
                name: node.metadata.name.clone().unwrap_or_default(),
                path: "$".into(),
                reason: e.to_string(),
            })?;
            node_from_json(&value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_fields() {
        let pod = pod_from_json(&json!({
            "metadata": {"name": "web-0", "namespace": "games", "uid": "u-1", "labels": {"app": "web"},
                "annotations": {"rorqual.io/identity": "games/web-0", "rorqual.io/previous-node": "n1",
                    "rorqual.io/underlay-claim": "pool-a/10.0.0.5", "rorqual.io/gang": "g", "rorqual.io/gang-min-member": "3"}},
            "spec": {
                "priority": 5,
                "nodeSelector": {"disk": "ssd"},
                "containers": [
                    {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                    {"resources": {"requests": {"cpu": 1}}}
                ],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}
                },
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]
            }
        }))
        .unwrap();
        assert_eq!(&*pod.uid, "u-1");
        assert_eq!(pod.requests, Resources::new(1250, 64 << 20));
        assert_eq!(pod.priority, 5);
        assert_eq!(pod.host_ports.len(), 1);
        assert_eq!(pod.anti_affinity.required.len(), 1);
        assert!(pod.required_node_affinity.is_some());
        assert_eq!(
            pod.spread[0].when_unsatisfiable,
            WhenUnsatisfiable::ScheduleAnyway
        );
        assert_eq!(pod.identity.unwrap().previous_node, Some(Sym::new("n1")));
        assert_eq!(
            pod.underlay.unwrap().bound_claim.unwrap().1.to_string(),
            "10.0.0.5"
        );
        assert_eq!(pod.gang.unwrap().min_member, 3);
    }

    #[test]
    fn bad_input_names_the_field() {
        let err = pod_from_json(&json!({"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Pod `default/p`: spec.containers[0].resources.requests.cpu"),
            "{err}"
        );
        let err = pod_from_json(&json!({"metadata": {"name": "p"}, "spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "Near", "values": []}]}]}}}}})).unwrap_err();
        assert!(err.to_string().contains("unknown operator `Near`"), "{err}");
        let err = node_from_json(&json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "k", "effect": "Maybe"}]}})).unwrap_err();
        assert!(err.to_string().contains("spec.taints[0].effect"), "{err}");
    }

    #[cfg(feature = "k8s")]
    #[test]
    fn typed_k8s_objects_convert_like_their_json() {
        use k8s_openapi::api::core::v1::{Node, Pod};
        let pod_json = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
                     "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}});
        let typed: Pod = serde_json::from_value(pod_json.clone()).unwrap();
        assert_eq!(
            PodInfo::try_from(&typed).unwrap(),
            pod_from_json(&pod_json).unwrap()
        );
        let node_json = json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}});
        let typed: Node = serde_json::from_value(node_json.clone()).unwrap();
        let info = NodeInfo::try_from(&typed).unwrap();
        assert_eq!(info, node_from_json(&node_json).unwrap());
        assert_eq!(info.allocatable, Resources::new(4000, 8 << 30));
    }

    #[test]
    fn node_fields() {
        let node = node_from_json(&json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap();
        assert_eq!(node.allocatable, Resources::new(4000, 8 << 30));
        assert!(node.unschedulable && !node.ready);
        assert_eq!(node.max_pods, 110);
        assert_eq!(node.labels.get(Sym::new("zone")), Some(Sym::new("a")));
    }
}
