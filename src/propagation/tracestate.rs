//! `tracestate` (W3C Trace Context, section "Tracestate Header").

use core::fmt;

use super::traceparent::is_ows;

/// The most list-members a `tracestate` holds (section "list": `list-member 0*31( ... )`).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The longest `tracestate` key (section "Key": `( lcalpha / DIGIT ) 0*255( keychar )`).
pub const MAX_TRACESTATE_KEY_LEN: usize = 256;
/// The longest `tracestate` value (section "Value": `0*255( chr ) nblk-chr`).
pub const MAX_TRACESTATE_VALUE_LEN: usize = 256;

/// Why a `tracestate` was rejected. The spec lets a vendor discard an invalid `tracestate`
/// as a whole; that is what [`TraceState::parse`] asks of the caller (the `traceparent` stays
/// valid: "failure to parse tracestate MUST NOT affect the parsing of traceparent").
///
/// A repeated key is not an error: the first occurrence is kept and later ones dropped
/// ([`TraceState::parse_counting`] counts them).
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`TooManyMembers`](Self::TooManyMembers) | `too_many_members` |
/// | [`BadMember`](Self::BadMember) | `bad_member` |
/// | [`BadKey`](Self::BadKey) | `bad_key` |
/// | [`BadValue`](Self::BadValue) | `bad_value` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceStateError {
    /// More than [`MAX_TRACESTATE_MEMBERS`] list-members (repeated keys included: the
    /// grammar bounds the list as received).
    TooManyMembers,
    /// A list-member that is a key with no `=` after it.
    BadMember,
    /// A key that is empty, too long, or has a byte the key grammar does not allow (upper
    /// case included).
    BadKey,
    /// A value that is empty, too long, or has a byte outside 0x20–0x7e, a `,` or a `=`.
    BadValue,
}

impl TraceStateError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyMembers => "too_many_members",
            Self::BadMember => "bad_member",
            Self::BadKey => "bad_key",
            Self::BadValue => "bad_value",
        }
    }
}

impl fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid tracestate: {}", self.reason())
    }
}

impl std::error::Error for TraceStateError {}

/// Byte classes of the `tracestate` grammar, one bit each in [`CLASS`].
const KEY_START: u8 = 1;
/// `keychar`.
const KEY_CHAR: u8 = 2;
/// `chr` (a value byte, space included).
const VALUE_CHAR: u8 = 4;

/// The class bits of every byte: one load instead of a chain of comparisons.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut bits = 0;
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            bits |= KEY_START | KEY_CHAR;
        }
        if matches!(c, b'_' | b'-' | b'*' | b'/' | b'@') {
            bits |= KEY_CHAR;
        }
        if c >= 0x20 && c <= 0x7e && c != b',' && c != b'=' {
            bits |= VALUE_CHAR;
        }
        t[b] = bits;
        b += 1;
    }
    t
};

/// `lcalpha / DIGIT`: the first byte of a key.
#[inline]
fn is_key_start(b: u8) -> bool {
    CLASS[usize::from(b)] & KEY_START != 0
}

/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
#[inline]
fn is_key_char(b: u8) -> bool {
    CLASS[usize::from(b)] & KEY_CHAR != 0
}

/// `chr = %x20 / nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`.
#[inline]
fn is_value_char(b: u8) -> bool {
    CLASS[usize::from(b)] & VALUE_CHAR != 0
}

/// Whether all 8 bytes of `x` are `chr` (0x20 to 0x7e, but `,` and `=`): one test for 8
/// bytes of a value.
#[inline]
fn all_value_chars(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    /// Whether a byte of `y` is zero (exact: no carry crosses a byte).
    #[inline]
    fn has_zero_byte(y: u64) -> bool {
        ((y & !HIGH).wrapping_add(!HIGH) | y) & HIGH != HIGH
    }
    let ascii = x & HIGH == 0;
    // With every byte below 0x80 (`ascii`), neither sum carries into the next byte.
    let from_space = x.wrapping_add(ONES * 0x60) & HIGH == HIGH;
    let to_tilde = x.wrapping_add(ONES) & HIGH == 0;
    ascii
        & from_space
        & to_tilde
        & !has_zero_byte(x ^ (ONES * u64::from(b',')))
        & !has_zero_byte(x ^ (ONES * u64::from(b'=')))
}

