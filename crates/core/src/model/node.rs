//! Nodes: where instances run.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Resources;

/// A node of an engine (a Kubernetes Node; a virtual node of the local engine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Total resources of the node.
    pub capacity: Resources,
    /// What instances may use (capacity less system reservations).
    pub allocatable: Resources,
    /// Labels (zone, pool membership, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints that repel instances which do not tolerate them.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Cordoned: no new instances are placed here.
    #[serde(default)]
    pub unschedulable: bool,
    /// Whether the node is up.
    #[serde(default = "yes")]
    pub ready: bool,
}

fn yes() -> bool {
    true
}

impl Node {
    /// A ready node named `name` whose capacity and allocatable are `capacity`.
    pub fn new(name: impl Into<String>, capacity: Resources) -> Self {
        Node {
            name: name.into(),
            capacity,
            allocatable: capacity,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            ready: true,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a taint.
    #[must_use]
    pub fn taint(mut self, taint: Taint) -> Self {
        self.taints.push(taint);
        self
    }
}

/// What a taint does to instances that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    /// Not placed here.
    NoSchedule,
    /// Placed here only when nothing else fits.
    PreferNoSchedule,
    /// Not placed here, and evicted if already here.
    NoExecute,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    #[serde(default)]
    pub value: String,
    /// Effect.
    pub effect: TaintEffect,
}

/// How a toleration matches a taint's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    /// Key and value must be equal.
    #[default]
    Equal,
    /// Any value of the key (an empty key with `Exists` tolerates every taint).
    Exists,
}

/// A toleration on an application, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// Taint key; empty matches every key (with `Exists`).
    #[serde(default)]
    pub key: String,
    /// Match operator.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// Value for `Equal`.
    #[serde(default)]
    pub value: String,
    /// Only taints with this effect; `None` matches all effects.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint` (Kubernetes' rule).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if let Some(effect) = self.effect
            && effect != taint.effect
        {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toleration_matching() {
        let taint = Taint {
            key: "gpu".into(),
            value: "yes".into(),
            effect: TaintEffect::NoSchedule,
        };
        let exists_all = Toleration {
            key: String::new(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        };
        assert!(exists_all.tolerates(&taint));
        let equal = Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Equal,
            value: "yes".into(),
            effect: None,
        };
        assert!(equal.tolerates(&taint));
        let wrong_value = Toleration {
            value: "no".into(),
            ..equal.clone()
        };
        assert!(!wrong_value.tolerates(&taint));
        let wrong_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..equal
        };
        assert!(!wrong_effect.tolerates(&taint));
    }
}
