//! Validation of specs: every error is collected, each naming its field path.

use std::collections::BTreeSet;
use std::fmt;

use super::spec::{AppSpec, PortRef, Probe, ProbeAction};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `containers[0].ports[1].number`.
    pub path: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// What was validated (`spec default/web`).
    pub subject: String,
    /// The problems, in field order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} is invalid ({n} error{}):",
            self.subject,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// What the target engine needs from a spec beyond the generic rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValidationTarget {
    /// Every container needs a `command` (the local engine runs processes).
    pub requires_command: bool,
    /// Every container needs an `image` (cluster engines run images).
    pub requires_image: bool,
}

impl ValidationTarget {
    /// What the local engine needs: a command per container.
    pub const LOCAL: ValidationTarget = ValidationTarget {
        requires_command: true,
        requires_image: false,
    };
    /// What cluster engines need: an image per container.
    pub const CLUSTER: ValidationTarget = ValidationTarget {
        requires_command: false,
        requires_image: true,
    };
}

/// Collects errors under a path prefix.
#[derive(Debug, Default)]
pub(super) struct Collector {
    errors: Vec<FieldError>,
}

impl Collector {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Whether `s` is a DNS-1123 label: 1–63 of `a-z0-9-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl AppSpec {
    /// Checks the spec for `target`, collecting every error.
    pub fn validate(&self, target: ValidationTarget) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        if !is_dns_label(&self.name) {
            c.push(
                "name",
                format!(
                    "must be a DNS label (a-z, 0-9, '-', at most 63), got {:?}",
                    self.name
                ),
            );
        } else if self.name.len() > 50 {
            c.push(
                "name",
                format!(
                    "must be at most 50 characters to leave room for instance suffixes, got {}",
                    self.name.len()
                ),
            );
        }
        if !is_dns_label(&self.namespace) {
            c.push(
                "namespace",
                format!("must be a DNS label, got {:?}", self.namespace),
            );
        }
        if self.containers.is_empty() {
            c.push("containers", "at least one container is required");
        }
        let mut container_names = BTreeSet::new();
        let mut port_names = BTreeSet::new();
        let mut port_numbers = BTreeSet::new();
        for (i, container) in self.containers.iter().enumerate() {
            let at = format!("containers[{i}]");
            if !is_dns_label(&container.name) {
                c.push(
                    format!("{at}.name"),
                    format!("must be a DNS label, got {:?}", container.name),
                );
            } else if !container_names.insert(container.name.as_str()) {
                c.push(
                    format!("{at}.name"),
                    format!("duplicate container name {:?}", container.name),
                );
            }
            if target.requires_command && container.command.is_empty() {
                c.push(
                    format!("{at}.command"),
                    "required by the local engine (it runs processes)",
                );
            }
            if target.requires_image && container.image.as_deref().unwrap_or("").is_empty() {
                c.push(format!("{at}.image"), "required by cluster engines");
            }
            for key in container.env.keys() {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    c.push(
                        format!("{at}.env"),
                        format!("invalid variable name {key:?}"),
                    );
                }
            }
            for (j, port) in container.ports.iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                if port.number == 0 {
                    c.push(format!("{pat}.number"), "must be 1-65535, got 0");
                } else if !port_numbers.insert((port.number, port.protocol)) {
                    c.push(
                        format!("{pat}.number"),
                        format!("duplicate port {}", port.number),
                    );
                }
                if !is_dns_label(&port.name) || port.name.len() > 15 {
                    c.push(
                        format!("{pat}.name"),
                        format!(
                            "must be a DNS label of at most 15 characters, got {:?}",
                            port.name
                        ),
                    );
                } else if !port_names.insert(port.name.as_str()) {
                    c.push(
                        format!("{pat}.name"),
                        format!("duplicate port name {:?}", port.name),
                    );
                }
            }
        }
        for (i, container) in self.containers.iter().enumerate() {
            let at = format!("containers[{i}]");
            for (field, probe) in [
                ("readinessProbe", &container.readiness_probe),
                ("livenessProbe", &container.liveness_probe),
            ] {
                if let Some(probe) = probe {
                    self.validate_probe(&mut c, &format!("{at}.{field}"), probe);
                }
            }
        }
        for (i, file) in self.config_files.iter().enumerate() {
            let p = std::path::Path::new(&file.path);
            let escapes = p
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if file.path.is_empty() || escapes {
                c.push(
                    format!("configFiles[{i}].path"),
                    format!("must be a relative path without `..`, got {:?}", file.path),
                );
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            if t.key.is_empty() && t.operator == super::node::TolerationOperator::Equal {
                c.push(
                    format!("tolerations[{i}].key"),
                    "an empty key needs operator Exists",
                );
            }
        }
        self.validate_scheduling(&mut c);
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                subject: format!("spec {}", self.key()),
                errors: c.errors,
            })
        }
    }

    fn validate_probe(&self, c: &mut Collector, at: &str, probe: &Probe) {
        let port = match &probe.action {
            ProbeAction::Http { port, path } => {
                if !path.starts_with('/') {
                    c.push(
                        format!("{at}.path"),
                        format!("must start with '/', got {path:?}"),
                    );
                }
                Some(port)
            }
            ProbeAction::Tcp { port } => Some(port),
            ProbeAction::Exec { command } => {
                if command.is_empty() {
                    c.push(format!("{at}.command"), "must not be empty");
                }
                None
            }
        };
        if let Some(port) = port {
            let declared = self.ports().any(|p| match port {
                PortRef::Number(n) => p.number == *n,
                PortRef::Name(name) => &p.name == name,
            });
            if !declared {
                c.push(
                    format!("{at}.port"),
                    format!("refers to undeclared port {port}"),
                );
            }
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(probe.initial_delay_seconds.is_finite() && probe.initial_delay_seconds >= 0.0) {
            c.push(
                format!("{at}.initialDelaySeconds"),
                format!("must be >= 0, got {}", probe.initial_delay_seconds),
            );
        }
        if !positive(probe.period_seconds) {
            c.push(
                format!("{at}.periodSeconds"),
                format!("must be > 0, got {}", probe.period_seconds),
            );
        }
        if !positive(probe.timeout_seconds) {
            c.push(
                format!("{at}.timeoutSeconds"),
                format!("must be > 0, got {}", probe.timeout_seconds),
            );
        }
        if probe.success_threshold == 0 {
            c.push(format!("{at}.successThreshold"), "must be >= 1, got 0");
        }
        if probe.failure_threshold == 0 {
            c.push(format!("{at}.failureThreshold"), "must be >= 1, got 0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppSpec, ContainerSpec, Probe};

    fn valid() -> AppSpec {
        AppSpec::new(
            "web",
            vec![
                ContainerSpec::new("app", ["/bin/demo"])
                    .port("http", 8080)
                    .readiness(Probe::http("/healthz", "http")),
            ],
        )
    }

    #[test]
    fn a_valid_spec_passes() {
        valid().validate(ValidationTarget::LOCAL).unwrap();
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let mut spec = valid();
        spec.containers[0].command.clear();
        spec.containers[0].ports.push(crate::model::PortSpec {
            name: "admin".into(),
            number: 0,
            protocol: Default::default(),
        });
        spec.containers[0].liveness_probe = Some(Probe::tcp(9999));
        spec.containers.push(ContainerSpec::new("app", ["/bin/x"]));
        let err = spec.validate(ValidationTarget::LOCAL).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.errors.len(), 4, "{text}");
        assert!(
            text.contains("containers[0].command: required by the local engine"),
            "{text}"
        );
        assert!(
            text.contains("containers[0].ports[1].number: must be 1-65535, got 0"),
            "{text}"
        );
        assert!(
            text.contains("containers[0].livenessProbe.port: refers to undeclared port 9999"),
            "{text}"
        );
        assert!(
            text.contains("containers[1].name: duplicate container name \"app\""),
            "{text}"
        );
        assert!(
            text.starts_with("spec default/web is invalid (4 errors):"),
            "{text}"
        );
    }

    #[test]
    fn bad_quantity_in_yaml_names_the_input() {
        let yaml =
            "name: web\ncontainers:\n- name: app\n  command: [/bin/true]\n  resources: {cpu: 5x}\n";
        let err = AppSpec::from_yaml(yaml).unwrap_err().to_string();
        assert!(err.contains("invalid quantity `5x`"), "{err}");
    }

    #[test]
    fn cluster_target_requires_images() {
        let err = valid().validate(ValidationTarget::CLUSTER).unwrap_err();
        assert_eq!(err.errors[0].path, "containers[0].image");
    }

    #[test]
    fn names_and_paths_are_checked() {
        let mut spec = valid();
        spec.name = "Web_1".into();
        spec.config_files.push(crate::model::ConfigFile {
            path: "../etc/passwd".into(),
            content: String::new(),
        });
        let err = spec.validate(ValidationTarget::LOCAL).unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["name", "configFiles[0].path"]);
    }
}
