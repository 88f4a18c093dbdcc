//! NodeResourcesFit (filter; LeastAllocated, MostAllocated, RequestedToCapacityRatio scoring)
//! and BalancedAllocation.

use rorqual_core::model::Resources;

use crate::framework::{CycleState, FilterPlugin, MAX_NODE_SCORE, Plugin, ScorePlugin, Status};
use crate::snapshot::{NodeInfo, PodInfo};

/// CPU assumed for scoring a pod that requests none (upstream's non-zero default).
pub const DEFAULT_MILLI_CPU_REQUEST: u64 = 100;
/// Memory assumed for scoring a pod that requests none.
pub const DEFAULT_MEMORY_REQUEST: u64 = 200 * 1024 * 1024;

/// A point of a RequestedToCapacityRatio shape: utilisation 0..=100 → score 0..=10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapePoint {
    /// Utilisation in percent.
    pub utilization: i64,
    /// Score 0..=10.
    pub score: i64,
}

/// How NodeResourcesFit scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer nodes with more free resources (spreads).
    LeastAllocated,
    /// Prefer fuller nodes (bin packing).
    MostAllocated,
    /// A piecewise-linear function of utilisation.
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

/// Filters nodes without room for the pod's requests and scores by the strategy. CPU and
/// memory are weighted equally.
#[derive(Debug, Clone)]
pub struct NodeResourcesFit {
    strategy: ScoringStrategy,
}

impl NodeResourcesFit {
    /// With `strategy` (validated when the profile is built).
    pub fn new(strategy: ScoringStrategy) -> NodeResourcesFit {
        NodeResourcesFit { strategy }
    }
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit::new(ScoringStrategy::LeastAllocated)
    }
}

fn non_zero(r: Resources) -> (u64, u64) {
    (
        if r.cpu.0 == 0 {
            DEFAULT_MILLI_CPU_REQUEST
        } else {
            r.cpu.0
        },
        if r.memory.0 == 0 {
            DEFAULT_MEMORY_REQUEST
        } else {
            r.memory.0
        },
    )
}

/// Requested (including the pod, with non-zero defaults) and allocatable, per resource.
fn usage(pod: &PodInfo, node: &NodeInfo) -> [(u64, u64); 2] {
    let (cpu, mem) = non_zero(pod.requests);
    [
        (
            node.requested.cpu.0.saturating_add(cpu),
            node.allocatable.cpu.0,
        ),
        (
            node.requested.memory.0.saturating_add(mem),
            node.allocatable.memory.0,
        ),
    ]
}

/// The piecewise-linear shape at `utilization` (percent), in 0..=100.
pub fn shape_score(shape: &[ShapePoint], utilization: i64) -> i64 {
    let Some(first) = shape.first() else {
        return 0;
    };
    if utilization <= first.utilization {
        return first.score * 10;
    }
    for w in shape.windows(2) {
        let (a, b) = (w[0], w[1]);
        if utilization <= b.utilization {
            let span = b.utilization - a.utilization;
            let s = a.score * 10
                + (b.score - a.score) * 10 * (utilization - a.utilization) / span.max(1);
            return s;
        }
    }
    shape.last().map_or(0, |p| p.score * 10)
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &str {
        "NodeResourcesFit"
    }

    fn validate(&self) -> Result<(), String> {
        if let ScoringStrategy::RequestedToCapacityRatio(shape) = &self.strategy {
            if shape.is_empty() {
                return Err("requestedToCapacityRatio shape needs at least one point".into());
            }
            for (i, p) in shape.iter().enumerate() {
                if !(0..=100).contains(&p.utilization) {
                    return Err(format!(
                        "shape[{i}].utilization {} is not in 0..=100",
                        p.utilization
                    ));
                }
                if !(0..=10).contains(&p.score) {
                    return Err(format!("shape[{i}].score {} is not in 0..=10", p.score));
                }
                if i > 0 && p.utilization <= shape[i - 1].utilization {
                    return Err(format!(
                        "shape[{i}].utilization {} must be greater than the previous point's",
                        p.utilization
                    ));
                }
            }
        }
        Ok(())
    }
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if node.pods.len() as u64 >= u64::from(node.max_pods) {
            return Status::unschedulable("Too many pods");
        }
        let free = node.free();
        if pod.requests.cpu > free.cpu {
            return Status::unschedulable("Insufficient cpu");
        }
        if pod.requests.memory > free.memory {
            return Status::unschedulable("Insufficient memory");
        }
        Status::success()
    }
}

