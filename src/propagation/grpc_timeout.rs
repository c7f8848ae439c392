//! `grpc-timeout` (gRPC over HTTP/2, PROTOCOL-HTTP2.md, "Requests":
//! `Timeout → "grpc-timeout" TimeoutValue TimeoutUnit`, `TimeoutValue → {positive integer as
//! ASCII string of at most 8 digits}`, `TimeoutUnit → Hour / Minute / Second / Millisecond /
//! Microsecond / Nanosecond`, written `H M S m u n`).

use core::fmt;
use std::time::Duration;

/// The longest `grpc-timeout` value: 8 digits and a unit.
pub const GRPC_TIMEOUT_MAX_LEN: usize = 9;

/// The largest `TimeoutValue`.
const MAX_VALUE: u64 = 99_999_999;

/// Why a `grpc-timeout` value was rejected (the request then has no deadline from its
/// caller; the server's default applies).
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`Empty`](Self::Empty) | `empty` |
/// | [`TooManyDigits`](Self::TooManyDigits) | `too_many_digits` |
/// | [`BadDigit`](Self::BadDigit) | `bad_digit` |
/// | [`BadUnit`](Self::BadUnit) | `bad_unit` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcTimeoutError {
    /// An empty value.
    Empty,
    /// More than 8 digits.
    TooManyDigits,
    /// No digit before the unit, or a byte that is neither a digit nor a unit (a sign or a
    /// space included).
    BadDigit,
    /// No unit after the digits, a unit other than `H M S m u n`, or anything after the unit.
    BadUnit,
}

impl GrpcTimeoutError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooManyDigits => "too_many_digits",
            Self::BadDigit => "bad_digit",
            Self::BadUnit => "bad_unit",
        }
    }
}

impl fmt::Display for GrpcTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid grpc-timeout: {}", self.reason())
    }
}

impl std::error::Error for GrpcTimeoutError {}

