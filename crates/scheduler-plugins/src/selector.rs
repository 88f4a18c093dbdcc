//! Label and node selectors (Kubernetes `LabelSelector`, `NodeSelectorTerm`) over interned
//! labels.

use crate::interner::{Labels, Sym};

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater than the single value (node selectors).
    Gt,
    /// The label's value, as an integer, is less than the single value (node selectors).
    Lt,
}

impl Operator {
    /// Parses a Kubernetes operator name.
    pub fn parse(name: &str) -> Option<Operator> {
        Some(match name {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            _ => return None,
        })
    }
}

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: Sym,
    /// The operator.
    pub operator: Operator,
    /// The values (one integer for `Gt`/`Lt`, none for `Exists`/`DoesNotExist`).
    pub values: Vec<Sym>,
}

impl Requirement {
    /// `key` equals `value`.
    pub fn equals(key: &str, value: &str) -> Requirement {
        Requirement {
            key: Sym::new(key),
            operator: Operator::In,
            values: vec![Sym::new(value)],
        }
    }

    /// Whether `labels` satisfy this requirement (interning nothing).
    pub fn matches(&self, labels: &Labels) -> bool {
        match self.operator {
            Operator::In => labels.value_in(self.key, &self.values) == Some(true),
            Operator::NotIn => labels.value_in(self.key, &self.values) != Some(true),
            Operator::Exists => labels.contains_key(self.key),
            Operator::DoesNotExist => !labels.contains_key(self.key),
            Operator::Gt | Operator::Lt => {
                let (Some(value), Some(bound)) = (labels.text(self.key), self.values.first())
                else {
                    return false;
                };
                let (Ok(value), Ok(bound)) = (value.parse::<i64>(), bound.as_str().parse::<i64>())
                else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    value > bound
                } else {
                    value < bound
                }
            }
        }
    }
}

/// A conjunction of requirements (a `LabelSelector`, or one `NodeSelectorTerm`). The empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// A selector of `key=value` pairs (`matchLabels`).
    pub fn match_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector(
            pairs
                .into_iter()
                .map(|(k, v)| Requirement::equals(k, v))
                .collect(),
        )
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// A `key=value` pair every match must carry, for index look-ups.
    pub fn required_pair(&self) -> Option<(Sym, Sym)> {
        self.0
            .iter()
            .find(|r| r.operator == Operator::In && r.values.len() == 1)
            .map(|r| (r.key, r.values[0]))
    }
}

/// A node selector: a disjunction of terms. No terms matches nothing (Kubernetes' rule for
/// `requiredDuringScheduling`); callers model "no constraint" as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSelector(pub Vec<Selector>);

impl NodeSelector {
    /// Whether any term matches `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().any(|t| t.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn operators() {
        let l = labels(&[("zone", "a"), ("cores", "16")]);
        let req = |key: &str, op, values: &[&str]| Requirement {
            key: Sym::new(key),
            operator: op,
            values: values.iter().map(|v| Sym::new(v)).collect(),
        };
        assert!(req("zone", Operator::In, &["a", "b"]).matches(&l));
        assert!(!req("zone", Operator::NotIn, &["a"]).matches(&l));
        assert!(req("gpu", Operator::NotIn, &["x"]).matches(&l));
        assert!(req("zone", Operator::Exists, &[]).matches(&l));
        assert!(req("gpu", Operator::DoesNotExist, &[]).matches(&l));
        assert!(req("cores", Operator::Gt, &["8"]).matches(&l));
        assert!(!req("cores", Operator::Lt, &["8"]).matches(&l));
        assert!(!req("zone", Operator::Gt, &["8"]).matches(&l));
        assert!(Selector::default().matches(&l));
        assert!(!NodeSelector::default().matches(&l));
    }
}
