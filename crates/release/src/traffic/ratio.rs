//! The replica-ratio "router": no proxy, traffic follows replica counts.

use async_trait::async_trait;

use super::{Backend, TrafficError, TrafficRouter, TrafficSplit};
use rorqual_core::model::AppKey;

/// Canary and stable replicas for a traffic weight without a traffic router: Argo Rollouts'
/// surge-aware rule (`approximateWeightedCanaryStableReplicaCounts`, Argo ≥ 1.2). Returns
/// `(canary, stable)`.
///
/// The counts approximate `weight_percent`% of the instances as closely as whole instances
/// allow, choosing among rounding the canary count down or up, over a total of `replicas` or,
/// when `max_surge` is positive, `replicas + 1`. For weights from 1 to 99 neither side is ever
/// 0 (unless a single replica without surge leaves no room for both); the two sides may add
/// up to `replicas + 1` only when `max_surge > 0`. Weight 0 is `(0, replicas)`, weight 100 (or
/// more) is `(replicas, 0)`. On equally close choices the first in Argo's order wins: round
/// up over `replicas`, round down over `replicas`, round up over `replicas + 1`, round down
/// over `replicas + 1`; an exact tie between rounding up and down rounds up.
///
/// Two deliberate differences from Argo: the choices are compared as exact fractions (Argo
/// uses floating point, which can misjudge a tie), and an exact tie whose round-up would empty
/// the stable side rounds down instead of falling back to no canary at all (Argo gives 10
/// replicas at 95 % without surge 0 canary / 10 stable; this gives 9 / 1).
///
/// 10 replicas at 25 % → 3 canary and 8 stable (with surge); 10 at 1 % → 1 / 10; 10 at 99 %
/// → 10 / 1; 3 at 50 % → 2 / 2; without surge 10 at 25 % → 3 / 7.
pub fn weighted_replica_counts(weight_percent: u32, replicas: u32, max_surge: u32) -> (u32, u32) {
    if replicas == 0 {
        return (0, 0);
    }
    let weight = u64::from(weight_percent.min(100));
    let replicas = u64::from(replicas);
    let exact = weight * replicas; // the canary count is exact / 100
    let ceil = exact.div_ceil(100);
    let floor = exact / 100;
    // `total × weight / 100` ends in exactly .5: rounding up and down are equally close.
    let tied = |total: u64| (2 * weight * total) % 200 == 100;
    let zero_allowed = weight == 0 || weight == 100 || (replicas == 1 && max_surge == 0);
    let mut options: [Option<(u64, u64)>; 4] = [None; 4];
    if ceil < replicas || zero_allowed {
        options[0] = Some((ceil, replicas));
    }
    // On a tie Argo drops the round-down choice in favour of rounding up, even when rounding
    // up is not allowed (it would leave no stable instance): then nothing is left and Argo
    // runs no canary at all (10 replicas at 95 % without surge → 0 / 10). Here the round-down
    // choice stays in that case (→ 9 / 1).
    if (!tied(replicas) || options[0].is_none()) && (floor != 0 || zero_allowed) {
        options[1] = Some((floor, replicas));
    }
    if max_surge > 0 {
        options[2] = Some((ceil, replicas + 1));
        if !tied(replicas + 1) && (floor != 0 || zero_allowed) {
            options[3] = Some((floor, replicas + 1));
        }
    }
    // Distance from the weight of `canary` out of `total`, as the fraction
    // |100·canary − weight·total| / (100·total); compared by cross-multiplying.
    let distance = |(canary, total): (u64, u64)| (canary * 100).abs_diff(weight * total);
    let mut best: Option<(u64, u64)> = None;
    for option in options.into_iter().flatten() {
        let closer = best.is_none_or(|b| distance(option) * b.1 < distance(b) * option.1);
        if closer {
            best = Some(option);
        }
    }
    // Argo's fallback when nothing qualifies. It cannot happen: weights 0 and 100, and one
    // replica without surge, allow rounding up; otherwise rounding up qualifies unless it
    // reaches `replicas`, and then rounding down (to `replicas − 1` ≥ 1) does.
    let (canary, total) = best.unwrap_or((0, replicas));
    // Both counts are at most replicas + 1, which fits a u32 unless replicas is u32::MAX.
    let fit = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    (fit(canary), fit(total - canary))
}

/// No router: the split is realised by replica counts (a Kubernetes Service selecting both
/// revisions' pods). [`TrafficRouter::set_split`] only validates the split.
///
/// Preview ([`TrafficRouter::set_preview`]) is accepted and only checked: without a router the
/// preview is the new revision's group itself (Argo's preview Service selecting the new
/// ReplicaSet), reachable through the engine's own addressing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaRatio;

#[async_trait]
impl TrafficRouter for ReplicaRatio {
    fn name(&self) -> &str {
        "replica-ratio"
    }

