//! The platform model: application specs, instances, nodes, events, quantities and revisions.
//!
//! Every type serialises to JSON and YAML with camelCase keys (Kubernetes style) and has a JSON
//! Schema through `schemars`.

mod event;
mod instance;
mod load;
mod node;
mod quantity;
mod revision;
mod scheduling;
mod spec;
mod validate;
mod validate_scheduling;

pub use event::{Event, EventType};
pub use instance::{Instance, InstancePhase};
pub use load::LoadError;
pub use node::{Node, Taint, TaintEffect, Toleration, TolerationOperator};
pub use quantity::{Cpu, Memory, QuantityError, Resources};
pub use revision::Revision;
pub use scheduling::{
    Affinity, GangSpec, LabelSelector, NODE_NAME_FIELD, NodeAffinity, NodeSelector,
    NodeSelectorTerm, PodAffinity, PodAffinityTerm, PreferredSchedulingTerm, SelectorOperator,
    SelectorRequirement, TopologySpreadConstraint, UnderlaySpec, WeightedPodAffinityTerm,
    WhenUnsatisfiable,
};
pub use spec::{
    AppKey, AppSpec, ConfigFile, ContainerSpec, PortRef, PortSpec, Probe, ProbeAction, Protocol,
    WorkloadKind,
};
pub use validate::{FieldError, ValidationErrors, ValidationTarget, is_dns_label};
