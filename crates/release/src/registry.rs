//! Strategies by kind: a rollout spec names its strategy as `{kind, config}` and the
//! controller resolves it through a [`StrategyRegistry`], so a host adds its own
//! [`ReleaseStrategy`] beside the four built-ins (`recreate`, `rollingUpdate`, `blueGreen`,
//! `canary`) without changing the spec format.
//!
//! ```
//! use std::sync::Arc;
//! use rorqual_release::{Canary, CanaryStep, StrategyRegistry, StrategySpec};
//!
//! let registry = StrategyRegistry::with_builtins();
//! // Argo's shape and the `{kind, config}` shape read the same.
//! let argo: StrategySpec =
//!     serde_json::from_str(r#"{"canary": {"steps": [{"setWeight": 20}]}}"#).unwrap();
//! let kind: StrategySpec = serde_json::from_str(
//!     r#"{"kind": "canary", "config": {"steps": [{"setWeight": 20}]}}"#,
//! ).unwrap();
//! assert_eq!(argo, kind);
//! assert_eq!(registry.resolve(&argo).unwrap().steps(), 1);
//!
//! let unknown = StrategySpec::new("wave", serde_json::json!({}));
//! let err = registry.resolve(&unknown).unwrap_err().to_string();
//! assert!(err.contains("wave") && err.contains("canary"), "{err}");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::strategy::{ReleaseStrategy, StrategyError};
use super::{BlueGreen, Canary, Recreate, RollingUpdate, Strategy};

/// A strategy as a rollout spec names it: a registered kind and its configuration. Serialised
/// as `{"kind": "canary", "config": {...}}`; Argo's single-key shape (`{"canary": {...}}`)
/// reads as the same value. The configuration is kept as compact JSON text (10,000 rollouts
/// hold 10,000 short strings, not 10,000 JSON trees).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StrategySpec {
    /// The kind, as registered (`canary`, `blueGreen`, `rollingUpdate`, `recreate`, or a
    /// host's own).
    pub kind: String,
    config: Box<RawValue>,
}

impl PartialEq for StrategySpec {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.config.get() == other.config.get()
    }
}

impl StrategySpec {
    /// A strategy of `kind` configured by `config` (`null` fields are dropped: they mean
    /// "the default" to every built-in kind).
    pub fn new(kind: impl Into<String>, config: serde_json::Value) -> Self {
        let config = without_nulls(config);
        StrategySpec {
            kind: kind.into(),
            // Serialising a `Value` cannot fail.
            config: serde_json::value::to_raw_value(&config).unwrap_or_default(),
        }
    }

    /// The kind's configuration.
    pub fn config(&self) -> serde_json::Value {
        serde_json::from_str(self.config.get()).unwrap_or_default()
    }
}

/// `value` without object members that are `null`, at any depth.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(without_nulls).collect())
        }
        other => other,
    }
}

impl Default for StrategySpec {
    fn default() -> Self {
        Strategy::default().into()
    }
}

impl From<Strategy> for StrategySpec {
    fn from(strategy: Strategy) -> Self {
        // A built-in strategy is plain data in Argo's single-key shape.
        let value = serde_json::to_value(&strategy).unwrap_or_default();
        match value {
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (kind, config) = map.into_iter().next().unwrap_or_default();
                StrategySpec::new(kind, config)
            }
            other => StrategySpec::new("unknown", other),
        }
    }
}

macro_rules! builtin_into_spec {
    ($($ty:ident),*) => {$(
        impl From<$ty> for StrategySpec {
            fn from(s: $ty) -> Self {
                Strategy::$ty(s).into()
            }
        }
    )*};
}
builtin_into_spec!(Recreate, RollingUpdate, BlueGreen, Canary);