/// Checks a whole key.
fn check_key(key: &[u8]) -> Result<(), TraceStateError> {
    match key.split_first() {
        Some((&first, rest))
            if key.len() <= MAX_TRACESTATE_KEY_LEN
                && is_key_start(first)
                && rest.iter().all(|&b| is_key_char(b)) =>
        {
            Ok(())
        }
        _ => Err(TraceStateError::BadKey),
    }
}

/// Checks a whole value (leading spaces are part of it; a trailing space is not allowed).
fn check_value(value: &[u8]) -> Result<(), TraceStateError> {
    match value.last() {
        Some(&last)
            if value.len() <= MAX_TRACESTATE_VALUE_LEN
                && last != b' '
                && value.iter().all(|&b| is_value_char(b)) =>
        {
            Ok(())
        }
        _ => Err(TraceStateError::BadValue),
    }
}

/// A validated W3C `tracestate`: up to [`MAX_TRACESTATE_MEMBERS`] `key=value` list-members,
/// keys unique, in order (the left-most is the vendor that last changed `traceparent`).
///
/// Held as its normalised header text, `k1=v1,k2=v2` (no optional whitespace, no empty
/// members), so sending it is [`as_str`](Self::as_str). Reads walk that text: with at most 32
/// members that is cheaper than keeping an index.
///
/// ```
/// use ctxpool::propagation::TraceState;
///
/// let lines: [&[u8]; 2] = [b"rojo=00f067aa0ba902b7", b" , congo=t61rcWkgMzE"];
/// let mut ts = TraceState::parse(lines).unwrap();
/// assert_eq!(ts.as_str(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
/// assert_eq!(ts.get("congo"), Some("t61rcWkgMzE"));
///
/// // Our entry goes first; an updated key moves to the front.
/// ts.insert("congo", "ucfJifl5GOE").unwrap();
/// assert_eq!(ts.as_str(), "congo=ucfJifl5GOE,rojo=00f067aa0ba902b7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TraceState {
    /// `k1=v1,k2=v2`: every member valid, keys unique, at most 32.
    text: String,
    /// Members in `text`.
    len: usize,
}

impl TraceState {
    /// An empty `tracestate`.
    pub const fn new() -> Self {
        TraceState {
            text: String::new(),
            len: 0,
        }
    }

    /// Parses the values of every `tracestate` header line of a message, in order.
    ///
    /// Lines are combined as if joined by commas (RFC 9110 §5.3, which the spec requires).
    /// Empty and whitespace-only members are skipped, as are spaces and tabs around members;
    /// a value keeps its leading spaces (section "Value"). A key seen before is dropped with
    /// its value (the first occurrence is kept): section "Mutating the tracestate Field" has
    /// a vendor send the received `tracestate` on, and lets it discard duplicate keys
    /// ([`parse_counting`](TraceState::parse_counting) counts them). Everything else must
    /// follow the grammar, with at most 32 members as received (repeats included), or the
    /// whole `tracestate` is rejected: the caller then drops it, as the spec allows. Parsing
    /// stops at the first error, so a hostile value costs at most one pass over the bytes,
    /// and less when a key or value runs over its 256-byte limit or a 33rd member starts.
    ///
    /// ```
    /// use ctxpool::propagation::{TraceState, TraceStateError};
    ///
    /// let ts = TraceState::parse([&b""[..], b" \t, ,"]).unwrap();
    /// assert!(ts.is_empty());
    ///
    /// let dup = TraceState::parse([&b"a=1,b=2"[..], b"a=3"]).unwrap();
    /// assert_eq!(dup.as_str(), "a=1,b=2");
    ///
    /// assert_eq!(TraceState::parse([&b"a=1,B=2"[..]]), Err(TraceStateError::BadKey));
    /// ```
    pub fn parse<'a, I: IntoIterator<Item = &'a [u8]>>(
        lines: I,
    ) -> Result<TraceState, TraceStateError> {
        TraceState::parse_counting(lines).map(|(ts, _)| ts)
    }

