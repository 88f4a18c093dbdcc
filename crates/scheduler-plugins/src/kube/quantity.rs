//! Kubernetes resource quantities as the API server accepts them, read into whole units.
//!
//! The grammar is apimachinery's `resource.Quantity`: an optional sign, a decimal number
//! (`1`, `1.5`, `.5`, `1.`), then one suffix: none, a decimal SI suffix (`n u m k M G T P E`),
//! a binary SI suffix (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`, `1E3`; a bare
//! `E` is exa). Any resource may use any suffix (`cpu: 1Ki` is valid, if odd), so CPU,
//! memory and pod counts all go through [`Quantity`].
//!
//! Like apimachinery's `Value` and `MilliValue`, conversions round up to a whole unit. Values
//! are exact for numbers of up to 37 significant digits; longer ones are rounded up at the
//! 37th digit. A value too large for `u64` saturates: a node with more memory than `u64`
//! bytes is no different from one with `u64::MAX` bytes to a scheduler.

/// A parsed, non-negative quantity: `significand × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quantity {
    significand: u128,
    exp10: i64,
    exp2: u32,
}

/// Significands stay below this, so `significand * 10 + 9` always fits in a `u128`.
const SIGNIFICAND_LIMIT: u128 = 10u128.pow(37);

impl Quantity {
    /// Parses `input` (surrounding whitespace allowed, as in a JSON quantity). The error is
    /// what is wrong with it, for a message that also names the field and the value.
    pub(crate) fn parse(input: &str) -> Result<Quantity, &'static str> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty quantity");
        }
        let (negative, s) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        let mut significand: u128 = 0;
        let mut exp10: i64 = 0;
        let mut digits = 0usize;
        let mut seen_dot = false;
        let mut inexact = false;
        for c in number.bytes() {
            if c == b'.' {
                if seen_dot {
                    return Err("more than one decimal point");
                }
                seen_dot = true;
                continue;
            }
            digits += 1;
            let digit = u128::from(c - b'0');
            if significand < SIGNIFICAND_LIMIT {
                significand = significand * 10 + digit;
                if seen_dot {
                    exp10 -= 1;
                }
            } else {
                // Past the precision kept: an integer digit still scales the value; a
                // fractional one only matters for rounding up.
                inexact |= digit != 0;
                if !seen_dot {
                    exp10 += 1;
                }
            }
        }
        if digits == 0 {
            return Err("missing a number");
        }
        let (suffix_exp10, exp2) = suffix_scale(suffix)?;
        if negative && (significand != 0 || inexact) {
            return Err("must not be negative");
        }
        if inexact {
            // Round up at the last digit kept (the documented loss of precision).
            significand += 1;
        }
        Ok(Quantity {
            significand,
            exp10: exp10 + suffix_exp10,
            exp2,
        })
    }

    /// The value in units of `10^-milli_digits` (0: whole units, 3: thousandths), rounded up,
    /// saturating at `u64::MAX`.
    pub(crate) fn ceil_scaled(&self, milli_digits: u32) -> u64 {
        if self.significand == 0 {
            return 0;
        }
        let exp10 = self.exp10 + i64::from(milli_digits);
        let value = if exp10 >= 0 {
            u32::try_from(exp10)
                .ok()
                .and_then(|e| 10u128.checked_pow(e))
                .and_then(|p| self.significand.checked_mul(p))
                .and_then(|v| v.checked_mul(1u128 << self.exp2))
        } else {
            let mut significand = self.significand;
            let mut places = exp10.unsigned_abs();
            // 10^38 is the largest power of ten a u128 holds; dividing first (rounding up)
            // keeps the value an upper bound.
            while places > 38 {
                significand = significand.div_ceil(10);
                places -= 1;
            }
            // `places` ≤ 38 here, so the power fits.
            let divisor = 10u128.pow(places as u32);
            let whole = (significand / divisor).checked_mul(1u128 << self.exp2);
            // The fraction times 2^exp2, by binary long division: `rest` < divisor ≤ 10^38 <
            // 2^127, so doubling it cannot overflow.
            let mut rest = significand % divisor;
            let mut fraction: u128 = 0;
            for _ in 0..self.exp2 {
                rest <<= 1;
                fraction <<= 1;
                if rest >= divisor {
                    rest -= divisor;
                    fraction += 1;
                }
            }
            whole
                .and_then(|w| w.checked_add(fraction))
                .and_then(|v| v.checked_add(u128::from(rest != 0)))
        };
        value.map_or(u64::MAX, |v| u64::try_from(v).unwrap_or(u64::MAX))
    }
}

