//! The sampling decision for traces that start here.

use core::fmt;

use super::random::new_trace_id;
use super::traceparent::{FLAG_RANDOM, FLAG_SAMPLED};
use crate::TraceContext;

/// Whether a trace that starts here is sampled (the `sampled` bit of the trace flags).
///
/// Only new traces are decided: a request with a valid `traceparent` keeps its caller's
/// decision, which is passed on to every outgoing call. Configured as
/// `propagation.sampler` ([`PropagationConfig`](crate::config::PropagationConfig)).
///
/// [`Ratio`](Sampler::Ratio) decides from the trace id alone, as OpenTelemetry's
/// `TraceIdRatioBased` sampler does (the id's low 64 bits, shifted right by one, against
/// `ratio × 2⁶³`), so every service with the same ratio decides the same way for a trace.
///
/// ```
/// use ctxpool::propagation::{Sampler, FLAG_RANDOM, FLAG_SAMPLED};
///
/// let tc = Sampler::Always.new_trace();
/// assert_eq!(tc.flags, FLAG_SAMPLED | FLAG_RANDOM); // random id: W3C Level 2 random flag
/// assert_eq!(Sampler::Never.new_trace().flags, FLAG_RANDOM);
///
/// let half = Sampler::Ratio(0.5);
/// let sampled = (0..10_000).filter(|_| half.new_trace().sampled()).count();
/// assert!((4_000..6_000).contains(&sampled));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Sampler {
    /// Every new trace is sampled (the default).
    #[default]
    Always,
    /// No new trace is sampled.
    Never,
    /// This fraction of new traces is sampled, from 0 to 1.
    Ratio(f64),
}

impl Sampler {
    /// Whether the trace with id `trace_id` is sampled.
    #[inline]
    pub fn sample(self, trace_id: u128) -> bool {
        match self {
            Sampler::Always => true,
            Sampler::Never => false,
            Sampler::Ratio(r) => {
                // `as` saturates: a ratio of 1 (or more) maps to 2⁶³, above every shifted id.
                let bound = (r.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
                ((trace_id as u64) >> 1) < bound
            }
        }
    }

    /// A new trace: a random trace id, with the W3C Level 2 random flag (its id is random)
    /// and the sampled flag as this sampler decides. The span id is a new random one too.
    #[inline]
    pub fn new_trace(self) -> TraceContext {
        let trace_id = new_trace_id();
        TraceContext {
            trace_id,
            span_id: super::random::new_span_id(),
            flags: FLAG_RANDOM
                | if self.sample(trace_id) {
                    FLAG_SAMPLED
                } else {
                    0
                },
        }
    }

    /// Whether this sampler is valid: a ratio must be a number from 0 to 1.
    pub fn is_valid(self) -> bool {
        match self {
            Sampler::Ratio(r) => r.is_finite() && (0.0..=1.0).contains(&r),
            _ => true,
        }
    }
}

impl fmt::Display for Sampler {
    /// `always`, `never`, or the ratio.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::Always => f.write_str("always"),
            Sampler::Never => f.write_str("never"),
            Sampler::Ratio(r) => write!(f, "{r:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_bounds() {
        for id in [0u128, 1, u128::MAX, u64::MAX as u128, 1 << 64] {
            assert!(Sampler::Ratio(1.0).sample(id));
            assert!(!Sampler::Ratio(0.0).sample(id));
            assert!(Sampler::Always.sample(id));
            assert!(!Sampler::Never.sample(id));
        }
        // The low 64 bits decide, as in OpenTelemetry's TraceIdRatioBased.
        assert!(Sampler::Ratio(0.5).sample(0xffff_ffff_ffff_ffff_0000_0000_0000_0000));
        assert!(!Sampler::Ratio(0.5).sample(0x0000_0000_0000_0000_ffff_ffff_ffff_ffff));
        assert!(Sampler::Ratio(0.5).sample(0x7fff_ffff_ffff_fffe));
        assert!(!Sampler::Ratio(0.5).sample(0x8000_0000_0000_0000));
    }

    #[test]
    fn validity_and_text() {
        assert!(Sampler::Ratio(0.25).is_valid());
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(!Sampler::Ratio(bad).is_valid(), "{bad}");
        }
        assert_eq!(Sampler::Always.to_string(), "always");
        assert_eq!(Sampler::Never.to_string(), "never");
        assert_eq!(Sampler::Ratio(0.25).to_string(), "0.25");
    }

    #[test]
    fn new_traces_carry_the_random_flag() {
        for s in [Sampler::Always, Sampler::Never, Sampler::Ratio(0.3)] {
            for _ in 0..100 {
                let tc = s.new_trace();
                assert_ne!(tc.flags & FLAG_RANDOM, 0);
                assert_eq!(tc.flags & FLAG_SAMPLED != 0, s.sample(tc.trace_id));
                assert_ne!(tc.trace_id, 0);
                assert_ne!(tc.span_id, 0);
            }
        }
    }
}
