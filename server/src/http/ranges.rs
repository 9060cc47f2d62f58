//! The ranges of a request's sampling floats. JSON numbers are read as f64 and checked as
//! sent, then as the f32 the engine uses: a value just above a maximum must not round onto it,
//! and a positive value must not round to 0.

use super::error::ApiError;

/// The range a request's float must lie in.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Lowest value, and whether it is allowed itself.
    min: (f64, bool),
    /// Highest value (infinity: none), and whether it is allowed itself.
    max: (f64, bool),
}

impl Bounds {
    pub const NON_NEGATIVE: Self = Self::new((0.0, true), (f64::INFINITY, false));
    pub const POSITIVE: Self = Self::new((0.0, false), (f64::INFINITY, false));
    pub const PROBABILITY: Self = Self::new((0.0, true), (1.0, true));
    pub const POSITIVE_PROBABILITY: Self = Self::new((0.0, false), (1.0, true));
    pub const PENALTY: Self = Self::new((-2.0, true), (2.0, true));
    pub const LOGIT_BIAS: Self = Self::new((-100.0, true), (100.0, true));

    const fn new(min: (f64, bool), max: (f64, bool)) -> Self {
        Self { min, max }
    }

    fn contains(self, v: f64) -> bool {
        let above = if self.min.1 {
            v >= self.min.0
        } else {
            v > self.min.0
        };
        let below = if self.max.1 {
            v <= self.max.0
        } else {
            v < self.max.0
        };
        v.is_finite() && above && below
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (min, min_in) = self.min;
        let (max, max_in) = self.max;
        match (max.is_finite(), min_in) {
            (false, true) => write!(f, ">= {min}"),
            (false, false) => write!(f, "> {min}"),
            (true, _) => write!(
                f,
                "in {}{min}, {max}{}",
                if min_in { '[' } else { '(' },
                if max_in { ']' } else { ')' }
            ),
        }
    }
}

/// `value` checked against `bounds` as the client sent it (f64) and again as f32 can hold it,
/// so that nothing above a maximum rounds onto it, and a positive value too small for f32 is
/// refused where the range excludes 0. Where the range includes 0, a positive value stays
/// positive (narrowed to f32's smallest normal, never to 0: a `temperature` of 5e-324 is not
/// greedy decoding).
pub fn in_range(value: Option<f64>, name: &str, bounds: Bounds) -> Result<Option<f32>, ApiError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let as_f32 = (v as f32).clamp(-f32::MAX, f32::MAX);
    if bounds.contains(v) && bounds.contains(f64::from(as_f32)) {
        Ok(Some(super::body::narrow(v)))
    } else {
        Err(ApiError::validation(
            format!("`{name}` must be {bounds}, got {v}"),
            name,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next f64 above `v`.
    fn above(v: f64) -> f64 {
        if v == 0.0 {
            f64::from_bits(1)
        } else if v > 0.0 {
            f64::from_bits(v.to_bits() + 1)
        } else {
            f64::from_bits(v.to_bits() - 1)
        }
    }

    /// The next f64 below `v`.
    fn below(v: f64) -> f64 {
        -above(-v)
    }

    #[test]
    fn the_next_float_past_each_bound_is_refused_and_the_bound_itself_follows_its_rule() {
        let cases = [
            ("temperature", Bounds::NON_NEGATIVE),
            ("top_p", Bounds::POSITIVE_PROBABILITY),
            ("typical_p", Bounds::POSITIVE_PROBABILITY),
            ("min_p", Bounds::PROBABILITY),
            ("repetition_penalty", Bounds::POSITIVE),
            ("frequency_penalty", Bounds::PENALTY),
            ("presence_penalty", Bounds::PENALTY),
            ("logit_bias", Bounds::LOGIT_BIAS),
        ];
        for (name, bounds) in cases {
            let (min, min_in) = bounds.min;
            let (max, max_in) = bounds.max;
            let refused = |v: f64| {
                let outcome = in_range(Some(v), name, bounds);
                assert!(outcome.is_err(), "{name} = {v:e} was accepted");
                if let Err(ApiError::Validation { message, param }) = outcome {
                    assert!(message.contains(name), "{message}");
                    assert_eq!(param.as_deref(), Some(name));
                }
            };
            let accepted = |v: f64| -> f32 {
                match in_range(Some(v), name, bounds) {
                    Ok(Some(narrowed)) => narrowed,
                    other => panic!("{name} = {v:e} refused: {:?}", other.err()),
                }
            };
            refused(below(min));
            if min_in {
                assert_eq!(accepted(min), min as f32);
                if min == 0.0 {
                    // The smallest positive f64 stays positive: it does not become 0.
                    assert!(accepted(above(min)) > 0.0, "{name}");
                }
            } else {
                refused(min);
                // The smallest positive f64 narrows to 0 in f32: refused, like 0 itself; the
                // smallest positive f32 is allowed and stays positive.
                refused(above(min));
                assert!(accepted(f64::from(f32::from_bits(1))) > 0.0, "{name}");
            }
            if max.is_finite() {
                refused(above(max));
                if max_in {
                    assert_eq!(accepted(max), max as f32);
                }
                // Just below the maximum narrows onto it at most, never past it.
                assert!(f64::from(accepted(below(max))) <= max, "{name}");
            } else {
                assert_eq!(accepted(1e300), f32::MAX, "{name}");
            }
            assert_eq!(in_range(None, name, bounds).ok(), Some(None));
        }
    }

    #[test]
    fn the_message_states_the_range() {
        assert_eq!(Bounds::PENALTY.to_string(), "in [-2, 2]");
        assert_eq!(Bounds::POSITIVE_PROBABILITY.to_string(), "in (0, 1]");
        assert_eq!(Bounds::NON_NEGATIVE.to_string(), ">= 0");
        assert_eq!(Bounds::POSITIVE.to_string(), "> 0");
    }
}
