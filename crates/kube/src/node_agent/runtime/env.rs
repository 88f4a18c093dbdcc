//! Pure: what a container's process gets from its pod spec: the environment (literal values,
//! `fieldRef` values and the agent's own variables), the command line with `$(VAR)`
//! references expanded as the kubelet does, and its probes and ports in rorqual's model.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Probe as K8sProbe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rorqual_core::model::{PortRef, PortSpec, Probe, ProbeAction, Protocol};

/// Values a container's environment may refer to.
#[derive(Debug, Clone)]
pub(crate) struct PodFacts<'a> {
    pub(crate) pod: &'a Pod,
    pub(crate) pod_ip: String,
    pub(crate) host_ip: String,
}

impl PodFacts<'_> {
    /// The value of a `fieldRef` path; `None` for a path the agent does not provide.
    fn field(&self, path: &str) -> Option<String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let from_map = |map: Option<&BTreeMap<String, String>>, rest: &str| {
            let key = rest.strip_prefix("['")?.strip_suffix("']")?;
            Some(map?.get(key).cloned().unwrap_or_default())
        };
        match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "status.podIP" | "status.podIPs" => Some(self.pod_ip.clone()),
            "status.hostIP" | "status.hostIPs" => Some(self.host_ip.clone()),
            p => {
                if let Some(rest) = p.strip_prefix("metadata.labels") {
                    from_map(meta.labels.as_ref(), rest)
                } else if let Some(rest) = p.strip_prefix("metadata.annotations") {
                    from_map(meta.annotations.as_ref(), rest)
                } else {
                    None
                }
            }
        }
    }
}

/// Expands `$(NAME)` references to variables of `env` as the kubelet does: `$$` is a literal
/// `$`, and a reference to an unknown variable is left as written.
pub(crate) fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `container`: the agent's variables `POD_IP`, `POD_NAME`,
/// `POD_NAMESPACE` and `NODE_NAME` (the pod's own variables override them), then the pod's
/// `env` in order (later ones may refer to earlier ones with `$(NAME)`).
///
/// # Errors
///
/// A message naming the variable when a value comes from a source the agent cannot read
/// (`secretKeyRef`, `configMapKeyRef`, `resourceFieldRef`, an unknown `fieldRef` path), or
/// when the container uses `envFrom`: the kubelet's `CreateContainerConfigError`.
pub(crate) fn container_env(
    facts: &PodFacts<'_>,
    container: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    let meta = &facts.pod.metadata;
    env.insert("POD_IP".to_owned(), facts.pod_ip.clone());
    env.insert("POD_NAME".to_owned(), meta.name.clone().unwrap_or_default());
    env.insert(
        "POD_NAMESPACE".to_owned(),
        meta.namespace.clone().unwrap_or_default(),
    );
    if let Some(node) = facts.pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        env.insert("NODE_NAME".to_owned(), node);
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("envFrom is not supported by the node agent".to_owned());
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, None) => String::new(),
            (None, Some(from)) => match &from.field_ref {
                Some(field) => facts.field(&field.field_path).ok_or_else(|| {
                    format!(
                        "env {}: fieldRef {} is not supported by the node agent",
                        var.name, field.field_path
                    )
                })?,
                None => {
                    return Err(format!(
                        "env {}: only value and fieldRef are supported by the node agent \
                         (not secretKeyRef, configMapKeyRef or resourceFieldRef)",
                        var.name
                    ));
                }
            },
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// The command line of `container` (`command` then `args`, `$(VAR)` expanded); `None` when
/// it has no `command` (an image's entrypoint cannot be run without images).
pub(crate) fn command_line(
    container: &Container,
    env: &BTreeMap<String, String>,
) -> Option<Vec<String>> {
    let command = container.command.as_ref().filter(|c| !c.is_empty())?;
    Some(
        command
            .iter()
            .chain(container.args.iter().flatten())
            .map(|arg| expand(arg, env))
            .collect(),
    )
}

/// The port name rorqual's model uses for a container port (`port-<number>` when unnamed).
fn port_name(name: Option<&str>, number: u16) -> String {
    name.map_or_else(|| format!("port-{number}"), str::to_owned)
}

/// The container's declared ports in rorqual's model.
pub(crate) fn ports(container: &Container) -> Vec<PortSpec> {
    container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let number = u16::try_from(p.container_port).ok()?;
            Some(PortSpec {
                name: port_name(p.name.as_deref(), number),
                number,
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    _ => Protocol::Tcp,
                },
            })
        })
        .collect()
}

fn port_ref(port: &IntOrString) -> PortRef {
    match port {
        IntOrString::Int(n) => PortRef::Number(u16::try_from(*n).unwrap_or(0)),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => PortRef::Number(n),
            Err(_) => PortRef::Name(name.clone()),
        },
    }
}