    /// Like [`parse`](TraceState::parse), also returning how many list-members were dropped
    /// because their key came earlier in the list.
    ///
    /// ```
    /// use ctxpool::propagation::TraceState;
    ///
    /// let (ts, dropped) = TraceState::parse_counting([&b"a=1,b=2,a=3,b=4,c=5"[..]]).unwrap();
    /// assert_eq!((ts.as_str(), dropped), ("a=1,b=2,c=5", 2));
    /// ```
    pub fn parse_counting<'a, I: IntoIterator<Item = &'a [u8]>>(
        lines: I,
    ) -> Result<(TraceState, usize), TraceStateError> {
        let mut ts = TraceState::new();
        // The keys kept so far, borrowed from the lines, for the duplicate check.
        let mut keys: [&'a [u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
        let mut tally = Tally::default();
        for line in lines {
            ts.parse_line(line, &mut keys, &mut tally)?;
        }
        Ok((ts, tally.dropped))
    }

    /// Whether `line`, alone, is a valid `tracestate` already in the form
    /// [`as_str`](TraceState::as_str) would give it (members joined by single commas, no
    /// whitespace around them, no repeated key, at least one member): then the line itself
    /// can be sent on, and parsing it into a `TraceState` (a copy) can wait until someone
    /// reads it. `Ok(false)` for a valid line in another form (whitespace, empty members,
    /// repeated keys, or none).
    // Used by `http` (and the tests).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn is_normalised_line(line: &[u8]) -> Result<bool, TraceStateError> {
        let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
        let mut tally = Tally::default();
        let scan = scan_line(line, &mut keys, &mut tally)?;
        Ok(tally.kept > 0 && scan.normalised)
    }