/// Nanoseconds per unit, or `None` for a byte that is not a unit.
#[inline]
fn unit_nanos(unit: u8) -> Option<u64> {
    Some(match unit {
        b'n' => 1,
        b'u' => 1_000,
        b'm' => 1_000_000,
        b'S' => 1_000_000_000,
        b'M' => 60 * 1_000_000_000,
        b'H' => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits, then exactly one unit of `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
///
/// Nothing else is accepted: no sign, no whitespace, no 9th digit, nothing after the unit.
/// Zero (`0n`, `0S`, ...) is accepted although the grammar says "positive": it is what an
/// already-expired deadline is sent as (grpc-go and [`format_grpc_timeout`] do). Leading
/// zeros count as digits. The largest value, `99999999H`, is about 11,400 years, well
/// inside `Duration`, so the conversion cannot overflow. At most 10 bytes are looked at.
///
/// ```
/// use std::time::Duration;
/// use ctxpool::propagation::{parse_grpc_timeout, GrpcTimeoutError};
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(b"1H"), Ok(Duration::from_secs(3600)));
/// assert_eq!(parse_grpc_timeout(b"123456789S"), Err(GrpcTimeoutError::TooManyDigits));
/// assert_eq!(parse_grpc_timeout(b"10s"), Err(GrpcTimeoutError::BadUnit));
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, GrpcTimeoutError> {
    use GrpcTimeoutError::*;
    if value.is_empty() {
        return Err(Empty);
    }
    let digits = value
        .iter()
        .take(GRPC_TIMEOUT_MAX_LEN)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == GRPC_TIMEOUT_MAX_LEN {
        return Err(TooManyDigits);
    }
    let Some(&unit) = value.get(digits) else {
        return Err(BadUnit); // digits only
    };
    let Some(nanos) = unit_nanos(unit) else {
        // After a digit, an unknown byte is a bad unit; in first place, a bad digit.
        return Err(if digits == 0 { BadDigit } else { BadUnit });
    };
    if digits == 0 {
        return Err(BadDigit);
    }
    if value.len() > digits + 1 {
        return Err(BadUnit);
    }
    let n = value[..digits]
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    // At most 99,999,999 × 3.6e12 ns ≈ 3.6e20: through u128, then saturating into Duration.
    let total = u128::from(n) * u128::from(nanos);
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Writes `d` as a `grpc-timeout` value into `buf` and returns it.
///
/// The unit is the finest (of `n u m S M H`) whose count fits in 8 digits, and the count is
/// rounded **down**, so the peer is never promised more time than there is: the result parses
/// back to at most `d`, and less by under one of its units. `Duration::ZERO` is `0n`; anything
/// past `99999999H` is written as `99999999H`.
///
/// ```
/// use std::time::Duration;
/// use ctxpool::propagation::{format_grpc_timeout, GRPC_TIMEOUT_MAX_LEN};
///
/// let mut buf = [0u8; GRPC_TIMEOUT_MAX_LEN];
/// assert_eq!(format_grpc_timeout(Duration::from_millis(1500), &mut buf), "1500000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600), &mut buf), "3600000m");
/// assert_eq!(format_grpc_timeout(Duration::ZERO, &mut buf), "0n");
/// ```
pub fn format_grpc_timeout(d: Duration, buf: &mut [u8; GRPC_TIMEOUT_MAX_LEN]) -> &str {
    const UNITS: [(u64, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60 * 1_000_000_000, b'M'),
        (3_600 * 1_000_000_000, b'H'),
    ];
    // The finest unit whose count fits; past 99999999H, 99999999H. Under 2⁶⁴ ns (584 years,
    // every real budget) in u64, whose divisions by constants are multiplications.
    let nanos = d.as_nanos();
    let (count, unit) = match u64::try_from(nanos) {
        Ok(nanos) => UNITS
            .into_iter()
            .map(|(per, u)| (nanos / per, u))
            .find(|&(count, _)| count <= MAX_VALUE),
        Err(_) => UNITS
            .into_iter()
            .map(|(per, u)| (nanos / u128::from(per), u))
            .find(|&(count, _)| count <= u128::from(MAX_VALUE))
            .map(|(count, u)| (count as u64, u)),
    }
    .unwrap_or((MAX_VALUE, b'H'));
    // `count` ≤ 99,999,999: at most 8 digits.
    let mut count = count;
    let mut digits = [0u8; GRPC_TIMEOUT_MAX_LEN - 1];
    let mut n = 0;
    loop {
        digits[digits.len() - 1 - n] = b'0' + (count % 10) as u8;
        n += 1;
        count /= 10;
        if count == 0 {
            break;
        }
    }
    buf[..n].copy_from_slice(&digits[digits.len() - n..]);
    buf[n] = unit;
    let text = &buf[..=n];
    // SAFETY: `text` is `n` bytes `b'0' + (count % 10)` (ASCII digits) and a unit letter from
    // `UNITS`, all written above: ASCII, so UTF-8.
    unsafe { core::str::from_utf8_unchecked(text) }
}

#[cfg(test)]
mod tests {
    use super::GrpcTimeoutError::*;
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Duration, GrpcTimeoutError> {
        parse_grpc_timeout(s.as_bytes())
    }

    fn format(d: Duration) -> String {
        let mut buf = [0u8; GRPC_TIMEOUT_MAX_LEN];
        format_grpc_timeout(d, &mut buf).to_owned()
    }

    #[test]
    fn every_unit() {
        assert_eq!(parse("1n"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("2u"), Ok(Duration::from_micros(2)));
        assert_eq!(parse("3m"), Ok(Duration::from_millis(3)));
        assert_eq!(parse("4S"), Ok(Duration::from_secs(4)));
        assert_eq!(parse("5M"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("6H"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse("0n"), Ok(Duration::ZERO));
        assert_eq!(parse("00000000H"), Ok(Duration::ZERO));
        assert_eq!(parse("007S"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn eight_digits_but_not_nine() {
        assert_eq!(parse("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(
            parse("99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse("12345678m"), Ok(Duration::from_millis(12_345_678)));
        assert_eq!(parse("123456789m"), Err(TooManyDigits));
        assert_eq!(parse("000000001m"), Err(TooManyDigits));
        assert_eq!(parse("999999999"), Err(TooManyDigits));
    }

    #[test]
    fn every_rejection_class() {
        for (s, want) in [
            ("", Empty),
            ("S", BadDigit),
            ("m", BadDigit),
            ("-1S", BadDigit),
            ("+1S", BadDigit),
            (" 1S", BadDigit),
            ("x", BadDigit),
            ("\u{e9}", BadDigit),
            ("1", BadUnit),
            ("12345678", BadUnit),
            ("1s", BadUnit),
            ("1h", BadUnit),
            ("1 S", BadUnit),
            ("1S ", BadUnit),
            ("1SS", BadUnit),
            ("1mm", BadUnit),
            ("1S1", BadUnit),
            ("1.5S", BadUnit),
            ("1\u{e9}", BadUnit),
        ] {
            assert_eq!(parse(s), Err(want), "{s:?}");
        }
        let all = [Empty, TooManyDigits, BadDigit, BadUnit];
        let set: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(BadUnit.to_string(), "invalid grpc-timeout: bad_unit");
    }

    #[test]
    fn a_megabyte_is_rejected_at_once() {
        let mut big = vec![b'1'; 1 << 20];
        assert_eq!(parse_grpc_timeout(&big), Err(TooManyDigits));
        big[1] = b'S';
        assert_eq!(parse_grpc_timeout(&big), Err(BadUnit));
    }

    #[test]
    fn format_picks_the_finest_unit_that_fits() {
        assert_eq!(format(Duration::ZERO), "0n");
        assert_eq!(format(Duration::from_nanos(1)), "1n");
        assert_eq!(format(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(format(Duration::from_nanos(100_000_000)), "100000u");
        assert_eq!(format(Duration::from_nanos(100_000_999)), "100000u");
        assert_eq!(format(Duration::from_secs(30)), "30000000u");
        assert_eq!(format(Duration::from_secs(100)), "100000m");
        assert_eq!(format(Duration::from_secs(100_000)), "100000S");
        assert_eq!(format(Duration::from_secs(99_999_999)), "99999999S");
        assert_eq!(format(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(format(Duration::from_secs(99_999_999 * 60)), "99999999M");
        assert_eq!(format(Duration::from_secs(6_000_000_000)), "1666666H");
        assert_eq!(format(Duration::from_secs(99_999_999 * 3600)), "99999999H");
        assert_eq!(format(Duration::MAX), "99999999H");
    }

    proptest! {
        #[test]
        fn format_then_parse_rounds_down_by_less_than_a_unit(
            secs in 0..MAX_VALUE * 3600,
            nanos in 0u32..1_000_000_000,
        ) {
            // (Beyond 99999999H the value is clamped: `format_picks_the_finest_unit_that_fits`.)
            let d = Duration::new(secs, nanos);
            let s = format(d);
            prop_assert!(s.len() <= GRPC_TIMEOUT_MAX_LEN);
            let back = parse(&s).unwrap();
            let unit = Duration::from_nanos(unit_nanos(*s.as_bytes().last().unwrap()).unwrap());
            prop_assert!(back <= d);
            prop_assert!(d - back < unit, "{d:?} -> {s} -> {back:?}");
        }

        #[test]
        fn parse_then_format_is_identity_for_canonical_values(n in 0u64..=MAX_VALUE) {
            // Nanoseconds: every count fits, so the text comes back unchanged.
            let s = format!("{n}n");
            prop_assert_eq!(format(parse(&s).unwrap()), s);
        }

        #[test]
        fn small_inputs_never_panic(v in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(d) = parse_grpc_timeout(&v) {
                prop_assert!(v.len() >= 2 && v.len() <= GRPC_TIMEOUT_MAX_LEN);
                prop_assert!(d <= Duration::from_secs(MAX_VALUE * 3600));
            }
        }
    }
}
