//! Validated numbers: one small set of rules for numeric configuration fields, shared by the
//! command line and the library configurations.
//!
//! Each rule takes the field's name as the user knows it (a preset key such as `extract.scale`,
//! or a flag) and returns a [`CheckError`] that names it, says what was expected and what was
//! found:
//!
//! ```
//! use lt_core::check;
//! let err = check::non_negative("extract.scale", f64::NAN).unwrap_err();
//! assert_eq!(err.to_string(), "extract.scale must be a finite number >= 0, got NaN");
//! assert!(check::probability("retrain.dropout", 0.25).is_ok());
//! assert!(check::in_range("train.momentum", 1.0, 0.0..1.0).is_err());
//! ```
//!
//! Every float rule refuses NaN and the infinities (a comparison with NaN is always false, so an
//! unchecked `x < 0.0` test lets NaN through). Integer rules take `u64` or `i64`; a `usize`
//! converts with `as u64`.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

/// A numeric field outside its rule: names the field, what it must be and the value found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {expected}, got {found}")]
pub struct CheckError {
    /// The field, as the user names it (`extract.scale`, `--lambda`).
    pub field: String,
    /// What the rule requires, in words (`a finite number >= 0`).
    pub expected: String,
    /// The value found, as printed.
    pub found: String,
}

impl CheckError {
    /// An error for a rule of the caller's own (e.g. one relating two fields).
    pub fn new(field: impl Into<String>, expected: impl Into<String>, found: impl Display) -> Self {
        Self { field: field.into(), expected: expected.into(), found: found.to_string() }
    }
}

/// Result alias of the rules.
pub type Result<T = (), E = CheckError> = std::result::Result<T, E>;

fn rule(ok: bool, field: &str, expected: impl FnOnce() -> String, found: impl Display) -> Result {
    if ok {
        Ok(())
    } else {
        Err(CheckError::new(field, expected(), found))
    }
}

/// `value` is finite (not NaN, not infinite).
pub fn finite(field: &str, value: f64) -> Result {
    rule(value.is_finite(), field, || "a finite number".into(), value)
}

/// `value` is finite and `> 0`.
pub fn positive(field: &str, value: f64) -> Result {
    rule(value.is_finite() && value > 0.0, field, || "a finite number > 0".into(), value)
}

/// `value` is finite and `>= 0`.
pub fn non_negative(field: &str, value: f64) -> Result {
    rule(value.is_finite() && value >= 0.0, field, || "a finite number >= 0".into(), value)
}

/// `value` is a probability: finite and in `[0, 1]`.
pub fn probability(field: &str, value: f64) -> Result {
    rule((0.0..=1.0).contains(&value), field, || "a probability in [0, 1]".into(), value)
}

/// `value` is finite and inside `range` (`0.0..1.0`, `0.0..=1.0`, `1e-3..`, or a pair of
/// [`Bound`]s such as `(Bound::Excluded(0.0), Bound::Included(lr))`).
pub fn in_range(field: &str, value: f64, range: impl RangeBounds<f64>) -> Result {
    let ok = value.is_finite() && range.contains(&value);
    rule(ok, field, || format!("a finite number in {}", interval(&range)), value)
}

/// `value` is a non-zero count (`>= 1`).
pub fn non_zero(field: &str, value: u64) -> Result {
    rule(value != 0, field, || "an integer >= 1".into(), value)
}

/// The integer `value` is inside `range` (`1..=64`, `0..n`, `2..`).
pub fn int_in_range(field: &str, value: i64, range: impl RangeBounds<i64>) -> Result {
    rule(range.contains(&value), field, || format!("an integer in {}", interval(&range)), value)
}

/// `values` is a non-empty list whose every element passes `each` (a grid of candidate values):
/// `check::each("select.tau_grid", &grid, check::non_negative)`.
pub fn each<T: Copy>(field: &str, values: &[T], each: impl Fn(&str, T) -> Result) -> Result {
    rule(!values.is_empty(), field, || "a non-empty list".into(), "[]")?;
    values.iter().try_for_each(|&v| each(field, v))
}