    /// Appends the members of one header line; `keys[..tally.kept]` are the keys so far, and
    /// the line's new ones are added. Validates the whole line before touching `self.text`:
    /// one reservation of the exact length, and, when the line is already normalised (the
    /// common case: members joined by single commas, no whitespace around them, no repeated
    /// key), one copy.
    fn parse_line<'a>(
        &mut self,
        line: &'a [u8],
        keys: &mut [&'a [u8]; MAX_TRACESTATE_MEMBERS],
        tally: &mut Tally,
    ) -> Result<(), TraceStateError> {
        let first = tally.kept;
        let Scan { kept, normalised } = scan_line(line, keys, tally)?;
        self.len = tally.kept;
        let members = tally.kept - first;
        if members == 0 {
            return Ok(());
        }
        // SAFETY: `scan_line` returned `Ok`, so it accepted every byte of `line` (it returns
        // at the first one it does not), and it accepts only OWS, `,`, key chars, `=` and
        // value chars: ASCII, so UTF-8.
        let text = unsafe { core::str::from_utf8_unchecked(line) };
        let commas = members - 1 + usize::from(!self.text.is_empty());
        self.text.reserve(kept + commas);
        if !self.text.is_empty() {
            self.text.push(',');
        }
        if normalised {
            self.text.push_str(text);
        } else {
            // The line's kept keys are `keys[first..]`, in order: a member is kept exactly
            // when its key is the next of them (a repeated key equals an earlier one, and the
            // kept keys are unique).
            let mut next = first;
            for member in text.split(',') {
                let member = member.trim_matches(|c| c == ' ' || c == '\t');
                let key = member.split_once('=').map_or(member, |(k, _)| k);
                if member.is_empty() || next == tally.kept || keys[next] != key.as_bytes() {
                    continue;
                }
                if next > first {
                    self.text.push(',');
                }
                self.text.push_str(member);
                next += 1;
            }
        }
        Ok(())
    }
    /// The header value to send: `k1=v1,k2=v2`, `""` when empty (the spec asks not to send
    /// an empty `tracestate`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of members (at most [`MAX_TRACESTATE_MEMBERS`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// The members, left to right, as `(key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text
            .split(',')
            .filter_map(|member| member.split_once('='))
    }

    /// Sets `key` to `value` and moves it to the front (section "Mutating the tracestate
    /// Field": "Modified keys MUST be moved to the beginning (left) of the list").
    ///
    /// If that makes 33 members, the right-most one is removed, as section "list" says ("If
    /// adding an entry would cause the tracestate list to contain more than 32 list-members
    /// the right-most list-member should be removed from the list"). Fails, leaving `self`
    /// unchanged, when `key` or `value` does not follow the grammar (a value may start with
    /// spaces, not end with one).
    ///
    /// ```
    /// use ctxpool::propagation::{TraceState, TraceStateError};
    ///
    /// let mut ts = TraceState::new();
    /// ts.insert("rojo", "00f067aa0ba902b7").unwrap();
    /// ts.insert("tenant@congo", "x").unwrap();
    /// assert_eq!(ts.as_str(), "tenant@congo=x,rojo=00f067aa0ba902b7");
    /// assert_eq!(ts.insert("Rojo", "1"), Err(TraceStateError::BadKey));
    /// assert_eq!(ts.insert("rojo", "a,b"), Err(TraceStateError::BadValue));
    /// ```
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceStateError> {
        check_key(key.as_bytes())?;
        check_value(value.as_bytes())?;
        let mut text = String::with_capacity(self.text.len() + key.len() + value.len() + 2);
        text.push_str(key);
        text.push('=');
        text.push_str(value);
        let mut len = 1;
        for (k, v) in self.iter() {
            if k == key {
                continue;
            }
            if len == MAX_TRACESTATE_MEMBERS {
                break; // the right-most members go
            }
            text.push(',');
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            len += 1;
        }
        self.text = text;
        self.len = len;
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        let mut text = String::with_capacity(self.text.len());
        for (k, v) in self.iter().filter(|&(k, _)| k != key) {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(k);
            text.push('=');
            text.push_str(v);
        }
        self.text = text;
        self.len -= 1;
        true
    }
}

