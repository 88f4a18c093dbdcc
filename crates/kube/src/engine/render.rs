//! An `AppSpec` as Kubernetes objects (pure): the pod template, a ReplicaSet per revision, a
//! StatefulSet with its headless Service. A field the cluster cannot express is refused with
//! its path before anything is sent.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetSpec, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, ExecAction, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe as KubeProbe, ResourceRequirements, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rorqual_core::model::{
    AppKey, AppSpec, ContainerSpec, FieldError, PortRef, Probe, ProbeAction, Protocol,
    ValidationErrors, ValidationTarget,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::names::{self, LABEL_APP, LABEL_REVISION};

pub use rorqual_core::pod_keys::{
    ANNOTATION_GANG, ANNOTATION_GANG_MIN_MEMBER, ANNOTATION_GANG_TIMEOUT, ANNOTATION_UNDERLAY_POOL,
};

/// Annotation: the revision of the pod's template with every container's image left out. Two
/// templates with the same value differ at most in images, so an identity can move between
/// them in place (its pod keeps UID, node and address).
pub const ANNOTATION_TEMPLATE_SANS_IMAGES: &str = "rorqual.io/template-sans-images";

/// [`ANNOTATION_TEMPLATE_SANS_IMAGES`] of `spec`.
pub fn template_sans_images(spec: &AppSpec) -> String {
    let mut bare = spec.clone();
    for c in &mut bare.containers {
        c.image = None;
    }
    bare.revision().to_string()
}

/// The image of a container that has none: pods run by rorqual's node agent run the
/// container's `command` as a process and never pull it.
pub const PROCESS_IMAGE: &str = "rorqual.io/process";

/// The image `c` runs as.
pub fn image_of(c: &ContainerSpec, options: &RenderOptions) -> Option<String> {
    c.image
        .clone()
        .or_else(|| options.process_pods.then(|| PROCESS_IMAGE.to_owned()))
}

/// How specs are rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Containers may come without an image (a cluster whose nodes run commands as processes,
    /// such as rorqual's node agent): they get [`PROCESS_IMAGE`]. Otherwise every container
    /// needs an image.
    pub process_pods: bool,
    /// The scheduler pods ask for (`spec.schedulerName`; the cluster's default when `None`),
    /// such as rorqual's own (`scheduler::KubeScheduler`).
    pub scheduler_name: Option<String>,
}

