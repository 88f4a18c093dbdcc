//! Reading a spec from YAML or JSON text and validating it in one step, so that a bad quantity
//! is listed beside every other error instead of stopping the parser at the first one.

use yaml_serde::Value;

use super::quantity::{Cpu, Memory};
use super::spec::AppSpec;
use super::validate::{FieldError, ValidationErrors, ValidationTarget};

/// Why a spec text could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The text is not YAML/JSON at all.
    #[error("spec text is not YAML or JSON: {0}")]
    Syntax(#[source] yaml_serde::Error),
    /// The text is YAML but not of the spec's shape (a wrong type, an unknown field).
    #[error("spec field `{path}` does not parse: {source}")]
    Shape {
        /// Path of the offending field (`containers[0].readinessProbe`).
        path: String,
        /// What the parser said.
        #[source]
        source: yaml_serde::Error,
    },
    /// The text parsed but broke rules; every broken rule is listed, quantities included.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl AppSpec {
    /// Reads a spec from YAML (JSON is YAML too) and validates it for `target`.
    ///
    /// Unlike [`AppSpec::from_yaml`], a malformed resource quantity (`cpu: 5x`) does not stop
    /// the reading: it is reported with its field path together with every validation error.
    ///
    /// ```
    /// use rorqual_core::model::{AppSpec, LoadError, ValidationTarget};
    ///
    /// let yaml = "name: web\ncontainers:\n- name: app\n  resources: {cpu: 5x}\n";
    /// let Err(LoadError::Invalid(errors)) = AppSpec::load(yaml, ValidationTarget::LOCAL) else {
    ///     panic!("expected validation errors");
    /// };
    /// assert_eq!(errors.errors.len(), 2); // the quantity and the missing command
    /// ```
    pub fn load(text: &str, target: ValidationTarget) -> Result<AppSpec, LoadError> {
        let mut value: Value = yaml_serde::from_str(text).map_err(LoadError::Syntax)?;
        let quantity_errors = take_bad_quantities(&mut value);
        let spec: AppSpec =
            serde_path_to_error::deserialize(value).map_err(|e| LoadError::Shape {
                path: e.path().to_string(),
                source: e.into_inner(),
            })?;
        let mut errors = match spec.validate(target) {
            Ok(()) => Vec::new(),
            Err(e) => e.errors,
        };
        if errors.is_empty() && quantity_errors.is_empty() {
            return Ok(spec);
        }
        errors.extend(quantity_errors);
        errors.sort_by_key(|e| field_order(&e.path));
        Err(ValidationErrors {
            subject: format!("spec {}/{}", spec.namespace, spec.name),
            errors,
        }
        .into())
    }
}

/// Sort key that orders `containers[10]` after `containers[2]`.
fn field_order(path: &str) -> Vec<(String, u64)> {
    path.split('.')
        .map(|part| match part.split_once('[') {
            Some((name, rest)) => (
                name.to_owned(),
                rest.trim_end_matches(']').parse().unwrap_or(u64::MAX),
            ),
            None => (part.to_owned(), 0),
        })
        .collect()
}

/// Finds every `containers[i].resources.{cpu,memory}` that does not parse, records it, and
/// replaces it with zero so that the rest of the spec can still be read and checked.
fn take_bad_quantities(value: &mut Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(containers) = value.get_mut("containers").and_then(Value::as_sequence_mut) else {
        return errors;
    };
    for (i, container) in containers.iter_mut().enumerate() {
        let Some(resources) = container
            .get_mut("resources")
            .and_then(Value::as_mapping_mut)
        else {
            continue;
        };
        for (key, parse) in [
            ("cpu", check::<Cpu> as fn(&str) -> Option<String>),
            ("memory", check::<Memory>),
        ] {
            let Some(field) = resources.get_mut(key) else {
                continue;
            };
            let problem = match &*field {
                Value::String(s) => parse(s),
                Value::Number(n) => parse(&n.to_string()),
                Value::Null => None,
                other => Some(format!(
                    "must be a quantity (a string such as `500m` or `2Gi`, or a number), got {}",
                    yaml_kind(other)
                )),
            };
            if let Some(reason) = problem {
                errors.push(FieldError {
                    path: format!("containers[{i}].resources.{key}"),
                    message: reason,
                });
                *field = Value::Number(0.into());
            }
        }
    }
    errors
}