/// A Kubernetes probe in rorqual's model, with Kubernetes' defaults for unset fields; `None`
/// for a probe with no supported action (gRPC).
pub(crate) fn probe(probe: &K8sProbe) -> Option<Probe> {
    let action = if let Some(http) = &probe.http_get {
        ProbeAction::Http {
            path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
            port: port_ref(&http.port),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::Tcp {
            port: port_ref(&tcp.port),
        }
    } else if let Some(exec) = &probe.exec {
        ProbeAction::Exec {
            command: exec.command.clone().unwrap_or_default(),
        }
    } else {
        return None;
    };
    let seconds = |v: Option<i32>, default: i32| f64::from(v.unwrap_or(default).max(0));
    let count = |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default)).unwrap_or(1);
    let mut p = Probe::new(action);
    p.initial_delay_seconds = seconds(probe.initial_delay_seconds, 0);
    p.period_seconds = seconds(probe.period_seconds, 10).max(1.0);
    p.timeout_seconds = seconds(probe.timeout_seconds, 1).max(1.0);
    p.success_threshold = count(probe.success_threshold, 1);
    p.failure_threshold = count(probe.failure_threshold, 3);
    Some(p)
}

/// The ports probes may connect to: the declared ones, plus numbered probe ports that are not
/// declared (Kubernetes does not require them to be), by name → number (ports are kept).
pub(crate) fn probe_ports(
    declared: &[PortSpec],
    probes: &[&Probe],
) -> (Vec<PortSpec>, BTreeMap<String, u16>) {
    let mut declared = declared.to_vec();
    for p in probes {
        let port = match &p.action {
            ProbeAction::Http { port, .. } | ProbeAction::Tcp { port } => port,
            ProbeAction::Exec { .. } => continue,
        };
        if let PortRef::Number(n) = port
            && !declared.iter().any(|d| d.number == *n)
        {
            declared.push(PortSpec {
                name: format!("probe-{n}"),
                number: *n,
                protocol: Protocol::Tcp,
            });
        }
    }
    let by_name = declared
        .iter()
        .map(|p| (p.name.clone(), p.number))
        .collect();
    (declared, by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "agent-0", "containers": [{
                "name": "app",
                "command": ["/bin/sh", "-c"],
                "args": ["echo $(GREETING) on $(POD_IP):$(PORT) $$(kept) $(UNKNOWN)"],
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090}],
                "env": [
                    {"name": "PORT", "value": "8080"},
                    {"name": "GREETING", "value": "hello from $(POD_NAME)"},
                    {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 7000}}
            }]}
        }))
        .expect("valid pod")
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts {
            pod,
            pod_ip: "127.1.0.9".to_owned(),
            host_ip: "127.0.0.1".to_owned(),
        }
    }

    #[test]
    fn environment_has_values_field_refs_and_the_pod_ip() {
        let pod = pod();
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env = container_env(&facts(&pod), c).expect("supported env");
        assert_eq!(env["POD_IP"], "127.1.0.9");
        assert_eq!(env["MY_IP"], "127.1.0.9");
        assert_eq!(env["MY_NODE"], "agent-0");
        assert_eq!(env["NODE_NAME"], "agent-0");
        assert_eq!(env["MY_NS"], "shop");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["GREETING"], "hello from web-1");
        let argv = command_line(c, &env).expect("has a command");
        assert_eq!(
            argv,
            [
                "/bin/sh",
                "-c",
                "echo hello from web-1 on 127.1.0.9:8080 $(kept) $(UNKNOWN)"
            ]
        );
    }

    #[test]
    fn unsupported_sources_name_the_variable() {
        let mut pod = pod();
        let c = &mut pod.spec.as_mut().expect("spec").containers[0];
        c.env = Some(vec![
            serde_json::from_value(serde_json::json!({
                "name": "PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}
            }))
            .expect("valid env var"),
        ]);
        let c = c.clone();
        let err = container_env(&facts(&pod), &c).expect_err("secrets are not read");
        assert!(err.contains("PASSWORD"), "{err}");
    }

    #[test]
    fn probes_and_ports_keep_declared_numbers() {
        let pod = pod();
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let declared = ports(c);
        assert_eq!(declared[0].name, "http");
        assert_eq!(declared[1].name, "port-9090");
        let readiness = probe(c.readiness_probe.as_ref().expect("probe")).expect("http");
        assert_eq!(readiness.period_seconds, 1.0);
        assert_eq!(readiness.failure_threshold, 3);
        let liveness = probe(c.liveness_probe.as_ref().expect("probe")).expect("tcp");
        let (all, by_name) = probe_ports(&declared, &[&readiness, &liveness]);
        assert_eq!(all.len(), 3, "the undeclared liveness port is added");
        assert_eq!(by_name["http"], 8080);
        assert_eq!(by_name["probe-7000"], 7000);
    }

    #[test]
    fn no_command_means_no_command_line() {
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "x", "image": "nginx"}))
                .expect("valid container");
        assert_eq!(command_line(&c, &BTreeMap::new()), None);
    }
}