/// The `(power of ten, power of two)` a suffix stands for.
fn suffix_scale(suffix: &str) -> Result<(i64, u32), &'static str> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let Some(exponent) = other.strip_prefix(['e', 'E']) else {
                return Err(
                    "unknown suffix (use none, n, u, m, k, M, G, T, P, E, Ki … Ei or an exponent such as e3)",
                );
            };
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("malformed exponent (expected e or E, an optional sign and digits)");
            }
            let exp: i64 = exponent.parse().map_err(|_| "exponent out of range")?;
            if exp.unsigned_abs() > 1_000_000 {
                return Err("exponent out of range");
            }
            (exp, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn units(s: &str) -> u64 {
        Quantity::parse(s).unwrap().ceil_scaled(0)
    }

    fn millis(s: &str) -> u64 {
        Quantity::parse(s).unwrap().ceil_scaled(3)
    }

    #[test]
    fn decimal_si_suffixes() {
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("2M"), 2_000_000);
        assert_eq!(units("3G"), 3_000_000_000);
        assert_eq!(units("1T"), 1_000_000_000_000);
        assert_eq!(units("1P"), 10u64.pow(15));
        assert_eq!(units("2E"), 2 * 10u64.pow(18));
        assert_eq!(millis("250m"), 250);
        assert_eq!(units("1500m"), 2, "rounds up like Value()");
        assert_eq!(millis("1500u"), 2, "1.5 millis round up");
        assert_eq!(millis("5n"), 1);
        assert_eq!(units("110"), 110);
    }

    #[test]
    fn binary_si_suffixes() {
        assert_eq!(units("1Ki"), 1024);
        assert_eq!(units("8Gi"), 8 << 30);
        assert_eq!(units("1.5Gi"), 3 << 29);
        assert_eq!(units("1Ti"), 1 << 40);
        assert_eq!(units("1Pi"), 1 << 50);
        assert_eq!(units("1Ei"), 1 << 60);
        assert_eq!(millis("1Ki"), 1_024_000, "any suffix on any resource");
        assert_eq!(units("0.5Ki"), 512);
        assert_eq!(units("0.001Ki"), 2, "1.024 rounds up");
    }

    #[test]
    fn exponents_and_number_forms() {
        assert_eq!(units("1e3"), 1000);
        assert_eq!(units("1E3"), 1000);
        assert_eq!(units("12e+2"), 1200);
        assert_eq!(millis("5e-1"), 500);
        assert_eq!(units("1e-3"), 1);
        assert_eq!(units(".5k"), 500);
        assert_eq!(units("1.k"), 1000);
        assert_eq!(units("+7"), 7);
        assert_eq!(units(" 4 "), 4, "JSON quantities are trimmed");
        assert_eq!(units("0"), 0);
        assert_eq!(units("-0"), 0);
        assert_eq!(units("0.0001"), 1);
    }

    #[test]
    fn huge_values_saturate_and_tiny_ones_round_up() {
        assert_eq!(units("99999999999999999999999Ei"), u64::MAX);
        assert_eq!(units("1e99"), u64::MAX);
        assert_eq!(units("1e-99"), 1);
        assert_eq!(
            units("18446744073709551615"),
            u64::MAX,
            "u64::MAX itself is exact"
        );
        assert_eq!(units("18446744073709551616"), u64::MAX);
        assert_eq!(
            units("1.00000000000000000000000000000000000000000001"),
            2,
            "digits past the precision kept still round up"
        );
        assert_eq!(
            units("123456789012345678901234567890123456789012e-30"),
            123_456_789_013
        );
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        for (bad, why) in [
            ("", "empty"),
            ("Gi", "missing a number"),
            (".", "missing a number"),
            ("1..5", "more than one decimal point"),
            ("5x", "unknown suffix"),
            ("1K", "unknown suffix"),
            ("1kk", "unknown suffix"),
            ("1e", "malformed exponent"),
            ("1e3.5", "malformed exponent"),
            ("1Gi3", "unknown suffix"),
            ("-1", "negative"),
            ("1e99999999999", "exponent out of range"),
        ] {
            let err = Quantity::parse(bad).unwrap_err();
            assert!(err.contains(why), "`{bad}`: {err}");
        }
    }

    proptest! {
        #[test]
        fn whole_numbers_with_suffixes_are_exact(n in 0u64..1_000_000, i in 0usize..6) {
            let (suffix, factor) = [("", 1u64), ("k", 1000), ("M", 1_000_000), ("Ki", 1024), ("Mi", 1 << 20), ("Gi", 1 << 30)][i];
            prop_assert_eq!(units(&format!("{n}{suffix}")), n * factor);
        }

        #[test]
        fn exponent_form_equals_plain_form(n in 0u64..1_000_000, e in 0u32..9) {
            prop_assert_eq!(units(&format!("{n}e{e}")), n * 10u64.pow(e));
        }

        #[test]
        fn decimal_fractions_round_up(whole in 0u64..10_000, frac in 0u64..1000) {
            let q = format!("{whole}.{frac:03}");
            prop_assert_eq!(millis(&q), whole * 1000 + frac);
            prop_assert_eq!(units(&q), whole + u64::from(frac != 0));
        }
    }
}