/// The YAML kind of a value, as a user would name it.
fn yaml_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn check<T: std::str::FromStr>(text: &str) -> Option<String>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>().err().map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_quantities_are_listed_with_every_other_error() {
        let yaml = "\
name: web
containers:
- name: app
  command: [/bin/demo]
  ports: [{name: http, number: 0}]
  resources: {cpu: 5x, memory: 2Gi}
- name: app
  resources: {memory: 12Qi}
";
        let Err(LoadError::Invalid(err)) = AppSpec::load(yaml, ValidationTarget::LOCAL) else {
            panic!("expected validation errors");
        };
        let text = err.to_string();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "containers[0].ports[0].number",
                "containers[0].resources.cpu",
                "containers[1].command",
                "containers[1].name",
                "containers[1].resources.memory",
            ],
            "{text}"
        );
        assert!(
            text.contains("containers[0].resources.cpu: invalid quantity `5x`"),
            "{text}"
        );
        assert!(text.contains("12Qi"), "{text}");

        let yaml = "name: web\ncontainers:\n- name: app\n  command: [/bin/demo]\n  resources: {cpu: true}\n";
        let err = AppSpec::load(yaml, ValidationTarget::LOCAL)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("containers[0].resources.cpu: must be a quantity")
                && err.contains("got a boolean"),
            "{err}"
        );
    }

    #[test]
    fn a_valid_spec_loads_with_its_quantities() {
        let yaml = "name: web\ncontainers:\n- name: app\n  command: [/bin/demo]\n  resources: {cpu: 500m, memory: 512Mi}\n";
        let spec = AppSpec::load(yaml, ValidationTarget::LOCAL).unwrap();
        assert_eq!(spec.containers[0].resources.cpu, Cpu(500));
        assert_eq!(spec.containers[0].resources.memory, Memory(512 << 20));
    }

    #[test]
    fn wrong_shapes_are_syntax_errors() {
        let err = AppSpec::load("name: web\ncontainers: 3\n", ValidationTarget::LOCAL).unwrap_err();
        assert!(matches!(err, LoadError::Shape { .. }), "{err}");
        assert!(matches!(
            AppSpec::load("name: [", ValidationTarget::LOCAL),
            Err(LoadError::Syntax(_))
        ));
        assert!(err.to_string().contains("containers"), "{err}");
        let err = AppSpec::load(
            "name: web\ncontainers: []\nreplcas: 2\n",
            ValidationTarget::LOCAL,
        )
        .unwrap_err();
        assert!(err.to_string().contains("replcas"), "{err}");
    }

    #[test]
    fn specs_with_every_probe_kind_round_trip_through_yaml_and_json() {
        use crate::model::{ContainerSpec, Probe, ProbeAction, Resources, WorkloadKind};
        let spec = AppSpec::new(
            "game",
            vec![
                ContainerSpec::new("app", ["/bin/demo", "--serve"])
                    .env("MODE", "ranked")
                    .port("http", 8080)
                    .port("game", 7777)
                    .resources(Resources::new(1500, 2 << 30))
                    .readiness(Probe::http("/healthz", "http").period(0.5))
                    .liveness(Probe::tcp(7777).failure_threshold(5)),
                ContainerSpec::new("sidecar", ["/bin/agent"]).liveness(Probe::new(
                    ProbeAction::Exec {
                        command: vec!["/bin/true".into()],
                    },
                )),
            ],
        )
        .kind(WorkloadKind::Stateful)
        .replicas(4);
        let yaml = yaml_serde::to_string(&spec).unwrap();
        assert_eq!(
            AppSpec::load(&yaml, ValidationTarget::LOCAL).unwrap(),
            spec,
            "{yaml}"
        );
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            AppSpec::load(&json, ValidationTarget::LOCAL).unwrap(),
            spec,
            "{json}"
        );
        // Hand-written YAML in the documented shape reads the same probe.
        let yaml = "\
name: web
containers:
- name: app
  command: [/bin/demo]
  ports: [{name: http, number: 8080}]
  readinessProbe: {http: {path: /healthz, port: http}, periodSeconds: 2}
";
        let spec = AppSpec::load(yaml, ValidationTarget::LOCAL).unwrap();
        let probe = spec.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(probe.period_seconds, 2.0);
        assert_eq!(probe.failure_threshold, 3);
        // An unknown probe field is refused, not ignored.
        let typo = yaml.replace("periodSeconds", "periodSecnds");
        let err = AppSpec::load(&typo, ValidationTarget::LOCAL).unwrap_err();
        assert!(err.to_string().contains("periodSecnds"), "{err}");
    }

    #[test]
    fn the_json_schema_describes_the_spec() {
        let schema = serde_json::to_value(AppSpec::json_schema()).unwrap();
        assert_eq!(schema["title"], "AppSpec");
        let props = &schema["properties"];
        for key in ["name", "namespace", "replicas", "containers"] {
            assert!(props.get(key).is_some(), "schema lacks `{key}`: {schema}");
        }
        assert!(
            schema.to_string().contains("Kubernetes quantity"),
            "quantities are described: {schema}"
        );
    }

    #[test]
    fn path_order_is_numeric() {
        let mut paths = vec!["containers[10].name", "containers[2].name", "name"];
        paths.sort_by_key(|p| field_order(p));
        assert_eq!(paths, ["containers[2].name", "containers[10].name", "name"]);
    }
}
