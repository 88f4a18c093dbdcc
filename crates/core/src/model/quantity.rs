//! Kubernetes resource quantities: CPU in millicores and memory in bytes.
//!
//! Accepted forms follow Kubernetes: a decimal number with an optional suffix. CPU takes `m`
//! (millicores) or no suffix (cores, fractions allowed: `1.5` is 1500m). Memory takes the binary
//! suffixes `Ki Mi Gi Ti Pi Ei`, the decimal suffixes `k M G T P E`, `m` (thousandths of a byte,
//! rounded up) or a plain number of bytes; an exponent (`1e3`) is accepted too.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity `{input}`: {reason}")]
pub struct QuantityError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn err(input: &str, reason: &'static str) -> QuantityError {
    QuantityError {
        input: input.to_owned(),
        reason,
    }
}

/// Splits `"1.5Gi"` into the numeric part and the suffix, and parses the number as an exact
/// decimal `(mantissa, scale)` meaning `mantissa / 10^scale`.
fn split_decimal(input: &str) -> Result<(u128, u32, &str), QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "empty"));
    }
    if s.starts_with('-') {
        return Err(err(input, "must not be negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." {
        return Err(err(input, "missing a number"));
    }
    let mut mantissa: u128 = 0;
    let mut scale: u32 = 0;
    let mut seen_dot = false;
    for c in num.chars() {
        if c == '.' {
            if seen_dot {
                return Err(err(input, "more than one decimal point"));
            }
            seen_dot = true;
            continue;
        }
        let digit = u128::from(c as u8 - b'0');
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(digit))
            .ok_or_else(|| err(input, "too large"))?;
        if seen_dot {
            scale += 1;
        }
        if scale > 18 {
            return Err(err(input, "too many decimal places"));
        }
    }
    Ok((mantissa, scale, suffix))
}

/// Multiplies `mantissa / 10^scale` by `num / den` and rounds up to a whole number.
fn scale_up(
    input: &str,
    mantissa: u128,
    scale: u32,
    num: u128,
    den: u128,
) -> Result<u64, QuantityError> {
    let den = den
        .checked_mul(10u128.pow(scale))
        .ok_or_else(|| err(input, "too large"))?;
    let product = mantissa
        .checked_mul(num)
        .ok_or_else(|| err(input, "too large"))?;
    let value = product.div_ceil(den);
    u64::try_from(value).map_err(|_| err(input, "too large"))
}

/// Parses an exponent suffix such as `e3` or `E-2` into a (numerator, denominator) factor.
fn exponent_factor(input: &str, suffix: &str) -> Result<Option<(u128, u128)>, QuantityError> {
    let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
        return Ok(None);
    };
    let exp: i32 = exp.parse().map_err(|_| err(input, "unknown suffix"))?;
    if exp.unsigned_abs() > 18 {
        return Err(err(input, "exponent out of range"));
    }
    let factor = 10u128.pow(exp.unsigned_abs());
    Ok(Some(if exp >= 0 { (factor, 1) } else { (1, factor) }))
}

/// CPU in millicores (`500m` = half a core, `2` = 2000 millicores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

impl Cpu {
    /// The value in millicores.
    pub fn millis(self) -> u64 {
        self.0
    }
    /// A CPU amount of `cores` whole cores.
    pub fn cores(cores: u64) -> Self {
        Cpu(cores.saturating_mul(1000))
    }
}

impl FromStr for Cpu {
    type Err = QuantityError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (mantissa, scale, suffix) = split_decimal(input)?;
        let (num, den) = match suffix {
            "m" => (1, 1),
            "" => (1000, 1),
            "k" => (1_000_000, 1),
            other => match exponent_factor(input, other)? {
                Some((n, d)) => (1000 * n, d),
                None => return Err(err(input, "unknown CPU suffix (use `m` or none)")),
            },
        };
        scale_up(input, mantissa, scale, num, den).map(Cpu)
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Memory in bytes (`512Mi`, `2Gi`, `1G`, `1500`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

impl Memory {
    /// The value in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// `n` mebibytes.
    pub fn mebibytes(n: u64) -> Self {
        Memory(n.saturating_mul(1 << 20))
    }
    /// `n` gibibytes.
    pub fn gibibytes(n: u64) -> Self {
        Memory(n.saturating_mul(1 << 30))
    }
}

impl FromStr for Memory {
    type Err = QuantityError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (mantissa, scale, suffix) = split_decimal(input)?;
        let (num, den): (u128, u128) = match suffix {
            "" => (1, 1),
            "m" => (1, 1000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            other => match exponent_factor(input, other)? {
                Some(f) => f,
                None => {
                    return Err(err(
                        input,
                        "unknown memory suffix (use Ki, Mi, Gi, k, M, G, …)",
                    ));
                }
            },
        };
        scale_up(input, mantissa, scale, num, den).map(Memory)
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{suffix}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

macro_rules! quantity_serde {
    ($ty:ident, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Int(u64),
                    Float(f64),
                    Str(String),
                }
                let text = match Raw::deserialize(deserializer)? {
                    Raw::Int(n) => n.to_string(),
                    Raw::Float(x) => x.to_string(),
                    Raw::Str(s) => s,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $what,
                    "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}]
                })
            }
        }
    };
}

