//! Reference plugins and the default profile.

mod basic;
mod gang;
mod inter_pod_affinity;
mod node_affinity;
mod resources;
mod sticky;
mod taints;
mod topology_spread;
mod underlay;

use std::sync::Arc;

pub use basic::{
    DefaultBinder, NodeName, NodePorts, NodeUnschedulable, PrioritySort, TAINT_NOT_READY,
    TAINT_UNSCHEDULABLE,
};
pub use gang::Gang;
pub use inter_pod_affinity::{
    DEFAULT_HARD_POD_AFFINITY_WEIGHT, InterPodAffinity, MAX_HARD_POD_AFFINITY_WEIGHT,
};
pub use node_affinity::NodeAffinity;
pub use resources::{
    BalancedAllocation, DEFAULT_MEMORY_REQUEST, DEFAULT_MILLI_CPU_REQUEST, NodeResourcesFit,
    ScoringStrategy, ShapePoint, shape_score,
};
pub use sticky::StickyIdentity;
pub use taints::TaintToleration;
pub use topology_spread::PodTopologySpread;
pub use underlay::{
    CapacitySnapshot, ClaimedAddress, IpCapacity, IpCapacityError, MemoryIpCapacity, PoolCapacity,
    Reservation, ReserveRequest, ReservedIp, UnderlayIp, reserved_address,
};

use crate::framework::{BindPlugin, MAX_NODE_SCORE, Profile, ProfileBuilder, ProfileError};

/// Scales scores so the highest becomes 100 (`reverse`: the highest becomes 0 and zero 100).
pub fn normalize_by_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let v = if max > 0 {
            *s * MAX_NODE_SCORE / max
        } else {
            0
        };
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// Maps scores linearly so the lowest becomes 0 and the highest 100 (all 0 when equal).
pub fn normalize_min_max(scores: &mut [i64]) {
    let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
        return;
    };
    for s in scores.iter_mut() {
        *s = if max == min {
            0
        } else {
            (*s - min) * MAX_NODE_SCORE / (max - min)
        };
    }
}

/// Default score weights (upstream's, plus rorqual's stateful plugin).
pub mod weights {
    /// TaintToleration.
    pub const TAINT_TOLERATION: u32 = 3;
    /// NodeAffinity.
    pub const NODE_AFFINITY: u32 = 2;
    /// PodTopologySpread.
    pub const POD_TOPOLOGY_SPREAD: u32 = 2;
    /// InterPodAffinity.
    pub const INTER_POD_AFFINITY: u32 = 2;
    /// NodeResourcesFit.
    pub const NODE_RESOURCES_FIT: u32 = 1;
    /// NodeResourcesBalancedAllocation.
    pub const BALANCED_ALLOCATION: u32 = 1;
    /// StickyIdentity: outweighs resource balance, so an identity returns home when it fits.
    pub const STICKY_IDENTITY: u32 = 5;
}

/// The default plugin set, optionally with underlay-IP awareness and a non-default
/// resource strategy.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct DefaultPlugins {
    capacity: Option<Arc<dyn IpCapacity>>,
    strategy: Option<ScoringStrategy>,
    gang: Option<Gang>,
    inter_pod_affinity: Option<InterPodAffinity>,
    binder: Option<Arc<dyn BindPlugin>>,
}

impl DefaultPlugins {
    /// The defaults.
    pub fn new() -> DefaultPlugins {
        DefaultPlugins::default()
    }