    fn routes_traffic(&self) -> bool {
        false
    }

    async fn set_split(&self, _app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError> {
        // Endpoints are not needed: the engine's own load balancing follows the replicas.
        split.validate_weights()
    }

    async fn set_preview(
        &self,
        _app: &AppKey,
        preview: Option<&Backend>,
    ) -> Result<(), TrafficError> {
        // Endpoints are not needed here either; only the weight must say "one revision".
        match preview {
            Some(b) if b.weight != 100 => b.validate_preview(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::traffic::Backend;
    use rorqual_core::model::Revision;

    #[test]
    fn router_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}
        assert_seam::<dyn TrafficRouter>();
        let router: std::sync::Arc<dyn TrafficRouter> = std::sync::Arc::new(ReplicaRatio);
        assert_eq!(router.name(), "replica-ratio");
    }

    /// Argo Rollouts' `TestApproximateWeightedNewStableReplicaCounts` (utils/replicaset/
    /// canary_test.go), every row: replicas, weight, maxSurge → canary, stable (maxWeight is
    /// always 100 here).
    #[test]
    fn argo_weighted_replica_count_table() {
        #[rustfmt::skip]
        let table: &[(u32, u32, u32, u32, u32)] = &[
            (0, 0, 0, 0, 0), (0, 50, 0, 0, 0), (0, 100, 0, 0, 0),
            (0, 0, 1, 0, 0), (0, 50, 1, 0, 0), (0, 100, 1, 0, 0),

            (1, 0, 0, 0, 1), (1, 1, 0, 0, 1), (1, 49, 0, 0, 1),
            (1, 50, 0, 1, 0), (1, 99, 0, 1, 0), (1, 100, 0, 1, 0),

            (1, 0, 1, 0, 1), (1, 1, 1, 1, 1), (1, 49, 1, 1, 1),
            (1, 50, 1, 1, 1), (1, 99, 1, 1, 1), (1, 100, 1, 1, 0),

            (2, 0, 0, 0, 2), (2, 1, 0, 1, 1), (2, 50, 0, 1, 1),
            (2, 99, 0, 1, 1), (2, 100, 0, 2, 0),

            (2, 0, 1, 0, 2), (2, 1, 1, 1, 2), (2, 50, 1, 1, 1),
            (2, 99, 1, 2, 1), (2, 100, 1, 2, 0),

            (3, 10, 0, 1, 2), (3, 25, 0, 1, 2), (3, 33, 0, 1, 2),
            (3, 34, 0, 1, 2), (3, 49, 0, 1, 2), (3, 50, 0, 2, 1),

            (3, 10, 1, 1, 3), (3, 25, 1, 1, 3), (3, 33, 1, 1, 2),
            (3, 34, 1, 1, 2), (3, 49, 1, 2, 2), (3, 50, 1, 2, 2),

            (10, 0, 1, 0, 10), (10, 1, 0, 1, 9), (10, 14, 0, 1, 9),
            (10, 15, 0, 2, 8), (10, 16, 0, 2, 8), (10, 99, 0, 9, 1),
            (10, 100, 1, 10, 0),

            (10, 0, 1, 0, 10), (10, 1, 1, 1, 10), (10, 18, 1, 2, 9),
            (10, 19, 1, 2, 9), (10, 20, 1, 2, 8), (10, 23, 1, 2, 8),
            (10, 24, 1, 3, 8), (10, 25, 1, 3, 8), (10, 99, 1, 10, 1),
            (10, 100, 1, 10, 0),
        ];
        for &(replicas, weight, surge, canary, stable) in table {
            assert_eq!(
                weighted_replica_counts(weight, replicas, surge),
                (canary, stable),
                "{replicas} replicas at {weight}% with maxSurge {surge}"
            );
        }
    }

    #[test]
    fn the_surge_size_only_matters_as_zero_or_not() {
        // Argo considers at most one extra instance, whatever maxSurge allows.
        assert_eq!(weighted_replica_counts(25, 10, 3), (3, 8));
        assert_eq!(weighted_replica_counts(25, 10, 0), (3, 7));
        assert_eq!(weighted_replica_counts(41, 10, 3), (4, 6));
        assert_eq!(
            weighted_replica_counts(150, 7, 2),
            (7, 0),
            "over 100 counts as 100"
        );
    }

    #[test]
    fn a_tie_that_cannot_round_up_rounds_down_rather_than_dropping_the_canary() {
        // 9.5 of 10 and 1.5 of 2: rounding up would leave no stable instance.
        assert_eq!(weighted_replica_counts(95, 10, 0), (9, 1), "Argo: 0 / 10");
        assert_eq!(weighted_replica_counts(75, 2, 0), (1, 1), "Argo: 0 / 2");
        assert_eq!(
            weighted_replica_counts(95, 10, 1),
            (10, 1),
            "with surge as Argo"
        );
    }

    proptest! {
        #[test]
        fn weighted_counts_keep_argo_invariants(
            w in 0u32..=100,
            r in 0u32..100_000,
            surge in 0u32..4,
        ) {
            let (c, s) = weighted_replica_counts(w, r, surge);
            let total = c + s;
            if r == 0 {
                prop_assert_eq!((c, s), (0, 0));
                return Ok(());
            }
            // The sides add up to the replicas, or one more only when surging is allowed.
            prop_assert!(total == r || (surge > 0 && total == r + 1), "{c}+{s} for {r}");
            match w {
                0 => prop_assert_eq!((c, s), (0, r)),
                100 => prop_assert_eq!((c, s), (r, 0)),
                // 1-99 %: neither side is empty unless one replica without surge.
                _ if r >= 2 || surge > 0 => prop_assert!(c >= 1 && s >= 1, "{c}/{s}"),
                _ => prop_assert_eq!(total, 1),
            }
            // Within one instance of the exact share of the chosen total.
            let gap = (u64::from(c) * 100).abs_diff(u64::from(w) * u64::from(total));
            prop_assert!(gap <= 100, "{c}/{total} is {gap}/100 instances off {w}%");
            // Never further from the weight than the nearest split of exactly `r` replicas
            // that keeps both sides non-empty (the old rule could give 0 canaries).
            if (1..100).contains(&w) && r >= 2 {
                let nearest = ((u64::from(w) * u64::from(r) + 50) / 100).clamp(1, u64::from(r) - 1);
                let nearest_gap = (nearest * 100).abs_diff(u64::from(w) * u64::from(r));
                prop_assert!(
                    u128::from(gap) * u128::from(r) <= u128::from(nearest_gap) * u128::from(total),
                    "{c}/{total} is further from {w}% than {nearest}/{r}"
                );
            }
        }
    }

    #[tokio::test]
    async fn replica_ratio_validates_only() {
        let app = AppKey::new("default", "web");
        let ok = TrafficSplit::new(vec![
            Backend::new(Revision::from("a"), 80),
            Backend::new(Revision::from("b"), 20),
        ]);
        assert!(!ReplicaRatio.routes_traffic());
        ReplicaRatio.set_split(&app, &ok).await.unwrap();
        let bad = TrafficSplit::new(vec![
            Backend::new(Revision::from("a"), 80),
            Backend::new(Revision::from("b"), 30),
        ]);
        let err = ReplicaRatio.set_split(&app, &bad).await.unwrap_err();
        assert!(err.to_string().contains("sum to 110"), "{err}");
    }

    #[tokio::test]
    async fn replica_ratio_accepts_a_preview_and_checks_its_weight() {
        let app = AppKey::new("default", "web");
        let green = Backend::preview(Revision::from("green"));
        ReplicaRatio.set_preview(&app, Some(&green)).await.unwrap();
        ReplicaRatio.set_preview(&app, None).await.unwrap();
        let half = Backend::new(Revision::from("green"), 50);
        let err = ReplicaRatio
            .set_preview(&app, Some(&half))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("weight 50"), "{err}");
    }

    #[tokio::test]
    async fn preview_is_unsupported_by_default() {
        #[derive(Debug)]
        struct Plain;
        #[async_trait]
        impl TrafficRouter for Plain {
            fn name(&self) -> &str {
                "plain"
            }
            fn routes_traffic(&self) -> bool {
                true
            }
            async fn set_split(&self, _: &AppKey, _: &TrafficSplit) -> Result<(), TrafficError> {
                Ok(())
            }
        }
        let err = Plain
            .set_preview(&AppKey::new("default", "web"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, TrafficError::Unsupported { .. }), "{err}");
        assert_eq!(err.to_string(), "plain does not support preview routing");
        assert!(!err.is_retryable());
    }

    #[test]
    fn preview_backend_validation_names_the_problem() {
        Backend::preview(Revision::from("a"))
            .validate_preview()
            .unwrap();
        let half = Backend::new(Revision::from("a"), 50).validate_preview();
        assert!(half.unwrap_err().to_string().contains("weight 50"));
    }

    #[test]
    fn split_validation_names_the_problem() {
        let over = TrafficSplit::new(vec![Backend::new(Revision::from("a"), 120)]);
        assert!(
            over.validate_weights()
                .unwrap_err()
                .to_string()
                .contains("weight 120, over 100")
        );
        let dup = TrafficSplit::new(vec![
            Backend::new(Revision::from("a"), 50),
            Backend::new(Revision::from("a"), 50),
        ]);
        assert!(
            dup.validate_weights()
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        let zero_ok = TrafficSplit::new(vec![
            Backend::new(Revision::from("a"), 100),
            Backend::new(Revision::from("b"), 0),
        ]);
        zero_ok.validate_weights().unwrap();
        assert_eq!(zero_ok.weight_of(&Revision::from("a")), 100);
    }
}
