//! A profile: the plugins at each extension point, score weights and sampling, validated when
//! built.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::framework::plugin::{
    BindPlugin, FilterPlugin, PermitPlugin, Plugin, PostBindPlugin, PostFilterPlugin,
    PreBindPlugin, PreEnqueuePlugin, PreFilterPlugin, PreScorePlugin, QueueSortPlugin,
    ReservePlugin, ScorePlugin,
};

/// The largest weight a Score plugin may have.
pub const MAX_WEIGHT: u32 = 100;

/// Why a profile was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A score weight outside 1..=100.
    #[error(
        "profile `{profile}`: score plugin `{plugin}` has weight {weight}, expected 1..={MAX_WEIGHT}"
    )]
    InvalidWeight {
        /// The profile.
        profile: String,
        /// The plugin.
        plugin: String,
        /// The weight given.
        weight: u32,
    },
    /// A plugin rejected its own configuration.
    #[error("profile `{profile}`: plugin `{plugin}` is misconfigured: {reason}")]
    InvalidPluginConfig {
        /// The profile.
        profile: String,
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// The same plugin twice at one extension point.
    #[error("profile `{profile}`: plugin `{plugin}` is registered twice at {point}")]
    Duplicate {
        /// The profile.
        profile: String,
        /// The plugin.
        plugin: String,
        /// The extension point.
        point: &'static str,
    },
    /// A percentage of nodes to score above 100.
    #[error("profile `{profile}`: percentageOfNodesToScore {value} is not in 0..=100")]
    InvalidPercentage {
        /// The profile.
        profile: String,
        /// The value.
        value: u32,
    },
    /// A profile without any Bind plugin cannot bind.
    #[error("profile `{profile}` has no bind plugin")]
    NoBinder {
        /// The profile.
        profile: String,
    },
    /// A profile needs exactly one QueueSort plugin.
    #[error("profile `{profile}` has no queue sort plugin")]
    NoQueueSort {
        /// The profile.
        profile: String,
    },
}

/// A validated set of plugins. Build with [`Profile::builder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Profile {
    /// The profile's name (`default-scheduler`).
    pub name: String,
    /// PreEnqueue plugins.
    pub pre_enqueue: Vec<Arc<dyn PreEnqueuePlugin>>,
    /// The QueueSort plugin.
    pub queue_sort: Arc<dyn QueueSortPlugin>,
    /// PreFilter plugins.
    pub pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    /// Filter plugins.
    pub filter: Vec<Arc<dyn FilterPlugin>>,
    /// PostFilter plugins.
    pub post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    /// PreScore plugins.
    pub pre_score: Vec<Arc<dyn PreScorePlugin>>,
    /// Score plugins with their weights.
    pub score: Vec<(Arc<dyn ScorePlugin>, u32)>,
    /// Reserve plugins.
    pub reserve: Vec<Arc<dyn ReservePlugin>>,
    /// Permit plugins.
    pub permit: Vec<Arc<dyn PermitPlugin>>,
    /// PreBind plugins.
    pub pre_bind: Vec<Arc<dyn PreBindPlugin>>,
    /// Bind plugins.
    pub bind: Vec<Arc<dyn BindPlugin>>,
    /// PostBind plugins.
    pub post_bind: Vec<Arc<dyn PostBindPlugin>>,
    /// `percentageOfNodesToScore` (`None`/0: adaptive).
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names<T: Plugin + ?Sized>(v: &[Arc<T>]) -> Vec<&str> {
            v.iter().map(|p| p.name()).collect()
        }
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("queue_sort", &self.queue_sort.name())
            .field("pre_filter", &names(&self.pre_filter))
            .field("filter", &names(&self.filter))
            .field(
                "score",
                &self
                    .score
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .field("reserve", &names(&self.reserve))
            .field("permit", &names(&self.permit))
            .field("bind", &names(&self.bind))
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// A builder for a profile named `name`.
    pub fn builder(name: impl Into<String>) -> ProfileBuilder {
        ProfileBuilder {
            name: name.into(),
            pre_enqueue: Vec::new(),
            queue_sort: None,
            pre_filter: Vec::new(),
            filter: Vec::new(),
            post_filter: Vec::new(),
            pre_score: Vec::new(),
            score: Vec::new(),
            reserve: Vec::new(),
            permit: Vec::new(),
            pre_bind: Vec::new(),
            bind: Vec::new(),
            post_bind: Vec::new(),
            percentage: None,
        }
    }

    /// The sum of all score weights times 100: the highest total a node can get.
    pub fn max_total_score(&self) -> i64 {
        self.score.iter().map(|(_, w)| i64::from(*w)).sum::<i64>() * 100
    }
}

/// Builds a [`Profile`]; [`ProfileBuilder::build`] validates weights and plugin configs.
#[must_use]
pub struct ProfileBuilder {
    name: String,
    pre_enqueue: Vec<Arc<dyn PreEnqueuePlugin>>,
    queue_sort: Option<Arc<dyn QueueSortPlugin>>,
    pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    filter: Vec<Arc<dyn FilterPlugin>>,
    post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    pre_score: Vec<Arc<dyn PreScorePlugin>>,
    score: Vec<(Arc<dyn ScorePlugin>, u32)>,
    reserve: Vec<Arc<dyn ReservePlugin>>,
    permit: Vec<Arc<dyn PermitPlugin>>,
    pre_bind: Vec<Arc<dyn PreBindPlugin>>,
    bind: Vec<Arc<dyn BindPlugin>>,
    post_bind: Vec<Arc<dyn PostBindPlugin>>,
    percentage: Option<u32>,
}

