//! `traceparent` (W3C Trace Context, section "Traceparent Header").

use core::fmt;

use crate::TraceContext;

/// Length of a version-00 `traceparent` value: `2 + 1 + 32 + 1 + 16 + 1 + 2`.
pub const TRACEPARENT_LEN: usize = 55;

/// The `sampled` trace flag (bit 0): the caller may have recorded trace data.
pub const FLAG_SAMPLED: u8 = 0x01;
/// The `random-trace-id` trace flag (bit 1, Trace Context Level 2): at least the right-most
/// 7 bytes of the trace id are random. [`new_trace_id`](super::new_trace_id) makes all 16
/// random, so a trace it starts may set this flag.
pub const FLAG_RANDOM: u8 = 0x02;
/// The trace flags this crate knows and keeps; [`parse_traceparent`] clears the others
/// (section "Other Flags": they are reserved, and vendors MUST send them as zero).
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Why a `traceparent` value was rejected. The whole header is then ignored and the trace
/// restarted, as the spec says ("vendors MUST ignore the entire header").
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`TooShort`](Self::TooShort) | `too_short` |
/// | [`TooLong`](Self::TooLong) | `too_long` |
/// | [`BadVersion`](Self::BadVersion) | `bad_version` |
/// | [`BadSeparator`](Self::BadSeparator) | `bad_separator` |
/// | [`UppercaseHex`](Self::UppercaseHex) | `uppercase_hex` |
/// | [`BadHex`](Self::BadHex) | `bad_hex` |
/// | [`ZeroTraceId`](Self::ZeroTraceId) | `zero_trace_id` |
/// | [`ZeroSpanId`](Self::ZeroSpanId) | `zero_span_id` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceParentError {
    /// Fewer than 55 bytes (an empty value included).
    TooShort,
    /// A version-00 value longer than 55 bytes (a higher version may be longer).
    TooLong,
    /// The version is not two lowercase hex digits, or is the forbidden `ff`.
    BadVersion,
    /// A `-` missing between the fields, or after the flags of a higher version.
    BadSeparator,
    /// A hex digit in upper case (the spec allows lowercase only, `HEXDIGLC`).
    UppercaseHex,
    /// A byte that is not a hex digit in the trace id, span id or flags.
    BadHex,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent (span) id is all zeros.
    ZeroSpanId,
}

impl TraceParentError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::TooLong => "too_long",
            Self::BadVersion => "bad_version",
            Self::BadSeparator => "bad_separator",
            Self::UppercaseHex => "uppercase_hex",
            Self::BadHex => "bad_hex",
            Self::ZeroTraceId => "zero_trace_id",
            Self::ZeroSpanId => "zero_span_id",
        }
    }
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid traceparent: {}", self.reason())
    }
}

impl std::error::Error for TraceParentError {}

/// The value of one lowercase hex digit.
#[inline]
fn hex_digit(b: u8) -> Result<u8, TraceParentError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Err(TraceParentError::UppercaseHex),
        _ => Err(TraceParentError::BadHex),
    }
}

/// `field` (at most 32 digits) as a number.
#[inline]
fn hex(field: &[u8]) -> Result<u128, TraceParentError> {
    field
        .iter()
        .try_fold(0u128, |acc, &b| Ok((acc << 4) | u128::from(hex_digit(b)?)))
}

/// The value of each byte as a lowercase hex digit, [`NOT_HEX`] for any other byte.
static HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// [`HEX_VALUE`] of a byte that is not a lowercase hex digit.
const NOT_HEX: u8 = 0x80;

/// `field` (at most 16 digits) as a number, when every byte is a lowercase hex digit; no
/// branch per byte (random ids mix digits and letters, which a branch would mispredict).
#[inline]
pub(crate) fn lower_hex_u64(field: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    let mut seen = 0u8;
    for &b in field {
        let d = HEX_VALUE[usize::from(b)];
        seen |= d;
        n = (n << 4) | u64::from(d & 0xf);
    }
    (seen & NOT_HEX == 0).then_some(n)
}

/// Each byte as its two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Writes `n` as 16 lowercase hex digits.
#[inline]
pub(crate) fn write_hex_u64(out: &mut [u8; 16], n: u64) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

