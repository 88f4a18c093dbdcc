//! The replica-ratio "router": no proxy, traffic follows replica counts.

use async_trait::async_trait;

use super::{Backend, TrafficError, TrafficRouter, TrafficSplit};
use rorqual_core::model::AppKey;

/// Canary replicas for a weight without a traffic router (Argo Rollouts' rule): the nearest
/// whole number to `weight_percent`% of `replicas`, ties rounded up; weights over 100 count as
/// 100.
///
/// 10 replicas at 41% → 4 canary (and 6 stable); 10 at 25% → 3; 3 at 50% → 2.
pub fn canary_replicas_for_weight(weight_percent: u32, replicas: u32) -> u32 {
    let weight = u64::from(weight_percent.min(100));
    let replicas = u64::from(replicas);
    // round(w × r / 100) with ties up, in integers: floor((2·w·r + 100) / 200).
    let canary = (2 * weight * replicas + 100) / 200;
    // canary ≤ replicas because weight ≤ 100, so it fits back into u32.
    u32::try_from(canary).unwrap_or(u32::MAX)
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

    #[test]
    fn argo_examples() {
        assert_eq!(canary_replicas_for_weight(41, 10), 4);
        assert_eq!(canary_replicas_for_weight(45, 10), 5);
        assert_eq!(canary_replicas_for_weight(25, 10), 3);
        assert_eq!(canary_replicas_for_weight(50, 3), 2);
        assert_eq!(canary_replicas_for_weight(20, 5), 1);
        assert_eq!(canary_replicas_for_weight(0, 10), 0);
        assert_eq!(canary_replicas_for_weight(100, 7), 7);
        assert_eq!(canary_replicas_for_weight(150, 7), 7);
        assert_eq!(canary_replicas_for_weight(10, 4), 0); // 0.4 rounds down
        assert_eq!(canary_replicas_for_weight(50, 1), 1); // 0.5 rounds up
    }

    proptest! {
        #[test]
        fn nearest_integer_ties_up(w in 0u32..=100, r in 0u32..100_000) {
            let c = canary_replicas_for_weight(w, r);
            let exact = f64::from(w) * f64::from(r) / 100.0;
            prop_assert!(c <= r);
            prop_assert!((f64::from(c) - exact).abs() <= 0.5 + 1e-9);
            if (exact - exact.floor() - 0.5).abs() < 1e-9 {
                prop_assert_eq!(f64::from(c), exact.ceil());
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