    /// Adds the UnderlayIp plugin over `capacity`.
    pub fn underlay(mut self, capacity: Arc<dyn IpCapacity>) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// NodeResourcesFit's scoring strategy.
    pub fn scoring(mut self, strategy: ScoringStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// A configured gang plugin (the default waits 60 s).
    pub fn gang(mut self, gang: Gang) -> Self {
        self.gang = Some(gang);
        self
    }

    /// A configured InterPodAffinity plugin (the default's `hardPodAffinityWeight` is 1).
    pub fn inter_pod_affinity(mut self, plugin: InterPodAffinity) -> Self {
        self.inter_pod_affinity = Some(plugin);
        self
    }

    /// Binds with `binder` instead of [`DefaultBinder`] (which only records the binding in
    /// the scheduler's cache): a scheduler of its own on Kubernetes binds through the API.
    pub fn binder(mut self, binder: Arc<dyn BindPlugin>) -> Self {
        self.binder = Some(binder);
        self
    }

    /// The builder with every default plugin registered (add more before building).
    pub fn builder(self, name: &str) -> ProfileBuilder {
        let fit = Arc::new(NodeResourcesFit::new(
            self.strategy.unwrap_or(ScoringStrategy::LeastAllocated),
        ));
        let spread = Arc::new(PodTopologySpread);
        let ipa = Arc::new(self.inter_pod_affinity.unwrap_or_default());
        let affinity = Arc::new(NodeAffinity);
        let ports = Arc::new(NodePorts);
        let node_name = Arc::new(NodeName);
        let sticky = Arc::new(StickyIdentity::default());
        let gang = Arc::new(self.gang.unwrap_or_default());
        let mut b = Profile::builder(name)
            .queue_sort(Arc::new(PrioritySort))
            .pre_filter(node_name.clone())
            .pre_filter(affinity.clone())
            .pre_filter(ports.clone())
            .pre_filter(spread.clone())
            .pre_filter(ipa.clone())
            .filter(Arc::new(NodeUnschedulable))
            .filter(node_name)
            .filter(Arc::new(TaintToleration))
            .filter(affinity.clone())
            .filter(ports)
            .filter(fit.clone())
            .filter(spread.clone())
            .filter(ipa.clone())
            .pre_score(affinity.clone())
            .pre_score(spread.clone())
            .pre_score(ipa.clone())
            .pre_score(sticky.clone())
            .score(Arc::new(TaintToleration), weights::TAINT_TOLERATION)
            .score(affinity, weights::NODE_AFFINITY)
            .score(spread, weights::POD_TOPOLOGY_SPREAD)
            .score(ipa, weights::INTER_POD_AFFINITY)
            .score(fit, weights::NODE_RESOURCES_FIT)
            .score(Arc::new(BalancedAllocation), weights::BALANCED_ALLOCATION)
            .score(sticky, weights::STICKY_IDENTITY)
            .reserve(gang.clone())
            .permit(gang)
            .bind(self.binder.unwrap_or_else(|| Arc::new(DefaultBinder)));
        if let Some(capacity) = self.capacity {
            let ip = Arc::new(UnderlayIp::new(capacity));
            b = b
                .pre_filter(ip.clone())
                .filter(ip.clone())
                .reserve(ip.clone())
                .pre_bind(ip);
        }
        b
    }

    /// Builds the `default-scheduler` profile.
    pub fn build(self) -> Result<Profile, ProfileError> {
        self.builder("default-scheduler").build()
    }
}

/// The default profile (no underlay pools).
pub fn default_profile() -> Profile {
    // Invariant: the default plugin set has valid weights and configs (tested below).
    match DefaultPlugins::new().build() {
        Ok(p) => p,
        Err(e) => unreachable!("default profile is valid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_profile_builds() {
        assert!(DefaultPlugins::new().build().is_ok());
        assert_eq!(
            default_profile().max_total_score(),
            (3 + 2 + 2 + 2 + 1 + 1 + 5) * 100
        );
    }

    #[test]
    fn invalid_weights_and_configs_are_rejected() {
        let err = DefaultPlugins::new()
            .builder("p")
            .score(Arc::new(BalancedAllocation), 0)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("weight 0"), "{err}");
        let err = DefaultPlugins::new()
            .builder("p")
            .score(Arc::new(TaintToleration), 101)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ProfileError::InvalidWeight { weight: 101, .. }),
            "{err}"
        );
        let err = DefaultPlugins::new()
            .scoring(ScoringStrategy::RequestedToCapacityRatio(vec![]))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("NodeResourcesFit"), "{err}");
        let err = DefaultPlugins::new()
            .builder("p")
            .percentage_of_nodes_to_score(101)
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            ProfileError::InvalidPercentage { value: 101, .. }
        ));
        let err = Profile::builder("p")
            .queue_sort(Arc::new(PrioritySort))
            .build()
            .unwrap_err();
        assert!(matches!(err, ProfileError::NoBinder { .. }));
        let err = DefaultPlugins::new()
            .gang(Gang::new(std::time::Duration::ZERO))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = DefaultPlugins::new()
            .inter_pod_affinity(InterPodAffinity::new().hard_pod_affinity_weight(-1))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "profile `default-scheduler`: plugin `InterPodAffinity` is misconfigured: \
             hardPodAffinityWeight -1 is not in 0..=100"
        );
        let err = DefaultPlugins::new()
            .builder("p")
            .filter(Arc::new(TaintToleration))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProfileError::Duplicate {
                    point: "Filter",
                    ..
                }
            ),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn normalisation_lands_in_range(mut v in proptest::collection::vec(0i64..1_000_000, 0..50), rev: bool) {
            let mut w = v.clone();
            normalize_by_max(&mut v, rev);
            normalize_min_max(&mut w);
            prop_assert!(v.iter().chain(w.iter()).all(|s| (0..=100).contains(s)));
        }
    }
}
