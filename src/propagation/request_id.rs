//! `x-request-id` and `x-user-id`: de-facto headers with no spec; the rules here are ours.

use core::fmt;

use super::random::random_u64;
use super::traceparent::{lower_hex_u64, write_hex_u64};
use crate::{RequestId, UserId};

/// The longest `x-request-id` kept, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why an `x-request-id` value was rejected (a fresh one is then generated).
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`Empty`](Self::Empty) | `empty` |
/// | [`TooLong`](Self::TooLong) | `too_long` |
/// | [`NotVisibleAscii`](Self::NotVisibleAscii) | `not_visible_ascii` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestIdError {
    /// An empty value.
    Empty,
    /// More than [`MAX_REQUEST_ID_LEN`] bytes.
    TooLong,
    /// A byte outside visible ASCII (0x21–0x7e): a space, a control byte or non-ASCII.
    NotVisibleAscii,
}

impl RequestIdError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::NotVisibleAscii => "not_visible_ascii",
        }
    }
}

impl fmt::Display for RequestIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid x-request-id: {}", self.reason())
    }
}

impl std::error::Error for RequestIdError {}

/// An `x-request-id`: 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII, stored inline (no
/// allocation; `Copy`, 129 bytes).
///
/// ```
/// use ctxpool::propagation::{RequestIdError, XRequestId};
/// use ctxpool::RequestId;
///
/// let id = XRequestId::parse(b"0123456789abcdef").unwrap();
/// assert_eq!(id.as_str(), "0123456789abcdef");
/// assert_eq!(id.id(), RequestId(0x0123456789abcdef));
///
/// let other = XRequestId::parse(b"req-7f3a/eu-west").unwrap();
/// assert_eq!(other.id(), XRequestId::parse(b"req-7f3a/eu-west").unwrap().id()); // a hash
///
/// assert_eq!(XRequestId::parse(b"has space").unwrap_err(), RequestIdError::NotVisibleAscii);
///
/// let fresh = XRequestId::generate();
/// assert_eq!(fresh.id().to_string(), fresh.as_str()); // round-trips with RequestId's Display
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct XRequestId {
    /// Bytes used in `bytes`: 1..=128.
    len: u8,
    /// The text in `bytes[..len]`, the rest zero (so the derived traits compare the text).
    bytes: [u8; MAX_REQUEST_ID_LEN],
}

impl XRequestId {
    /// Validates a received value: 1 to 128 bytes, each visible ASCII (0x21 to 0x7e). The
    /// length is checked first, so a huge value costs nothing.
    pub fn parse(value: &[u8]) -> Result<XRequestId, RequestIdError> {
        if value.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if value.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong);
        }
        if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(RequestIdError::NotVisibleAscii);
        }
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Ok(XRequestId {
            len: value.len() as u8,
            bytes,
        })
    }

    /// A fresh id: 16 lowercase hex digits of [`random_u64`](super::random_u64), the text
    /// `RequestId`'s `Display` gives, so [`id`](Self::id) reads the number back.
    pub fn generate() -> XRequestId {
        let mut digits = [0u8; 16];
        write_hex_u64(&mut digits, random_u64());
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        bytes[..16].copy_from_slice(&digits);
        XRequestId { len: 16, bytes }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: the fields are private and only `parse` (which checks every byte is in
        // 0x21..=0x7e) and `generate` (lowercase hex digits) fill them: the text is ASCII,
        // so UTF-8.
        unsafe { core::str::from_utf8_unchecked(self.as_bytes()) }
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The inline [`RequestId`] for the context: the number itself when the text is exactly
    /// 16 lowercase hex digits (what [`generate`](Self::generate) makes and `RequestId`
    /// displays), otherwise the 64-bit FNV-1a hash of the text.
    pub fn id(&self) -> RequestId {
        let text = self.as_bytes();
        if text.len() == 16 {
            if let Some(n) = lower_hex_u64(text) {
                return RequestId(n);
            }
        }
        RequestId(fnv1a64(text))
    }
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Debug for XRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("XRequestId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for XRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an `x-user-id` value was rejected.
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`Empty`](Self::Empty) | `empty` |
/// | [`TooManyDigits`](Self::TooManyDigits) | `too_many_digits` |
/// | [`NotADigit`](Self::NotADigit) | `not_a_digit` |
/// | [`Overflow`](Self::Overflow) | `overflow` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserIdError {
    /// An empty value.
    Empty,
    /// More than 20 digits.
    TooManyDigits,
    /// A byte that is not an ASCII digit (a sign or a space included).
    NotADigit,
    /// 20 digits above `u64::MAX` (18446744073709551615).
    Overflow,
}

impl UserIdError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooManyDigits => "too_many_digits",
            Self::NotADigit => "not_a_digit",
            Self::Overflow => "overflow",
        }
    }
}

impl fmt::Display for UserIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid x-user-id: {}", self.reason())
    }
}

impl std::error::Error for UserIdError {}

/// The most digits of an `x-user-id` (`u64::MAX` has 20).
const MAX_USER_ID_DIGITS: usize = 20;