impl AsRef<str> for TraceState {
    /// The header value, as [`as_str`](Self::as_str).
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TraceState {
    /// The header value, as [`as_str`](Self::as_str).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Members counted across the lines of one `tracestate`.
#[derive(Default)]
struct Tally {
    /// Members kept (unique keys): `keys[..kept]`.
    kept: usize,
    /// Members received, repeats included (the grammar's bound applies to these).
    seen: usize,
    /// Members dropped for a key that came earlier.
    dropped: usize,
}

/// What [`scan_line`] found in a valid line.
struct Scan {
    /// Bytes of the line's kept members, without whitespace around them or the joining
    /// commas.
    kept: usize,
    /// Whether the line is exactly its kept members joined by single commas.
    normalised: bool,
}

/// Validates one `tracestate` line: `keys[..tally.kept]` are the keys kept from the earlier
/// lines, and the line's new ones are added (a repeated key is counted in `tally.dropped`).
/// Stops at the first error.
fn scan_line<'a>(
    line: &'a [u8],
    keys: &mut [&'a [u8]; MAX_TRACESTATE_MEMBERS],
    tally: &mut Tally,
) -> Result<Scan, TraceStateError> {
    use TraceStateError::*;
    let n = line.len();
    // Bytes of the line's members, normalised (without the joining commas).
    let mut kept = 0;
    // Where the next member starts if the line is normalised (no OWS, no empty member).
    let mut next = 0;
    let mut normalised = true;
    let mut i = 0;
    while i < n {
        // OWS before a member (or an empty member).
        while i < n && is_ows(line[i]) {
            i += 1;
        }
        if i == n {
            break;
        }
        if line[i] == b',' {
            i += 1;
            continue;
        }
        // key: at most 256 key chars; a 257th is an error.
        let key_start = i;
        if !is_key_start(line[i]) {
            return Err(BadKey);
        }
        i += 1;
        let key_limit = n.min(key_start + MAX_TRACESTATE_KEY_LEN);
        while i < key_limit && is_key_char(line[i]) {
            i += 1;
        }
        if i < n && i == key_limit && is_key_char(line[i]) {
            return Err(BadKey);
        }
        let key = &line[key_start..i];
        match line.get(i) {
            Some(b'=') => i += 1,
            None | Some(b',' | b' ' | b'\t') => return Err(BadMember),
            Some(_) => return Err(BadKey),
        }
        // value: value chars (spaces included) up to 256 bytes past the `=`, less its
        // trailing spaces; then OWS up to ',' or the end. Anything else (a tab followed
        // by a value char, a 257th non-space byte, a byte outside `chr`) is an error.
        let value_start = i;
        let value_limit = n.min(value_start + MAX_TRACESTATE_VALUE_LEN);
        while let Some(chunk) = line.get(i..i + 8).filter(|_| i + 8 <= value_limit) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !all_value_chars(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        while i < value_limit && is_value_char(line[i]) {
            i += 1;
        }
        let mut value_end = i;
        while value_end > value_start && line[value_end - 1] == b' ' {
            value_end -= 1;
        }
        while i < n && is_ows(line[i]) {
            i += 1;
        }
        if (i < n && line[i] != b',') || value_end == value_start {
            return Err(BadValue);
        }
        if tally.seen == MAX_TRACESTATE_MEMBERS {
            return Err(TooManyMembers);
        }
        tally.seen += 1;
        if keys[..tally.kept].contains(&key) {
            // A repeated key: dropped, the first kept (section "Mutating the tracestate
            // Field"). The line is then not sent as it came.
            tally.dropped += 1;
            normalised = false;
            continue;
        }
        keys[tally.kept] = key;
        tally.kept += 1;
        normalised &= key_start == next;
        next = value_end + 1;
        kept += value_end - key_start;
        // `i` is at a ',' (skipped by the next round) or at the end.
    }
    Ok(Scan {
        kept,
        normalised: normalised && next == n + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::TraceStateError::*;
    use super::*;
    use proptest::prelude::*;

    /// The 8-bytes-at-once value check agrees with the byte table: every byte value at
    /// every position, in a word of otherwise valid bytes, then random words.
    #[test]
    fn word_check_agrees_with_the_byte_table() {
        let byte_check = |w: [u8; 8]| w.iter().all(|&b| is_value_char(b));
        for pos in 0..8 {
            for b in 0..=255u8 {
                let mut w = *b"abcdefgh";
                w[pos] = b;
                assert_eq!(
                    all_value_chars(u64::from_le_bytes(w)),
                    byte_check(w),
                    "{w:?}"
                );
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            // xorshift, biased towards printable bytes half of the time
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = if x & 1 == 0 {
                (x & 0x7f7f_7f7f_7f7f_7f7f).to_le_bytes()
            } else {
                x.to_le_bytes()
            };
            assert_eq!(
                all_value_chars(u64::from_le_bytes(w)),
                byte_check(w),
                "{w:?}"
            );
        }
    }

    fn parse(s: &str) -> Result<TraceState, TraceStateError> {
        TraceState::parse([s.as_bytes()])
    }

    fn members(n: usize) -> String {
        (0..n)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn spec_examples() {
        let ts = parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(
            ts.iter().collect::<Vec<_>>(),
            [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]
        );
        assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(ts.get("nope"), None);
        let ts = parse("vendorname1=opaqueValue1,vendorname2=opaqueValue2").unwrap();
        assert_eq!(
            ts.as_str(),
            "vendorname1=opaqueValue1,vendorname2=opaqueValue2"
        );
        assert_eq!(ts.to_string(), ts.as_str());
    }

    #[test]
    fn empty_and_whitespace() {
        for s in ["", " ", ",", " , ,\t,", ",,,,,,,,"] {
            let ts = parse(s).unwrap();
            assert!(ts.is_empty() && ts.as_str().is_empty(), "{s:?}");
        }
        let ts = parse(" a=1 ,\tb=2\t, , c=3").unwrap();
        assert_eq!(ts.as_str(), "a=1,b=2,c=3");
        // Leading spaces of a value are kept, trailing ones dropped.
        let ts = parse("a=  x y  ,b=z").unwrap();
        assert_eq!(ts.get("a"), Some("  x y"));
        assert_eq!(ts.as_str(), "a=  x y,b=z");
        assert_eq!(ts, parse(ts.as_str()).unwrap());
        // Only spaces is no value.
        assert_eq!(parse("a=   "), Err(BadValue));
        assert_eq!(parse("a="), Err(BadValue));
        assert_eq!(parse("a=,b=1"), Err(BadValue));
        // A tab inside the value is not allowed, around it is.
        assert_eq!(parse("a=x\ty"), Err(BadValue));
        assert!(parse("a=x\t \t,b=1").is_ok());
    }

    #[test]
    fn lines_are_combined_in_order() {
        let lines: [&[u8]; 4] = [b"a=1", b"", b" ,b=2,", b"c=3"];
        let ts = TraceState::parse(lines).unwrap();
        assert_eq!(ts.as_str(), "a=1,b=2,c=3");
        let none: [&[u8]; 0] = [];
        assert!(TraceState::parse(none).unwrap().is_empty());
        // Limits and duplicates apply across lines.
        let (a, b) = (members(16), members(32).split_off(members(16).len() + 1));
        assert_eq!(
            TraceState::parse([a.as_bytes(), b.as_bytes()])
                .unwrap()
                .len(),
            32
        );
        let extra = format!("{b},x=1");
        assert_eq!(
            TraceState::parse([a.as_bytes(), extra.as_bytes()]),
            Err(TooManyMembers)
        );
        assert_eq!(
            TraceState::parse_counting([&b"a=1"[..], b"a=2"]),
            Ok((parse("a=1").unwrap(), 1))
        );
    }

    #[test]
    fn keys() {
        for key in [
            "a",
            "0",
            "a0_-*/@",
            "tenant@system",
            "fw529a3039@dt",
            "9@x",
            "a@b@c",
        ] {
            let ts = parse(&format!("{key}=v")).unwrap();
            assert_eq!(ts.get(key), Some("v"), "{key}");
        }
        for (s, want) in [
            ("A=1", BadKey),
            ("aB=1", BadKey),
            ("_a=1", BadKey),
            ("@a=1", BadKey),
            ("a.b=1", BadKey),
            ("a\u{e9}=1", BadKey),
            ("=1", BadKey),
            ("a =1", BadMember),
            ("a", BadMember),
            ("a,b=1", BadMember),
            ("a=1,b", BadMember),
        ] {
            assert_eq!(parse(s), Err(want), "{s}");
        }
        let k256 = "k".repeat(256);
        assert!(parse(&format!("{k256}=v")).is_ok());
        assert_eq!(parse(&format!("{k256}k=v")), Err(BadKey));
    }

    #[test]
    fn values() {
        let printable: String = (0x20u8..=0x7e)
            .filter(|&b| b != b',' && b != b'=')
            .map(char::from)
            .collect();
        let ts = parse(&format!("k={printable}")).unwrap();
        assert_eq!(ts.get("k"), Some(printable.as_str()));
        for s in ["k=a=b", "k=\u{e9}", "k=a\u{7f}", "k=a\nb", "k=a\rb", "k=\0"] {
            assert_eq!(parse(s), Err(BadValue), "{s:?}");
        }
        let v256 = "v".repeat(256);
        assert!(parse(&format!("k={v256}   ")).is_ok());
        assert!(parse(&format!("k= {}", &v256[1..])).is_ok());
        assert_eq!(parse(&format!("k={v256}v")), Err(BadValue));
        assert_eq!(parse(&format!("k= {v256}")), Err(BadValue));
    }

    #[test]
    fn member_limit() {
        let ts = parse(&members(32)).unwrap();
        assert_eq!(ts.len(), 32);
        assert_eq!(ts.get("k31"), Some("v31"));
        assert_eq!(parse(&members(33)), Err(TooManyMembers));
        // Empty members do not count.
        assert_eq!(
            parse(&format!("{},,,, ,", members(32).replace(',', ",,"))).map(|t| t.len()),
            Ok(32)
        );
    }

    #[test]
    fn hostile_inputs_bail_out_fast() {
        assert_eq!(parse(&members(10_000)), Err(TooManyMembers));
        let big = format!("k={}", "v".repeat(1 << 20));
        assert_eq!(parse(&big), Err(BadValue));
        let big = format!("{}=v", "k".repeat(1 << 20));
        assert_eq!(parse(&big), Err(BadKey));
        let spaces = format!("k=v{}", " ".repeat(1 << 20));
        assert!(parse(&spaces).is_ok());
        let commas = ",".repeat(1 << 20);
        assert!(parse(&commas).unwrap().is_empty());
        // Repeated keys count towards the 32 members as received.
        let dups = "a=1,".repeat(10_000);
        assert_eq!(parse(&dups), Err(TooManyMembers));
    }

    #[test]
    fn insert_moves_to_front_and_evicts_the_right_most() {
        let mut ts = parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        ts.insert("congo", "ucfJifl5GOE").unwrap();
        assert_eq!(ts.as_str(), "congo=ucfJifl5GOE,rojo=00f067aa0ba902b7");
        assert_eq!(ts.len(), 2);
        ts.insert("new", "  x").unwrap();
        assert_eq!(
            ts.as_str(),
            "new=  x,congo=ucfJifl5GOE,rojo=00f067aa0ba902b7"
        );
        let mut full = parse(&members(32)).unwrap();
        full.insert("k5", "again").unwrap();
        assert_eq!(full.len(), 32);
        assert_eq!(full.iter().next(), Some(("k5", "again")));
        assert_eq!(full.get("k31"), Some("v31"));
        full.insert("z", "1").unwrap();
        assert_eq!(full.len(), 32);
        assert_eq!(full.get("k31"), None, "the right-most member is evicted");
        assert_eq!(full.iter().next(), Some(("z", "1")));
        assert_eq!(full, parse(full.as_str()).unwrap());
    }

    #[test]
    fn insert_rejects_and_leaves_unchanged() {
        let mut ts = parse("a=1").unwrap();
        let before = ts.clone();
        for (k, v, want) in [
            ("", "1", BadKey),
            ("A", "1", BadKey),
            ("a b", "1", BadKey),
            ("a", "", BadValue),
            ("a", "x ", BadValue),
            ("a", "x,y", BadValue),
            ("a", "x=y", BadValue),
            ("a", "\u{e9}", BadValue),
        ] {
            assert_eq!(ts.insert(k, v), Err(want), "{k:?}={v:?}");
            assert_eq!(ts, before);
        }
        assert_eq!(ts.insert(&"k".repeat(257), "1"), Err(BadKey));
        assert_eq!(ts.insert("k", &"v".repeat(257)), Err(BadValue));
        assert!(ts.insert(&"k".repeat(256), &"v".repeat(256)).is_ok());
    }

    #[test]
    fn remove() {
        let mut ts = parse("a=1,b=2,c=3").unwrap();
        assert!(ts.remove("b"));
        assert!(!ts.remove("b"));
        assert_eq!(ts.as_str(), "a=1,c=3");
        assert_eq!(ts.len(), 2);
        assert!(ts.remove("a") && ts.remove("c"));
        assert_eq!(ts, TraceState::new());
    }

    /// W3C "Mutating the tracestate Field": duplicates are not a parse failure; the first
    /// occurrence of a key is kept, later ones dropped and counted, on one line or across
    /// lines, in normal form or not; the 32-member bound applies to the list as received.
    #[test]
    fn duplicate_keys_keep_the_first_and_are_counted() {
        let counted = |lines: &[&str]| {
            TraceState::parse_counting(lines.iter().map(|l| l.as_bytes()))
                .map(|(ts, n)| (ts.as_str().to_owned(), ts.len(), n))
        };
        assert_eq!(counted(&["a=1,b=2,a=3"]), Ok(("a=1,b=2".into(), 2, 1)));
        assert_eq!(
            counted(&["a=1 , b=2,\ta=3 ,c=4"]),
            Ok(("a=1,b=2,c=4".into(), 3, 1))
        );
        assert_eq!(
            counted(&["a=1", "b=2, a=3", "b=4,c=5"]),
            Ok(("a=1,b=2,c=5".into(), 3, 2))
        );
        assert_eq!(counted(&["a=1,a=1,a=1"]), Ok(("a=1".into(), 1, 2)));
        assert_eq!(counted(&["x=1", "x=2"]), Ok(("x=1".into(), 1, 1)));
        // A line with a repeat is not sent as it came.
        assert_eq!(TraceState::is_normalised_line(b"a=1,b=2,a=3"), Ok(false));
        assert_eq!(TraceState::is_normalised_line(b"a=1,b=2"), Ok(true));
        // 32 received members with repeats: valid; a 33rd, even a repeat: too many.
        let mut m = members(31);
        m.push_str(",k0=again");
        assert_eq!(counted(&[&m]).map(|(_, len, n)| (len, n)), Ok((31, 1)));
        m.push_str(",k1=again");
        assert_eq!(counted(&[&m]), Err(TooManyMembers));
        // Other errors still reject the whole header, after a repeat too.
        assert_eq!(counted(&["a=1,a=2,B=3"]), Err(BadKey));
    }

    #[test]
    fn reasons() {
        let all = [TooManyMembers, BadMember, BadKey, BadValue];
        let set: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(BadKey.to_string(), "invalid tracestate: bad_key");
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_*/@-]{0,20}"
    }

    fn value() -> impl Strategy<Value = String> {
        "[ -+--<>-~]{0,20}[!-+--<>-~]"
    }

    proptest! {
        #[test]
        fn insert_then_reparse(ops in proptest::collection::vec((key(), value()), 0..50)) {
            let mut ts = TraceState::new();
            for (k, v) in &ops {
                ts.insert(k, v).unwrap();
                prop_assert_eq!(ts.iter().next(), Some((k.as_str(), v.as_str())));
                prop_assert!(ts.len() <= MAX_TRACESTATE_MEMBERS);
            }
            let back = parse(ts.as_str()).unwrap();
            prop_assert_eq!(&back, &ts);
        }

        /// `is_normalised_line` (which `ctxpool::http` uses to send a line on without
        /// parsing it into a copy) says yes exactly when `parse` keeps the line as it is,
        /// and rejects exactly what `parse` rejects.
        #[test]
        fn is_normalised_line_agrees_with_parse(
            members in proptest::collection::vec((key(), value(), "[ \t,]{0,2}"), 0..36),
            noise in "[a-z0-9=, \t@A-Z]{0,40}",
            with_noise in any::<bool>(),
        ) {
            let mut line: String = members
                .iter()
                .map(|(k, v, sep)| format!("{k}={v}{sep}"))
                .collect::<Vec<_>>()
                .join(",");
            if with_noise {
                line.push_str(&noise);
            }
            let quick = TraceState::is_normalised_line(line.as_bytes());
            match TraceState::parse([line.as_bytes()]) {
                Ok(ts) => prop_assert_eq!(
                    quick,
                    Ok(!ts.is_empty() && ts.as_str() == line),
                    "{:?}", line
                ),
                Err(e) => prop_assert_eq!(quick, Err(e), "{:?}", line),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "[a-z0-9=, \t@A-Z\u{e9}]{0,200}") {
            if let Ok(ts) = parse(&s) {
                prop_assert!(ts.len() <= MAX_TRACESTATE_MEMBERS);
                prop_assert_eq!(parse(ts.as_str()), Ok(ts.clone()));
            }
        }
    }
}