/// A range in interval notation: `[0, 1)`, `(0, 0.5]`, `[1, inf)`.
fn interval<T: Display>(range: &impl RangeBounds<T>) -> String {
    let start = match range.start_bound() {
        Bound::Included(a) => format!("[{a}"),
        Bound::Excluded(a) => format!("({a}"),
        Bound::Unbounded => "(-inf".into(),
    };
    let end = match range.end_bound() {
        Bound::Included(b) => format!("{b}]"),
        Bound::Excluded(b) => format!("{b})"),
        Bound::Unbounded => "inf)".into(),
    };
    format!("{start}, {end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD_FLOATS: [f64; 3] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];

    fn message(r: Result) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn each_refuses_empty_lists_and_any_bad_element() {
        each("g", &[0.0, 1.5], non_negative).unwrap();
        assert_eq!(
            message(each("s.grid", &[] as &[f64], non_negative)),
            "s.grid must be a non-empty list, got []"
        );
        assert_eq!(
            message(each("s.grid", &[0.5, f64::NAN], non_negative)),
            "s.grid must be a finite number >= 0, got NaN"
        );
    }

    #[test]
    fn finite_refuses_nan_and_infinities_only() {
        for v in [0.0, -1e300, 1e300, f64::MIN_POSITIVE] {
            finite("x", v).unwrap();
        }
        assert_eq!(message(finite("a.b", f64::NAN)), "a.b must be a finite number, got NaN");
        assert_eq!(message(finite("a.b", f64::INFINITY)), "a.b must be a finite number, got inf");
        assert_eq!(message(finite("a.b", f64::NEG_INFINITY)), "a.b must be a finite number, got -inf");
    }

    #[test]
    fn positive_refuses_zero_negatives_and_non_finite() {
        positive("lr", 1e-9).unwrap();
        for v in [0.0, -0.0, -1.0].into_iter().chain(BAD_FLOATS) {
            assert!(message(positive("train.lr", v)).starts_with("train.lr must be a finite number > 0, got"));
        }
    }

    #[test]
    fn non_negative_accepts_zero_and_refuses_negatives_and_non_finite() {
        non_negative("wd", 0.0).unwrap();
        non_negative("wd", 5e-4).unwrap();
        assert_eq!(message(non_negative("wd", -1.0)), "wd must be a finite number >= 0, got -1");
        assert_eq!(
            message(non_negative("extract.scale", f64::NAN)),
            "extract.scale must be a finite number >= 0, got NaN"
        );
        assert!(non_negative("wd", f64::INFINITY).is_err());
    }

    #[test]
    fn probability_is_the_closed_unit_interval() {
        for v in [0.0, 0.5, 1.0] {
            probability("p", v).unwrap();
        }
        for v in [-1e-12, 1.0 + 1e-12].into_iter().chain(BAD_FLOATS) {
            assert!(message(probability("p", v)).starts_with("p must be a probability in [0, 1], got"));
        }
    }

    #[test]
    fn in_range_honours_each_kind_of_bound_and_says_which() {
        in_range("m", 0.0, 0.0..1.0).unwrap();
        assert_eq!(message(in_range("m", 1.0, 0.0..1.0)), "m must be a finite number in [0, 1), got 1");
        in_range("m", 1.0, 0.0..=1.0).unwrap();
        let lr = 0.1;
        let swa = (Bound::Excluded(0.0), Bound::Included(lr));
        in_range("swa.lr", 0.1, swa).unwrap();
        assert_eq!(
            message(in_range("swa.lr", 0.0, swa)),
            "swa.lr must be a finite number in (0, 0.1], got 0"
        );
        in_range("t", 1e300, 2.0..).unwrap();
        assert_eq!(message(in_range("t", 1.0, 2.0..)), "t must be a finite number in [2, inf), got 1");
        assert_eq!(message(in_range("t", 3.0, ..=2.0)), "t must be a finite number in (-inf, 2], got 3");
        // An unbounded range still refuses what is not finite.
        for v in BAD_FLOATS {
            assert!(in_range("t", v, ..).is_err());
        }
    }

    #[test]
    fn non_zero_refuses_zero_only() {
        non_zero("epochs", 1).unwrap();
        non_zero("epochs", u64::MAX).unwrap();
        assert_eq!(message(non_zero("train.epochs", 0)), "train.epochs must be an integer >= 1, got 0");
    }

    #[test]
    fn int_in_range_honours_its_bounds() {
        int_in_range("bins", 1, 1..=64).unwrap();
        int_in_range("bins", 64, 1..=64).unwrap();
        assert_eq!(message(int_in_range("bins", 0, 1..=64)), "bins must be an integer in [1, 64], got 0");
        assert_eq!(message(int_in_range("k", 5, 0..5)), "k must be an integer in [0, 5), got 5");
        assert_eq!(message(int_in_range("k", -1, 0..)), "k must be an integer in [0, inf), got -1");
    }

    #[test]
    fn a_custom_rule_reads_like_the_others() {
        let e = CheckError::new("train.warmup_epochs", "shorter than train.epochs (3)", 5);
        assert_eq!(e.to_string(), "train.warmup_epochs must be shorter than train.epochs (3), got 5");
    }
}