/// Parses an `x-user-id`: a decimal `u64` of 1 to 20 ASCII digits (leading zeros allowed), no
/// sign, no whitespace, no overflow. Whether to believe it is the caller's decision: only
/// from a trusted peer (`propagation.trusted_peers`).
///
/// ```
/// use ctxpool::propagation::{parse_user_id, UserIdError};
/// use ctxpool::UserId;
///
/// assert_eq!(parse_user_id(b"42"), Ok(UserId(42)));
/// assert_eq!(parse_user_id(b"18446744073709551616"), Err(UserIdError::Overflow));
/// assert_eq!(parse_user_id(b"+42"), Err(UserIdError::NotADigit));
/// ```
pub fn parse_user_id(value: &[u8]) -> Result<UserId, UserIdError> {
    if value.is_empty() {
        return Err(UserIdError::Empty);
    }
    if value.len() > MAX_USER_ID_DIGITS {
        return Err(UserIdError::TooManyDigits);
    }
    let mut n = 0u64;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(UserIdError::NotADigit);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(UserIdError::Overflow)?;
    }
    Ok(UserId(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_id_lengths() {
        assert_eq!(XRequestId::parse(b""), Err(RequestIdError::Empty));
        assert_eq!(XRequestId::parse(b"x").unwrap().as_str(), "x");
        let max = "r".repeat(128);
        assert_eq!(XRequestId::parse(max.as_bytes()).unwrap().as_str(), max);
        let over = "r".repeat(129);
        assert_eq!(
            XRequestId::parse(over.as_bytes()),
            Err(RequestIdError::TooLong)
        );
        let mib = vec![b' '; 1 << 20];
        assert_eq!(XRequestId::parse(&mib), Err(RequestIdError::TooLong));
    }

    #[test]
    fn request_id_bytes() {
        let visible: Vec<u8> = (0x21..=0x7e).collect();
        let id = XRequestId::parse(&visible).unwrap();
        assert_eq!(id.as_bytes(), &visible[..]);
        for bad in [
            &b" x"[..],
            b"x ",
            b"a b",
            b"\t",
            b"a\x7f",
            b"a\0",
            b"\r\n",
            "\u{e9}".as_bytes(),
        ] {
            assert_eq!(
                XRequestId::parse(bad),
                Err(RequestIdError::NotVisibleAscii),
                "{bad:?}"
            );
        }
        let all = [
            RequestIdError::Empty,
            RequestIdError::TooLong,
            RequestIdError::NotVisibleAscii,
        ];
        let set: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), 3);
        assert_eq!(
            RequestIdError::TooLong.to_string(),
            "invalid x-request-id: too_long"
        );
    }

    #[test]
    fn request_id_numbers_and_hashes() {
        let id = XRequestId::parse(b"00000000000000ff").unwrap();
        assert_eq!(id.id(), RequestId(255));
        assert_eq!(id.id().to_string(), id.as_str());
        // Not exactly 16 lowercase hex digits: hashed.
        for text in [
            "00000000000000FF",
            "0000000000000ff",
            "00000000000000ff0",
            "g000000000000000",
        ] {
            let id = XRequestId::parse(text.as_bytes()).unwrap();
            assert_eq!(id.id(), RequestId(fnv1a64(text.as_bytes())), "{text}");
        }
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn generated_ids() {
        let a = XRequestId::generate();
        let b = XRequestId::generate();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.as_str().len(), 16);
            assert!(id
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert_eq!(XRequestId::parse(id.as_bytes()), Ok(id));
            assert_eq!(format!("{}", id.id()), id.as_str());
        }
        assert_eq!(format!("{a:?}"), format!("XRequestId({:?})", a.as_str()));
        assert_eq!(a.to_string(), a.as_str());
    }

    #[test]
    fn user_ids() {
        assert_eq!(parse_user_id(b"0"), Ok(UserId(0)));
        assert_eq!(parse_user_id(b"007"), Ok(UserId(7)));
        assert_eq!(parse_user_id(b"18446744073709551615"), Ok(UserId(u64::MAX)));
        assert_eq!(parse_user_id(b"00000000000000000001"), Ok(UserId(1)));
        for (v, want) in [
            (&b""[..], UserIdError::Empty),
            (b"18446744073709551616", UserIdError::Overflow),
            (b"99999999999999999999", UserIdError::Overflow),
            (b"000000000000000000001", UserIdError::TooManyDigits),
            (b"+1", UserIdError::NotADigit),
            (b"-1", UserIdError::NotADigit),
            (b" 1", UserIdError::NotADigit),
            (b"1 ", UserIdError::NotADigit),
            (b"1e3", UserIdError::NotADigit),
            (b"0x10", UserIdError::NotADigit),
        ] {
            assert_eq!(parse_user_id(v), Err(want), "{v:?}");
        }
        assert_eq!(
            parse_user_id(&vec![b'1'; 1 << 20]),
            Err(UserIdError::TooManyDigits)
        );
        let all = [
            UserIdError::Empty,
            UserIdError::TooManyDigits,
            UserIdError::NotADigit,
            UserIdError::Overflow,
        ];
        let set: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), 4);
        assert_eq!(
            UserIdError::Overflow.to_string(),
            "invalid x-user-id: overflow"
        );
    }

    proptest! {
        #[test]
        fn user_id_round_trip(n: u64) {
            prop_assert_eq!(parse_user_id(n.to_string().as_bytes()), Ok(UserId(n)));
        }

        #[test]
        fn request_id_round_trip(s in "[!-~]{1,128}") {
            let id = XRequestId::parse(s.as_bytes()).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(XRequestId::parse(id.as_bytes()), Ok(id));
        }

        #[test]
        fn request_id_hex_round_trip(n: u64) {
            let text = RequestId(n).to_string();
            prop_assert_eq!(XRequestId::parse(text.as_bytes()).unwrap().id(), RequestId(n));
        }
    }
}