/// Validates `spec` for a cluster and refuses what a cluster cannot express, every problem with
/// its path.
pub fn check(spec: &AppSpec, options: &RenderOptions) -> Result<(), ValidationErrors> {
    let target = if options.process_pods {
        ValidationTarget::LOCAL
    } else {
        ValidationTarget::CLUSTER
    };
    let mut errors = match spec.validate(target) {
        Ok(()) => Vec::new(),
        Err(e) => e.errors,
    };
    let mut refuse = |path: String, message: &str| {
        errors.push(FieldError {
            path,
            message: message.to_owned(),
        })
    };
    if !spec.config_files.is_empty() {
        refuse(
            "configFiles".to_owned(),
            "config files are written by the local engine; on Kubernetes mount a ConfigMap",
        );
    }
    if spec.priority != 0 {
        refuse(
            "priority".to_owned(),
            "Kubernetes sets a pod's priority from its PriorityClass; a number cannot be sent",
        );
    }
    for (i, c) in spec.containers.iter().enumerate() {
        for (which, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
        ] {
            let Some(p) = probe else { continue };
            for (field, value, least) in [
                ("initialDelaySeconds", p.initial_delay_seconds, 0.0),
                ("periodSeconds", p.period_seconds, 1.0),
                ("timeoutSeconds", p.timeout_seconds, 1.0),
            ] {
                if value.fract() != 0.0 || value < least {
                    refuse(
                        format!("containers[{i}].{which}.{field}"),
                        &format!(
                            "Kubernetes probes take whole seconds (at least {least}), not {value}"
                        ),
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors {
            subject: format!("spec {} for Kubernetes", spec.key()),
            errors,
        })
    }
}

/// The pod template of `spec` at its revision (labels: app, revision, managed-by and the
/// spec's own).
pub fn pod_template(spec: &AppSpec, options: &RenderOptions) -> PodTemplateSpec {
    let key = spec.key();
    let revision = spec.revision();
    let mut labels = spec.labels.clone();
    labels.extend(names::revision_labels(&key, &revision));
    let mut annotations = BTreeMap::from([(
        ANNOTATION_TEMPLATE_SANS_IMAGES.to_owned(),
        template_sans_images(spec),
    )]);
    if let Some(u) = &spec.underlay {
        annotations.insert(
            ANNOTATION_UNDERLAY_POOL.to_owned(),
            u.pool.clone().unwrap_or_else(|| "*".to_owned()),
        );
    }
    if let Some(g) = &spec.gang {
        annotations.insert(
            ANNOTATION_GANG.to_owned(),
            g.name.clone().unwrap_or_else(|| spec.name.clone()),
        );
        annotations.insert(
            ANNOTATION_GANG_MIN_MEMBER.to_owned(),
            g.min_member.to_string(),
        );
        if let Some(t) = g.timeout_seconds {
            annotations.insert(ANNOTATION_GANG_TIMEOUT.to_owned(), t.to_string());
        }
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: spec
                .containers
                .iter()
                .map(|c| container(c, options))
                .collect(),
            node_selector: non_empty(spec.node_selector.clone()),
            tolerations: non_empty_vec(
                spec.tolerations
                    .iter()
                    .map(convert::<_, Toleration>)
                    .collect(),
            ),
            affinity: spec.affinity.as_ref().map(convert::<_, Affinity>),
            topology_spread_constraints: non_empty_vec(
                spec.topology_spread_constraints
                    .iter()
                    .map(convert::<_, TopologySpreadConstraint>)
                    .collect(),
            ),
            scheduler_name: options.scheduler_name.clone(),
            termination_grace_period_seconds: Some(
                i64::try_from(spec.termination_grace_period_seconds).unwrap_or(i64::MAX),
            ),
            ..PodSpec::default()
        }),
    }
}

/// The ReplicaSet of `spec`'s revision with `replicas` instances.
pub fn replica_set(spec: &AppSpec, replicas: u32, options: &RenderOptions) -> ReplicaSet {
    let key = spec.key();
    let revision = spec.revision();
    ReplicaSet {
        metadata: meta(&key, names::replica_set_name(&key, &revision), {
            names::revision_labels(&key, &revision)
        }),
        spec: ReplicaSetSpec {
            replicas: Some(count(replicas)),
            selector: selector(&key, Some(revision.as_str())),
            template: Some(pod_template(spec, options)),
            ..ReplicaSetSpec::default()
        },
        status: None,
    }
}

/// The StatefulSet of stateful `spec` (named as the app) with `replicas` identities: pods are
/// started in order (`OrderedReady`) and never replaced on a template change (`OnDelete`): a
/// new template reaches an identity only when it is moved.
pub fn stateful_set(spec: &AppSpec, replicas: u32, options: &RenderOptions) -> StatefulSet {
    let key = spec.key();
    StatefulSet {
        metadata: meta(&key, key.name.clone(), names::app_labels(&key)),
        spec: StatefulSetSpec {
            replicas: Some(count(replicas)),
            selector: selector(&key, None),
            service_name: Some(key.name.clone()),
            pod_management_policy: Some("OrderedReady".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            template: pod_template(spec, options),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// The headless Service that gives a StatefulSet's pods their stable DNS names.
pub fn headless_service(spec: &AppSpec) -> Service {
    let key = spec.key();
    Service {
        metadata: meta(&key, key.name.clone(), names::app_labels(&key)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(BTreeMap::from([(LABEL_APP.to_owned(), key.name.clone())])),
            ports: non_empty_vec(service_ports(spec)),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service of a stateless revision, selecting the pods of its ReplicaSet `owner`
/// (and owned by it, so the garbage collector deletes it with the ReplicaSet). The endpoint
/// controllers then publish the revision's ready pod addresses in its EndpointSlices, which
/// carry the Service's labels (`rorqual.io/app`, `rorqual.io/revision`). `None` when the
/// template declares no port (nothing to route to).
pub fn revision_service(spec: &AppSpec, owner: &ReplicaSet) -> Option<Service> {
    let ports = service_ports(spec);
    if ports.is_empty() {
        return None;
    }
    let key = spec.key();
    let revision = spec.revision();
    let mut metadata = meta(
        &key,
        names::revision_service_name(&key, &revision),
        names::revision_labels(&key, &revision),
    );
    metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "ReplicaSet".to_owned(),
        name: owner.metadata.name.clone().unwrap_or_default(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: selector(&key, Some(revision.as_str())).match_labels,
            ports: Some(ports),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Every container port of `spec` as a Service port of the same name and number.
fn service_ports(spec: &AppSpec) -> Vec<ServicePort> {
    spec.containers
        .iter()
        .flat_map(|c| &c.ports)
        .map(|p| ServicePort {
            name: Some(p.name.clone()),
            port: i32::from(p.number),
            protocol: Some(protocol(p.protocol)),
            ..ServicePort::default()
        })
        .collect()
}

fn meta(key: &AppKey, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(key.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn selector(key: &AppKey, revision: Option<&str>) -> LabelSelector {
    let mut labels = BTreeMap::from([(LABEL_APP.to_owned(), key.name.clone())]);
    if let Some(r) = revision {
        labels.insert(LABEL_REVISION.to_owned(), r.to_owned());
    }
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

fn container(c: &ContainerSpec, options: &RenderOptions) -> Container {
    let image = image_of(c, options);
    let mut requests = BTreeMap::new();
    if c.resources.cpu.millis() > 0 {
        requests.insert(
            "cpu".to_owned(),
            Quantity(format!("{}m", c.resources.cpu.millis())),
        );
    }
    if c.resources.memory.bytes() > 0 {
        requests.insert(
            "memory".to_owned(),
            Quantity(c.resources.memory.bytes().to_string()),
        );
    }
    Container {
        name: c.name.clone(),
        image,
        command: non_empty_vec(c.command.clone()),
        args: non_empty_vec(c.args.clone()),
        env: non_empty_vec(
            c.env
                .iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    value_from: None,
                })
                .collect(),
        ),
        ports: non_empty_vec(
            c.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: i32::from(p.number),
                    // A list-map key for server-side apply: always explicit.
                    protocol: Some(protocol(p.protocol)),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        resources: (!requests.is_empty()).then(|| ResourceRequirements {
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        readiness_probe: c.readiness_probe.as_ref().map(probe),
        liveness_probe: c.liveness_probe.as_ref().map(probe),
        ..Container::default()
    }
}

fn protocol(p: Protocol) -> String {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
    .to_owned()
}

fn port_ref(p: &PortRef) -> IntOrString {
    match p {
        PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
        PortRef::Name(n) => IntOrString::String(n.clone()),
    }
}

/// Whole seconds, rounded up (Kubernetes probes take integers).
fn seconds(s: f64) -> i32 {
    // Probe durations are validated finite and non-negative; the cast saturates anyway.
    s.ceil() as i32
}

fn probe(p: &Probe) -> KubeProbe {
    let mut out = KubeProbe {
        initial_delay_seconds: Some(seconds(p.initial_delay_seconds)),
        period_seconds: Some(seconds(p.period_seconds).max(1)),
        timeout_seconds: Some(seconds(p.timeout_seconds).max(1)),
        success_threshold: Some(i32::try_from(p.success_threshold).unwrap_or(i32::MAX)),
        failure_threshold: Some(i32::try_from(p.failure_threshold).unwrap_or(i32::MAX)),
        ..KubeProbe::default()
    };
    match &p.action {
        ProbeAction::Http { path, port } => {
            out.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: port_ref(port),
                ..HTTPGetAction::default()
            });
        }
        ProbeAction::Tcp { port } => {
            out.tcp_socket = Some(TCPSocketAction {
                port: port_ref(port),
                host: None,
            });
        }
        ProbeAction::Exec { command } => {
            out.exec = Some(ExecAction {
                command: Some(command.clone()),
            });
        }
    }
    out
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A core type in Kubernetes' pod-spec shape as the k8s-openapi type (same JSON). Both sides
/// are the same schema, so this cannot fail for a validated spec; a value that does not fit
/// becomes the type's default.
fn convert<A: Serialize, B: DeserializeOwned + Default>(a: &A) -> B {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .unwrap_or_default()
}

fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::{Resources, WorkloadKind};

    fn spec() -> AppSpec {
        AppSpec::new(
            "web",
            vec![
                ContainerSpec::new("app", ["/bin/server", "--flag"])
                    .args(["x"])
                    .env("A", "1")
                    .port("http", 8080)
                    .resources(Resources::new(250, 64 << 20))
                    .readiness(Probe::http("/healthz", "http")),
            ],
        )
        .namespace("games")
    }

    const PROCESS: &RenderOptions = &RenderOptions {
        process_pods: true,
        scheduler_name: None,
    };
    const IMAGES: &RenderOptions = &RenderOptions {
        process_pods: false,
        scheduler_name: None,
    };

    #[test]
    fn a_replica_set_per_revision_selects_its_own_pods() {
        let s = spec();
        let rs = replica_set(&s, 3, PROCESS);
        let rev = s.revision().to_string();
        assert_eq!(rs.metadata.name.as_deref(), Some(&*format!("web-{rev}")));
        assert_eq!(rs.metadata.namespace.as_deref(), Some("games"));
        let rs_spec = rs.spec;
        assert_eq!(rs_spec.replicas, Some(3));
        let sel = rs_spec.selector.match_labels.unwrap();
        assert_eq!(sel.get(LABEL_REVISION), Some(&rev));
        let template = rs_spec.template.unwrap();
        let labels = template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(labels.get(k), Some(v), "the template matches the selector");
        }
        let c = &template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some(PROCESS_IMAGE));
        assert_eq!(
            c.command.as_deref(),
            Some(&["/bin/server".to_owned(), "--flag".to_owned()][..])
        );
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.container_port, port.protocol.as_deref()),
            (8080, Some("TCP"))
        );
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "250m");
        assert_eq!(requests["memory"].0, (64u64 << 20).to_string());
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().port,
            IntOrString::String("http".to_owned())
        );
    }

    #[test]
    fn a_revision_service_selects_the_revisions_pods_and_is_owned_by_its_replica_set() {
        let s = spec();
        let mut rs = replica_set(&s, 3, PROCESS);
        rs.metadata.uid = Some("uid-1".to_owned());
        let svc = revision_service(&s, &rs).unwrap();
        let rev = s.revision().to_string();
        assert_eq!(svc.metadata.name.as_deref(), Some(&*format!("web-{rev}")));
        let labels = svc.metadata.labels.unwrap();
        assert_eq!(labels.get(LABEL_REVISION), Some(&rev));
        let owner = &svc.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.name.as_str()),
            ("ReplicaSet", "uid-1", &*format!("web-{rev}"))
        );
        let svc_spec = svc.spec.unwrap();
        assert_eq!(svc_spec.selector, rs.spec.selector.match_labels.clone());
        assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc_spec.publish_not_ready_addresses, Some(false));
        let ports = svc_spec.ports.unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("http"), 8080)
        );
        // Nothing to route to without a port.
        let mut bare = spec();
        bare.containers[0].ports.clear();
        assert!(revision_service(&bare, &rs).is_none());
    }

    #[test]
    fn a_stateful_set_starts_in_order_and_updates_only_on_delete() {
        let s = spec().kind(WorkloadKind::Stateful);
        let set = stateful_set(&s, 2, PROCESS).spec;
        assert_eq!(set.pod_management_policy.as_deref(), Some("OrderedReady"));
        assert_eq!(
            set.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(set.service_name.as_deref(), Some("web"));
        let svc = headless_service(&s).spec.unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    }

    #[test]
    fn what_a_cluster_cannot_express_is_refused_with_its_path() {
        let mut s = spec();
        s.priority = 10;
        s.containers[0].readiness_probe = Some(Probe::http("/", "http").period(0.1));
        let err = check(&s, PROCESS).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["priority", "containers[0].readinessProbe.periodSeconds"]
        );
        // Without process pods every container needs an image.
        let err = check(&spec(), IMAGES).unwrap_err();
        assert!(err.errors.iter().any(|e| e.path.contains("image")), "{err}");
        assert!(check(&spec(), PROCESS).is_ok());
    }
}