/// Optional whitespace (`OWS`, RFC 9110 §5.6.3): space or horizontal tab.
#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `value` without leading and trailing `OWS`.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Parses a `traceparent` header value.
///
/// - Version `00`: exactly 55 bytes,
///   `00-<32 lowercase hex trace id>-<16 lowercase hex parent id>-<2 lowercase hex flags>`.
/// - A higher version (`01` to `fe`) is parsed as section "Versioning of traceparent" says:
///   at least 55 bytes, the same three fields at the same places, then either the end of the
///   value or a `-` (what follows is a later version's business and is ignored).
/// - Rejected: version `ff`, an all-zero trace id or parent id, uppercase hex, any other
///   non-hex byte, a missing `-`, a wrong length.
///
/// Leading and trailing optional whitespace (space, tab) is ignored, as an HTTP field value's
/// is (RFC 9110 §5.5; the W3C test suite sends such values). Trace flags other than
/// [`FLAG_SAMPLED`] and [`FLAG_RANDOM`] are cleared ([`KNOWN_FLAGS`]). The work is at most 55
/// byte checks, whatever the input's length.
///
/// ```
/// use ctxpool::propagation::{parse_traceparent, TraceParentError};
///
/// let tc = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(tc.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert_eq!(tc.span_id, 0x00f067aa0ba902b7);
/// assert_eq!(tc.flags, 1);
///
/// let err = parse_traceparent(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
/// assert_eq!(err, Err(TraceParentError::UppercaseHex));
/// assert_eq!(err.unwrap_err().reason(), "uppercase_hex");
/// ```
pub fn parse_traceparent(value: &[u8]) -> Result<TraceContext, TraceParentError> {
    use TraceParentError::*;
    let v = trim_ows(value);
    if v.len() < TRACEPARENT_LEN {
        return Err(TooShort);
    }
    // version: 2 lowercase hex digits; `ff` is forbidden.
    let version = hex(&v[0..2]).map_err(|e| match e {
        UppercaseHex => UppercaseHex,
        _ => BadVersion,
    })?;
    if version == 0xff {
        return Err(BadVersion);
    }
    if version == 0 && v.len() > TRACEPARENT_LEN {
        return Err(TooLong);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(BadSeparator);
    }
    // A higher version: the flags are followed by the end of the value or a '-'.
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return Err(BadSeparator);
    }
    let fields = (
        lower_hex_u64(&v[3..19]),
        lower_hex_u64(&v[19..35]),
        lower_hex_u64(&v[36..52]),
        lower_hex_u64(&v[53..55]),
    );
    let (Some(high), Some(low), Some(span_id), Some(flags)) = fields else {
        // Not all lowercase hex: the first bad byte, field by field, says which error.
        hex(&v[3..35])?;
        hex(&v[36..52])?;
        hex(&v[53..55])?;
        return Err(BadHex);
    };
    let trace_id = (u128::from(high) << 64) | u128::from(low);
    let flags = flags as u8;
    if trace_id == 0 {
        return Err(ZeroTraceId);
    }
    if span_id == 0 {
        return Err(ZeroSpanId);
    }
    Ok(TraceContext {
        trace_id,
        span_id,
        flags: flags & KNOWN_FLAGS,
    })
}

/// The lowercase hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `tc` as a version-00 `traceparent` value,
/// `00-{trace_id:032x}-{span_id:016x}-{flags:02x}` (55 bytes), into `buf` and returns it.
///
/// The fields are written as they are, the flags included; what [`parse_traceparent`]
/// accepted reads back unchanged.
///
/// ```
/// use ctxpool::propagation::{format_traceparent, TRACEPARENT_LEN};
/// use ctxpool::TraceContext;
///
/// let tc = TraceContext { trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736, span_id: 0xf067aa0ba902b7, flags: 1 };
/// let mut buf = [0u8; TRACEPARENT_LEN];
/// assert_eq!(
///     format_traceparent(&tc, &mut buf),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// );
/// ```
pub fn format_traceparent<'b>(tc: &TraceContext, buf: &'b mut [u8; TRACEPARENT_LEN]) -> &'b str {
    buf[0] = b'0';
    buf[1] = b'0';
    buf[2] = b'-';
    let mut digits = [0u8; 16];
    write_hex_u64(&mut digits, (tc.trace_id >> 64) as u64);
    buf[3..19].copy_from_slice(&digits);
    write_hex_u64(&mut digits, tc.trace_id as u64);
    buf[19..35].copy_from_slice(&digits);
    buf[35] = b'-';
    write_hex_u64(&mut digits, tc.span_id);
    buf[36..52].copy_from_slice(&digits);
    buf[52] = b'-';
    buf[53..55].copy_from_slice(&HEX_PAIRS[usize::from(tc.flags)]);
    // SAFETY: every byte of `buf` was written above, from `HEX` or `HEX_PAIRS` (lowercase
    // hex digits) or as `0` and `-`: ASCII, so UTF-8.
    unsafe { core::str::from_utf8_unchecked(buf) }
}

