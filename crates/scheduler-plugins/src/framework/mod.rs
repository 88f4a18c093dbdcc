//! The scheduling framework: extension-point traits, statuses, cycle state, profiles and the
//! rule for how many nodes to score.

pub mod cycle_state;
pub mod plugin;
pub mod profile;
pub mod sampling;
pub mod status;
pub mod waiting;

pub use cycle_state::{CycleState, PodRemoved, StateData};
pub use plugin::{
    BindPlugin, FilterPlugin, MAX_NODE_SCORE, MAX_PERMIT_TIMEOUT, NodeSet, NodeStatuses,
    PermitPlugin, Plugin, PostBindPlugin, PostFilterPlugin, PreBindPlugin, PreEnqueuePlugin,
    PreFilterPlugin, PreScorePlugin, QueueSortPlugin, QueuedPodInfo, ReservePlugin, ScorePlugin,
};
pub use profile::{Profile, ProfileBuilder, ProfileError};
pub use sampling::num_feasible_nodes_to_find;
pub use status::{Code, Status};
pub use waiting::WaitingPods;

#[cfg(test)]
mod object_safety {
    use super::*;
    use std::sync::Arc;

    fn assert_plugin<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}

    #[test]
    fn plugin_traits_are_object_safe_send_and_sync() {
        assert_plugin::<dyn Plugin>();
        assert_plugin::<dyn PreEnqueuePlugin>();
        assert_plugin::<dyn QueueSortPlugin>();
        assert_plugin::<dyn PreFilterPlugin>();
        assert_plugin::<dyn FilterPlugin>();
        assert_plugin::<dyn PostFilterPlugin>();
        assert_plugin::<dyn PreScorePlugin>();
        assert_plugin::<dyn ScorePlugin>();
        assert_plugin::<dyn ReservePlugin>();
        assert_plugin::<dyn PermitPlugin>();
        assert_plugin::<dyn PreBindPlugin>();
        assert_plugin::<dyn BindPlugin>();
        assert_plugin::<dyn PostBindPlugin>();
        let _: Arc<dyn FilterPlugin> = Arc::new(crate::plugins::NodeUnschedulable);
        let _: Arc<dyn BindPlugin> = Arc::new(crate::plugins::DefaultBinder);
    }
}