quantity_serde!(Cpu, "CPU as a Kubernetes quantity: `500m`, `1.5`, `2`");
quantity_serde!(
    Memory,
    "Memory as a Kubernetes quantity: `512Mi`, `2Gi`, `1G`, bytes"
);

/// CPU and memory together: a request, a capacity or what is allocated on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU in millicores.
    #[serde(default)]
    pub cpu: Cpu,
    /// Memory in bytes.
    #[serde(default)]
    pub memory: Memory,
}

impl Resources {
    /// Resources of `cpu` millicores and `memory` bytes.
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu: Cpu(cpu_millis),
            memory: Memory(memory_bytes),
        }
    }
    /// Component-wise sum, saturating.
    #[must_use]
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources::new(
            self.cpu.0.saturating_add(other.cpu.0),
            self.memory.0.saturating_add(other.memory.0),
        )
    }
    /// Component-wise difference, saturating at zero.
    #[must_use]
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources::new(
            self.cpu.0.saturating_sub(other.cpu.0),
            self.memory.0.saturating_sub(other.memory.0),
        )
    }
    /// Whether `self` fits inside `available` in every dimension.
    pub fn fits_in(self, available: Resources) -> bool {
        self.cpu <= available.cpu && self.memory <= available.memory
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}, memory {}", self.cpu, self.memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!("500m".parse::<Cpu>().unwrap(), Cpu(500));
        assert_eq!("1.5".parse::<Cpu>().unwrap(), Cpu(1500));
        assert_eq!("2".parse::<Cpu>().unwrap(), Cpu(2000));
        assert_eq!("0.1".parse::<Cpu>().unwrap(), Cpu(100));
        assert_eq!(
            "0.0001".parse::<Cpu>().unwrap(),
            Cpu(1),
            "rounds up to a millicore"
        );
        assert!("1e3m".parse::<Cpu>().is_err());
        assert_eq!("2e0".parse::<Cpu>().unwrap(), Cpu(2000));
    }

    #[test]
    fn memory_forms() {
        assert_eq!("2Gi".parse::<Memory>().unwrap(), Memory(2 << 30));
        assert_eq!("512Mi".parse::<Memory>().unwrap(), Memory(512 << 20));
        assert_eq!("1.5Gi".parse::<Memory>().unwrap(), Memory(3 << 29));
        assert_eq!("1G".parse::<Memory>().unwrap(), Memory(1_000_000_000));
        assert_eq!("128974848".parse::<Memory>().unwrap(), Memory(128_974_848));
        assert_eq!("129e6".parse::<Memory>().unwrap(), Memory(129_000_000));
        assert_eq!(
            "1500m".parse::<Memory>().unwrap(),
            Memory(2),
            "thousandths round up"
        );
        assert_eq!("1k".parse::<Memory>().unwrap(), Memory(1000));
    }

    #[test]
    fn rejects_bad_quantities_naming_the_input() {
        for bad in [
            "5x",
            "",
            "-1",
            "1..5",
            "Gi",
            "1.5.5Mi",
            "99999999999999999999999Ei",
            "1e99",
        ] {
            let e = bad.parse::<Memory>().unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
        assert!(
            "5x".parse::<Cpu>()
                .unwrap_err()
                .to_string()
                .contains("unknown CPU suffix")
        );
        assert!("1Gi".parse::<Cpu>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["500m", "2", "1500m"] {
            assert_eq!(s.parse::<Cpu>().unwrap().to_string(), s);
        }
        for s in ["2Gi", "512Mi", "1000", "3Ki"] {
            assert_eq!(s.parse::<Memory>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn serde_accepts_numbers_and_strings() {
        let r: Resources = serde_json::from_str(r#"{"cpu": 1.5, "memory": "256Mi"}"#).unwrap();
        assert_eq!(r, Resources::new(1500, 256 << 20));
        let r: Resources = serde_json::from_str(r#"{"cpu": "250m", "memory": 1024}"#).unwrap();
        assert_eq!(r, Resources::new(250, 1024));
        assert!(serde_json::from_str::<Resources>(r#"{"cpu": "5x"}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn memory_binary_suffixes_are_exact(n in 0u64..1_000_000, i in 0usize..4) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)][i];
            let parsed: Memory = format!("{n}{suffix}").parse().unwrap();
            proptest::prop_assert_eq!(parsed.0, n << shift);
        }

        #[test]
        fn cpu_millis_round_trip(n in 0u64..10_000_000) {
            let parsed: Cpu = format!("{n}m").parse().unwrap();
            proptest::prop_assert_eq!(parsed, Cpu(n));
            proptest::prop_assert_eq!(parsed.to_string().parse::<Cpu>().unwrap(), parsed);
        }
    }
}