#[cfg(test)]
mod tests {
    use super::TraceParentError::*;
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Result<TraceContext, TraceParentError> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn spec_examples() {
        let tc = parse(VALID).unwrap();
        assert_eq!(tc.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(tc.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(tc.flags, FLAG_SAMPLED);
        let tc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(tc.flags, 0);
        let tc = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(tc.span_id, 0xb7ad_6b71_6920_3331);
    }

    #[test]
    fn format_round_trips() {
        let mut buf = [0u8; TRACEPARENT_LEN];
        let tc = parse(VALID).unwrap();
        assert_eq!(format_traceparent(&tc, &mut buf), VALID);
        let min = TraceContext {
            trace_id: 1,
            span_id: 1,
            flags: 0,
        };
        assert_eq!(
            format_traceparent(&min, &mut buf),
            "00-00000000000000000000000000000001-0000000000000001-00"
        );
        let max = TraceContext {
            trace_id: u128::MAX,
            span_id: u64::MAX,
            flags: 0xff,
        };
        let s = format_traceparent(&max, &mut buf);
        assert_eq!(s, "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff");
        assert_eq!(
            parse(s),
            Ok(TraceContext {
                flags: KNOWN_FLAGS,
                ..max
            })
        );
    }

    #[test]
    fn flags_other_than_sampled_and_random_are_cleared() {
        for (flags, kept) in [
            ("00", 0),
            ("01", 1),
            ("02", 2),
            ("03", 3),
            ("09", 1),
            ("fc", 0),
        ] {
            let v = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            assert_eq!(parse(&v).unwrap().flags, kept, "{v}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(parse(""), Err(TooShort));
        assert_eq!(parse(&VALID[..54]), Err(TooShort));
        assert_eq!(parse(&format!("{VALID}-")), Err(TooLong));
        assert_eq!(parse(&format!("{VALID}0")), Err(TooLong));
        assert_eq!(
            parse(&format!("{VALID}-what-the-future-will-be-like")),
            Err(TooLong)
        );
        // Field widths off by one, total length kept.
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01"),
            Err(BadSeparator)
        );
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01"),
            Err(BadSeparator)
        );
        assert_eq!(
            parse("000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            Err(BadSeparator)
        );
    }

    #[test]
    fn optional_whitespace_around_the_value() {
        assert!(parse(&format!(" \t{VALID} ")).is_ok());
        assert_eq!(parse(&format!(" {}", &VALID[..54])), Err(TooShort));
        // Inside the value it is an error.
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7- 1"),
            Err(BadHex)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Err(BadVersion)
        );
        assert_eq!(
            parse("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Err(BadVersion)
        );
        assert_eq!(
            parse("-0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Err(BadVersion)
        );
        assert_eq!(
            parse("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Err(UppercaseHex)
        );
        // Higher versions: 55 bytes, or more after a '-'.
        let tc = parse(VALID).unwrap();
        for v in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        ] {
            assert_eq!(parse(v), Ok(tc), "{v}");
        }
        assert_eq!(
            parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x"),
            Err(BadSeparator)
        );
        assert_eq!(
            parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"),
            Err(TooShort)
        );
        assert_eq!(
            parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"),
            Err(BadHex)
        );
    }

    #[test]
    fn every_rejection_class() {
        let cases = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                BadSeparator,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                BadSeparator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
                BadSeparator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                BadHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                BadHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
                BadHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47\u{e9}-00f067aa0ba902b7-01",
                BadHex,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                UppercaseHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                UppercaseHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
                UppercaseHex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroSpanId,
            ),
            (
                "00-00000000000000000000000000000000-0000000000000000-01",
                ZeroTraceId,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(parse(v), Err(want), "{v}");
        }
    }

    #[test]
    fn reasons_are_distinct_snake_case() {
        let all = [
            TooShort,
            TooLong,
            BadVersion,
            BadSeparator,
            UppercaseHex,
            BadHex,
            ZeroTraceId,
            ZeroSpanId,
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), all.len());
        for r in reasons {
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
        assert_eq!(
            ZeroTraceId.to_string(),
            "invalid traceparent: zero_trace_id"
        );
    }

    #[test]
    fn a_megabyte_is_rejected_at_once() {
        let mut big = VALID.as_bytes().to_vec();
        big.resize(1 << 20, b'a');
        assert_eq!(parse_traceparent(&big), Err(TooLong));
        big[0] = b'0';
        big[1] = b'1';
        big[55] = b'-';
        assert!(parse_traceparent(&big).is_ok());
        // Trimming looks at the ends only as far as they are whitespace.
    }

    proptest! {
        #[test]
        fn format_then_parse(trace_id in 1..=u128::MAX, span_id in 1..=u64::MAX, flags: u8) {
            let tc = TraceContext { trace_id, span_id, flags };
            let mut buf = [0u8; TRACEPARENT_LEN];
            let s = format_traceparent(&tc, &mut buf);
            prop_assert_eq!(s.len(), TRACEPARENT_LEN);
            prop_assert_eq!(s, format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}"));
            let back = parse_traceparent(s.as_bytes()).unwrap();
            prop_assert_eq!(back, TraceContext { flags: flags & KNOWN_FLAGS, ..tc });
        }

        #[test]
        fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(tc) = parse_traceparent(&v) {
                prop_assert!(tc.trace_id != 0 && tc.span_id != 0);
            }
        }
    }
}
