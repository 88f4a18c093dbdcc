//! How many feasible nodes to find before scoring (the upstream rule).

/// Below this many nodes every node is checked.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The lowest adaptive percentage.
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// The number of feasible nodes to find among `num_nodes`, given the configured percentage
/// (`None` or `Some(0)`: adaptive, `max(5, 50 − nodes/125)`; `Some(100)`: all).
pub fn num_feasible_nodes_to_find(num_nodes: usize, percentage: Option<u32>) -> usize {
    if num_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return num_nodes;
    }
    let percentage = match percentage {
        Some(p) if p > 0 => p as usize,
        _ => 50usize
            .saturating_sub(num_nodes / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
    };
    if percentage >= 100 {
        return num_nodes;
    }
    (num_nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn upstream_values() {
        assert_eq!(num_feasible_nodes_to_find(99, Some(10)), 99);
        assert_eq!(num_feasible_nodes_to_find(5000, None), 500);
        assert_eq!(num_feasible_nodes_to_find(1000, None), 420);
        assert_eq!(num_feasible_nodes_to_find(6000, None), 300);
        assert_eq!(num_feasible_nodes_to_find(200, Some(10)), 100);
        assert_eq!(num_feasible_nodes_to_find(5000, Some(100)), 5000);
        assert_eq!(num_feasible_nodes_to_find(5000, Some(20)), 1000);
    }

    proptest! {
        #[test]
        fn bounded(n in 0usize..100_000, p in proptest::option::of(0u32..=100)) {
            let k = num_feasible_nodes_to_find(n, p);
            prop_assert!(k <= n);
            prop_assert!(k >= n.min(MIN_FEASIBLE_NODES_TO_FIND));
        }
    }
}