impl fmt::Debug for ProfileBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProfileBuilder {
    /// Adds a PreEnqueue plugin.
    pub fn pre_enqueue(mut self, p: Arc<dyn PreEnqueuePlugin>) -> Self {
        self.pre_enqueue.push(p);
        self
    }
    /// Sets the QueueSort plugin.
    pub fn queue_sort(mut self, p: Arc<dyn QueueSortPlugin>) -> Self {
        self.queue_sort = Some(p);
        self
    }
    /// Adds a PreFilter plugin.
    pub fn pre_filter(mut self, p: Arc<dyn PreFilterPlugin>) -> Self {
        self.pre_filter.push(p);
        self
    }
    /// Adds a Filter plugin.
    pub fn filter(mut self, p: Arc<dyn FilterPlugin>) -> Self {
        self.filter.push(p);
        self
    }
    /// Adds a PostFilter plugin.
    pub fn post_filter(mut self, p: Arc<dyn PostFilterPlugin>) -> Self {
        self.post_filter.push(p);
        self
    }
    /// Adds a PreScore plugin.
    pub fn pre_score(mut self, p: Arc<dyn PreScorePlugin>) -> Self {
        self.pre_score.push(p);
        self
    }
    /// Adds a Score plugin with `weight` (1..=100).
    pub fn score(mut self, p: Arc<dyn ScorePlugin>, weight: u32) -> Self {
        self.score.push((p, weight));
        self
    }
    /// Adds a Reserve plugin.
    pub fn reserve(mut self, p: Arc<dyn ReservePlugin>) -> Self {
        self.reserve.push(p);
        self
    }
    /// Adds a Permit plugin.
    pub fn permit(mut self, p: Arc<dyn PermitPlugin>) -> Self {
        self.permit.push(p);
        self
    }
    /// Adds a PreBind plugin.
    pub fn pre_bind(mut self, p: Arc<dyn PreBindPlugin>) -> Self {
        self.pre_bind.push(p);
        self
    }
    /// Adds a Bind plugin.
    pub fn bind(mut self, p: Arc<dyn BindPlugin>) -> Self {
        self.bind.push(p);
        self
    }
    /// Adds a PostBind plugin.
    pub fn post_bind(mut self, p: Arc<dyn PostBindPlugin>) -> Self {
        self.post_bind.push(p);
        self
    }
    /// Sets `percentageOfNodesToScore` (0: adaptive; 100: all nodes).
    pub fn percentage_of_nodes_to_score(mut self, percentage: u32) -> Self {
        self.percentage = Some(percentage);
        self
    }

    /// Validates and builds the profile.
    pub fn build(self) -> Result<Profile, ProfileError> {
        let profile = self.name.clone();
        if let Some(p) = self.percentage
            && p > 100
        {
            return Err(ProfileError::InvalidPercentage { profile, value: p });
        }
        for (plugin, weight) in &self.score {
            if *weight == 0 || *weight > MAX_WEIGHT {
                return Err(ProfileError::InvalidWeight {
                    profile,
                    plugin: plugin.name().to_owned(),
                    weight: *weight,
                });
            }
        }
        let mut all: Vec<(&'static str, Vec<&dyn Plugin>)> = Vec::new();
        fn as_plugins<T: Plugin + ?Sized>(v: &[Arc<T>]) -> Vec<&dyn Plugin> {
            v.iter().map(|p| p as &dyn Plugin).collect()
        }
        // `&Arc<T>` is itself a Plugin through the blanket impl below.
        all.push(("PreEnqueue", as_plugins(&self.pre_enqueue)));
        all.push(("PreFilter", as_plugins(&self.pre_filter)));
        all.push(("Filter", as_plugins(&self.filter)));
        all.push(("PostFilter", as_plugins(&self.post_filter)));
        all.push(("PreScore", as_plugins(&self.pre_score)));
        all.push((
            "Score",
            self.score.iter().map(|(p, _)| p as &dyn Plugin).collect(),
        ));
        all.push(("Reserve", as_plugins(&self.reserve)));
        all.push(("Permit", as_plugins(&self.permit)));
        all.push(("PreBind", as_plugins(&self.pre_bind)));
        all.push(("Bind", as_plugins(&self.bind)));
        all.push(("PostBind", as_plugins(&self.post_bind)));
        if let Some(q) = &self.queue_sort {
            all.push(("QueueSort", vec![q as &dyn Plugin]));
        }
        for (point, plugins) in &all {
            let mut seen = HashSet::new();
            for p in plugins {
                if !seen.insert(p.name().to_owned()) {
                    return Err(ProfileError::Duplicate {
                        profile,
                        plugin: p.name().to_owned(),
                        point,
                    });
                }
                if let Err(reason) = p.validate() {
                    return Err(ProfileError::InvalidPluginConfig {
                        profile,
                        plugin: p.name().to_owned(),
                        reason,
                    });
                }
            }
        }
        drop(all);
        if self.bind.is_empty() {
            return Err(ProfileError::NoBinder { profile });
        }
        let Some(queue_sort) = self.queue_sort else {
            return Err(ProfileError::NoQueueSort { profile });
        };
        Ok(Profile {
            name: self.name,
            pre_enqueue: self.pre_enqueue,
            queue_sort,
            pre_filter: self.pre_filter,
            filter: self.filter,
            post_filter: self.post_filter,
            pre_score: self.pre_score,
            score: self.score,
            reserve: self.reserve,
            permit: self.permit,
            pre_bind: self.pre_bind,
            bind: self.bind,
            post_bind: self.post_bind,
            percentage_of_nodes_to_score: self.percentage.filter(|p| *p > 0),
        })
    }
}

impl<T: Plugin + ?Sized> Plugin for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn validate(&self) -> Result<(), String> {
        (**self).validate()
    }
}
