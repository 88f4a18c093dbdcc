//! Pod conversion: the `Pod` fields the plugins read (requests, labels, node selection,
//! tolerations, host ports, affinity, spread constraints, rorqual's annotations).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rorqual_core::model::{
    NodeSelector as CoreNodeSelector, Resources, Toleration, TolerationOperator,
    TopologySpreadConstraint, WhenUnsatisfiable,
};
use serde::Deserialize;
use serde_json::Value;

use super::selector::{AffinityJson, LabelSelectorJson};
use super::*;
use crate::convert;
use crate::interner::Sym;
use crate::selector::Selector;
use crate::snapshot::{
    GangMembership, HostPort, PodInfo, Protocol, StatefulIdentity, UnderlayRequest,
};

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
                let path = format!(
                    "{base}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
                );
                let node_selector_terms = req
                    .node_selector_terms
                    .iter()
                    .enumerate()
                    .map(|(i, t)| cx.node_term(&format!("{path}[{i}]"), t))
                    .collect::<Result<_, _>>()?;
                info.required_node_affinity = Some(convert::node_selector(&CoreNodeSelector {
                    node_selector_terms,
                }));
            }
            for (i, t) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let path = format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                cx.weight(&path, t.weight)?;
                let preference = cx.node_term(&format!("{path}.preference"), &t.preference)?;
                info.preferred_node_affinity
                    .push((t.weight, convert::node_selector_term(&preference)));
            }
        }
        info.affinity = cx.pod_terms("spec.affinity.podAffinity", &aff.pod_affinity)?;
        info.anti_affinity =
            cx.pod_terms("spec.affinity.podAntiAffinity", &aff.pod_anti_affinity)?;
    }
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let path = format!("spec.topologySpreadConstraints[{i}]");
        let max_skew = i32::try_from(c.max_skew)
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
        info.spread
            .push(convert::spread_constraint(&TopologySpreadConstraint {
                max_skew,
                topology_key: c.topology_key.clone(),
                when_unsatisfiable,
                label_selector: cx
                    .label_selector(&format!("{path}.labelSelector"), &c.label_selector)?,
            }));
    }
    let ann = &meta.annotations;
    let ann_path = |key: &str| format!("metadata.annotations[{key}]");
    // rorqual's annotation names the identity; a StatefulSet's pod has none, but its
    // controller labels it with its stable name (`db-2`), unique in its namespace.
    let identity = match ann.get(ANNOTATION_IDENTITY) {
        Some(key) => Some(Arc::from(key.as_str())),
        None => meta
            .labels
            .get(LABEL_STATEFULSET_POD_NAME)
            .filter(|name| !name.is_empty())
            .map(|name| Arc::from(format!("{namespace}/{name}"))),
    };
    if let Some(key) = identity {
        info.identity = Some(StatefulIdentity {
            key,
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
            // A stateful pod keeps its address across its pods under its identity.
            claim: info.identity.as_ref().map(|id| id.key.clone()),
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
