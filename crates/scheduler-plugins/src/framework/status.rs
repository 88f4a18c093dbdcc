//! Status codes of plugin calls (the framework's `Status`).

use std::fmt;

/// The outcome class of a plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// It worked; go on.
    Success,
    /// An internal error: the cycle for this pod fails (and is retried later).
    Error,
    /// The pod does not fit; preemption might help.
    Unschedulable,
    /// The pod does not fit and preemption cannot help.
    UnschedulableAndUnresolvable,
    /// Permit only: hold the binding until allowed, rejected or timed out.
    Wait,
    /// The plugin has nothing to do for this pod (disables the paired Filter/Score, or lets
    /// the next Bind plugin bind).
    Skip,
}

/// A status: a code, reasons, and the plugin that produced it. Success is two words and
/// allocates nothing (it is returned once per node per plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    detail: Option<Box<Detail>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Detail {
    reasons: Vec<String>,
    plugin: Option<String>,
}

impl Status {
    /// Success.
    pub const fn success() -> Status {
        Status {
            code: Code::Success,
            detail: None,
        }
    }

    /// Skip.
    pub const fn skip() -> Status {
        Status {
            code: Code::Skip,
            detail: None,
        }
    }

    /// A status with `code` and one reason.
    pub fn new(code: Code, reason: impl Into<String>) -> Status {
        Status {
            code,
            detail: Some(Box::new(Detail {
                reasons: vec![reason.into()],
                plugin: None,
            })),
        }
    }

    /// An internal error.
    pub fn error(reason: impl Into<String>) -> Status {
        Status::new(Code::Error, reason)
    }

    /// Unschedulable (resolvable).
    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status::new(Code::Unschedulable, reason)
    }

    /// Unschedulable and unresolvable.
    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status::new(Code::UnschedulableAndUnresolvable, reason)
    }

    /// Wait (Permit).
    pub fn wait(reason: impl Into<String>) -> Status {
        Status::new(Code::Wait, reason)
    }

    /// Records which plugin produced this status (the first plugin recorded wins).
    #[must_use]
    pub fn with_plugin(mut self, plugin: &str) -> Status {
        let detail = self.detail.get_or_insert_with(Box::default);
        if detail.plugin.is_none() {
            detail.plugin = Some(plugin.to_owned());
        }
        self
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The reasons.
    pub fn reasons(&self) -> &[String] {
        self.detail.as_deref().map_or(&[], |d| &d.reasons)
    }

    /// The reasons joined by `, `.
    pub fn message(&self) -> String {
        self.reasons().join(", ")
    }

    /// The producing plugin.
    pub fn plugin(&self) -> Option<&str> {
        self.detail.as_deref().and_then(|d| d.plugin.as_deref())
    }

    /// Whether the code is Success.
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    /// Whether the code is Skip.
    pub fn is_skip(&self) -> bool {
        self.code == Code::Skip
    }

    /// Whether the code is one of the two Unschedulable codes.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }
}

impl Default for Status {
    fn default() -> Status {
        Status::success()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.code)?;
        if let Some(p) = self.plugin() {
            write!(f, " from {p}")?;
        }
        if !self.reasons().is_empty() {
            write!(f, ": {}", self.message())?;
        }
        Ok(())
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_small_and_display_names_the_plugin() {
        assert_eq!(std::mem::size_of::<Status>(), 16);
        let s = Status::unschedulable("Insufficient cpu").with_plugin("NodeResourcesFit");
        assert_eq!(
            s.to_string(),
            "Unschedulable from NodeResourcesFit: Insufficient cpu"
        );
        assert_eq!(Status::success().with_plugin("x").plugin(), Some("x"));
        assert!(Status::success().reasons().is_empty());
    }
}