impl<'de> Deserialize<'de> for StrategySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(D::Error::custom(
                "a strategy is an object: {\"kind\": ..., \"config\": ...} or {\"<kind>\": {...}}",
            ));
        };
        if let Some(kind) = map.remove("kind") {
            let serde_json::Value::String(kind) = kind else {
                return Err(D::Error::custom("strategy `kind` must be a string"));
            };
            let config = map.remove("config").unwrap_or(serde_json::Value::Null);
            if let Some(extra) = map.keys().next() {
                return Err(D::Error::custom(format!(
                    "unknown strategy field `{extra}` beside `kind` and `config`"
                )));
            }
            return Ok(StrategySpec::new(kind, config));
        }
        if map.len() != 1 {
            let keys: Vec<&String> = map.keys().collect();
            return Err(D::Error::custom(format!(
                "a strategy names one kind, found {keys:?}"
            )));
        }
        let (kind, config) = map.into_iter().next().unwrap_or_default();
        Ok(StrategySpec::new(kind, config))
    }
}

/// Builds a strategy from its configuration.
pub type StrategyFactory = Arc<
    dyn Fn(&serde_json::Value) -> Result<Arc<dyn ReleaseStrategy>, StrategyError> + Send + Sync,
>;

/// Strategies by kind. Cloning shares the factories.
#[derive(Clone, Default)]
pub struct StrategyRegistry {
    by_kind: BTreeMap<String, StrategyFactory>,
}

impl fmt::Debug for StrategyRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl StrategyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The four built-ins: `recreate`, `rollingUpdate`, `blueGreen` and `canary`.
    pub fn with_builtins() -> Self {
        Self::new()
            .with_serde::<Recreate>("recreate")
            .with_serde::<RollingUpdate>("rollingUpdate")
            .with_serde::<BlueGreen>("blueGreen")
            .with_serde::<Canary>("canary")
    }

    /// Registers `factory` for `kind` (replacing an earlier one).
    pub fn register(&mut self, kind: impl Into<String>, factory: StrategyFactory) {
        self.by_kind.insert(kind.into(), factory);
    }

    /// Registers a strategy type whose configuration is its serde form (`null` or absent
    /// reads as `{}`).
    #[must_use]
    pub fn with_serde<S>(mut self, kind: &str) -> Self
    where
        S: ReleaseStrategy + DeserializeOwned,
    {
        let owned = kind.to_owned();
        self.register(
            kind,
            Arc::new(move |config: &serde_json::Value| {
                let config = if config.is_null() {
                    serde_json::Value::Object(Default::default())
                } else {
                    config.clone()
                };
                serde_json::from_value::<S>(config)
                    .map(|s| Arc::new(s) as Arc<dyn ReleaseStrategy>)
                    .map_err(|err| StrategyError::Field {
                        field: owned.clone(),
                        message: err.to_string(),
                    })
            }),
        );
        self
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        self.by_kind.keys().map(String::as_str).collect()
    }

    /// Builds the strategy `spec` names. An unknown kind names the kind and the registered
    /// kinds; a configuration its kind cannot read names the field.
    pub fn resolve(&self, spec: &StrategySpec) -> Result<Arc<dyn ReleaseStrategy>, StrategyError> {
        let factory = self
            .by_kind
            .get(&spec.kind)
            .ok_or_else(|| StrategyError::UnknownKind {
                kind: spec.kind.clone(),
                registered: self.kinds().join(", "),
            })?;
        factory(&spec.config())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::CanaryStep;

    #[test]
    fn builtins_round_trip_in_the_kind_config_shape() {
        let spec: StrategySpec = Canary::new(vec![CanaryStep::SetWeight(10)]).into();
        assert_eq!(spec.kind, "canary");
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "canary");
        let back: StrategySpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        let s = StrategyRegistry::with_builtins().resolve(&back).unwrap();
        assert_eq!((s.name(), s.steps()), ("canary", 1));
        assert_eq!(StrategySpec::default().kind, "rollingUpdate");
    }

    #[test]
    fn bad_shapes_and_configs_are_named() {
        let err = serde_json::from_str::<StrategySpec>(r#"{"canary": {}, "recreate": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one kind"), "{err}");
        let err = serde_json::from_str::<StrategySpec>(r#"{"kind": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a string"), "{err}");
        let spec = StrategySpec::new("canary", serde_json::json!({"steps": [{"wait": 1}]}));
        let err = StrategyRegistry::with_builtins()
            .resolve(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("canary:"), "{err}");
        let err = StrategyRegistry::new()
            .resolve(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown strategy kind `canary`"), "{err}");
    }
}