impl ScorePlugin for NodeResourcesFit {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let mut total = 0i64;
        for (requested, capacity) in usage(pod, node) {
            let s = if capacity == 0 {
                0
            } else {
                let requested = requested.min(capacity);
                // Percent of capacity requested; u64 unless the capacity is astronomically
                // large (then u128, which is several times slower to divide).
                let percent = match requested.checked_mul(100) {
                    Some(r) => (r / capacity) as i64,
                    None => (u128::from(requested) * 100 / u128::from(capacity)) as i64,
                };
                match &self.strategy {
                    ScoringStrategy::LeastAllocated => {
                        let free = capacity - requested;
                        match free.checked_mul(MAX_NODE_SCORE as u64) {
                            Some(f) => (f / capacity) as i64,
                            None => (u128::from(free) * 100 / u128::from(capacity)) as i64,
                        }
                    }
                    ScoringStrategy::MostAllocated => percent,
                    ScoringStrategy::RequestedToCapacityRatio(shape) => shape_score(shape, percent),
                }
            };
            total += s;
        }
        Ok(total / 2)
    }
}

/// Prefers nodes whose CPU and memory utilisation stay balanced after placing the pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &str {
        "NodeResourcesBalancedAllocation"
    }
}

impl ScorePlugin for BalancedAllocation {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let fraction = |(req, cap): (u64, u64)| {
            if cap == 0 {
                1.0
            } else {
                (req as f64 / cap as f64).min(1.0)
            }
        };
        let [cpu, mem] = usage(pod, node);
        let (c, m) = (fraction(cpu), fraction(mem));
        // Standard deviation of two values is half their difference.
        let std = (c - m).abs() / 2.0;
        Ok(((1.0 - std) * MAX_NODE_SCORE as f64) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(cpu: u64, mem: u64, used_cpu: u64, used_mem: u64) -> NodeInfo {
        let mut n = NodeInfo::new("n", Resources::new(cpu, mem));
        n.requested = Resources::new(used_cpu, used_mem);
        n
    }

    #[test]
    fn fit_and_strategies() {
        let state = CycleState::new();
        let pod = PodInfo::new("u", "ns", "p", Resources::new(500, 500));
        let fit = NodeResourcesFit::default();
        assert!(
            fit.filter(&state, &pod, &node(1000, 1000, 500, 500))
                .is_success()
        );
        assert_eq!(
            fit.filter(&state, &pod, &node(1000, 1000, 600, 0))
                .message(),
            "Insufficient cpu"
        );
        assert_eq!(
            fit.score(&state, &pod, &node(1000, 1000, 0, 0)).unwrap(),
            50
        );
        let most = NodeResourcesFit::new(ScoringStrategy::MostAllocated);
        assert_eq!(
            most.score(&state, &pod, &node(1000, 1000, 250, 250))
                .unwrap(),
            75
        );
        let ratio = NodeResourcesFit::new(ScoringStrategy::RequestedToCapacityRatio(vec![
            ShapePoint {
                utilization: 0,
                score: 10,
            },
            ShapePoint {
                utilization: 100,
                score: 0,
            },
        ]));
        assert!(ratio.validate().is_ok());
        assert_eq!(
            ratio.score(&state, &pod, &node(1000, 1000, 0, 0)).unwrap(),
            50
        );
        let bad = NodeResourcesFit::new(ScoringStrategy::RequestedToCapacityRatio(vec![
            ShapePoint {
                utilization: 50,
                score: 1,
            },
            ShapePoint {
                utilization: 40,
                score: 11,
            },
        ]));
        assert!(bad.validate().unwrap_err().contains("score 11"));
        let balanced = BalancedAllocation;
        assert_eq!(
            balanced
                .score(&state, &pod, &node(1000, 1000, 0, 0))
                .unwrap(),
            100
        );
        assert_eq!(
            balanced
                .score(&state, &pod, &node(1000, 1000, 500, 0))
                .unwrap(),
            75
        );
    }

    proptest! {
        #[test]
        fn scores_stay_in_range(cap in 0u64..1_000_000, used in 0u64..2_000_000, req in 0u64..2_000_000) {
            let state = CycleState::new();
            let pod = PodInfo::new("u", "ns", "p", Resources::new(req, req));
            let n = node(cap, cap, used, used);
            for s in [ScoringStrategy::LeastAllocated, ScoringStrategy::MostAllocated,
                      ScoringStrategy::RequestedToCapacityRatio(vec![ShapePoint{utilization:0,score:0}, ShapePoint{utilization:100,score:10}])] {
                let v = NodeResourcesFit::new(s).score(&state, &pod, &n).unwrap();
                prop_assert!((0..=100).contains(&v));
            }
            let v = BalancedAllocation.score(&state, &pod, &n).unwrap();
            prop_assert!((0..=100).contains(&v));
        }
    }
}
