//! `baggage` (W3C Baggage, section "Baggage HTTP Header Format").

use std::borrow::Cow;
use std::fmt;

use super::traceparent::trim_ows;

/// The most list-members a [`Baggage`] keeps: the grammar's bound
/// (`baggage-string = list-member 0*179( OWS "," OWS list-member )`). Section "Limits" only
/// requires propagating 64, and lets an implementation keep more.
pub const MAX_BAGGAGE_MEMBERS: usize = 180;
/// The longest normalised `baggage` header a [`Baggage`] keeps, in bytes (section "Limits":
/// "The resulting baggage-string is of size 8192 bytes or less").
pub const MAX_BAGGAGE_BYTES: usize = 8192;
/// The most bytes of received `baggage` header lines (together) that [`Baggage::parse`]
/// reads: four times [`MAX_BAGGAGE_BYTES`], room for generous whitespace and members to drop.
/// Anything longer is refused unread ([`BaggageError::TooLong`]).
pub const MAX_BAGGAGE_INPUT_BYTES: usize = 4 * MAX_BAGGAGE_BYTES;

/// Why a `baggage` header or an insertion was refused.
///
/// | variant | [`reason`](Self::reason) |
/// |---|---|
/// | [`TooLong`](Self::TooLong) | `too_long` |
/// | [`TooManyMembers`](Self::TooManyMembers) | `too_many_members` |
/// | [`BadKey`](Self::BadKey) | `bad_key` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaggageError {
    /// [`Baggage::parse`]: the header lines together exceed [`MAX_BAGGAGE_INPUT_BYTES`].
    /// [`Baggage::insert`]: the result would exceed [`MAX_BAGGAGE_BYTES`].
    TooLong,
    /// [`Baggage::insert`]: the result would exceed [`MAX_BAGGAGE_MEMBERS`].
    TooManyMembers,
    /// [`Baggage::insert`]: the key is not an RFC 9110 `token` (empty, or a byte such as a
    /// space, `=`, `,`, `;`, `"` or non-ASCII).
    BadKey,
}

impl BaggageError {
    /// A short snake_case label, fixed per variant (see the table on the type).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::TooManyMembers => "too_many_members",
            Self::BadKey => "bad_key",
        }
    }
}

impl fmt::Display for BaggageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid baggage: {}", self.reason())
    }
}

impl std::error::Error for BaggageError {}

/// Byte classes of the `baggage` grammar, one bit each in [`CLASS`]: `tchar` (RFC 9110
/// §5.6.2, `token = 1*tchar`, the bytes of a key).
const TCHAR: u8 = 1;
/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`: visible ASCII but `"`,
/// `,`, `;` and `\`.
const OCTET: u8 = 2;
/// A hex digit, either case (`HEXDIG` of a percent-encoded octet).
const HEXDIG: u8 = 4;

/// The class bits of every byte: one load instead of a chain of comparisons.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut bits = 0;
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            bits |= TCHAR;
        }
        if matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) {
            bits |= OCTET;
        }
        if c.is_ascii_hexdigit() {
            bits |= HEXDIG;
        }
        t[b] = bits;
        b += 1;
    }
    t
};

/// `tchar`: a byte of a key.
#[inline]
fn is_tchar(b: u8) -> bool {
    CLASS[usize::from(b)] & TCHAR != 0
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `baggage-octet`: a byte of a value.
#[inline]
fn is_baggage_octet(b: u8) -> bool {
    CLASS[usize::from(b)] & OCTET != 0
}

/// A hex digit, either case.
#[inline]
fn is_hexdig(b: u8) -> bool {
    CLASS[usize::from(b)] & HEXDIG != 0
}

/// A received value (or property value): baggage-octets only, and every `%` starts a
/// percent-encoded octet (`%` and two hex digits, RFC 3986 §2.1), so it always decodes.
fn is_valid_value(v: &[u8]) -> bool {
    // `,` and `;` are not baggage-octets, so a valid value is one `value_end` scans whole.
    value_end(v, 0) == Some(v.len())
}

#[inline]
fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Decodes a stored (valid) value: percent-encoded octets become bytes, and byte sequences
/// that are not UTF-8 become U+FFFD (section "value": "percent-encoded octet sequences that do
/// not match the UTF-8 encoding scheme MUST be replaced with the replacement code point").
pub(crate) fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let v = raw.as_bytes();
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            out.push(hex_val(v[i + 1]) << 4 | hex_val(v[i + 2]));
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Appends `value` percent-encoded: every byte that is not a baggage-octet, and `%` and `=`, as `%XX`
/// (upper-case hex, as the spec's examples); the rest as is.
fn percent_encode_into(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        // `=` is a baggage-octet, but encoded all the same: the value is "a URL encoded
        // UTF-8 string", and parsers that split a member on every `=` (OpenTelemetry's
        // Rust propagator, 0.31 and 0.33) would cut a raw one off (tests/otel_interop.rs).
        if is_baggage_octet(b) && b != b'%' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// The end of a value (or property value) in normalised form starting at `line[i]`: the
/// index of the `,` or `;` after it, or the line's end; `None` at a byte that is not a
/// baggage-octet (OWS included) or a `%` without two hex digits after it.
#[inline]
fn value_end(line: &[u8], mut i: usize) -> Option<usize> {
    while let Some(&b) = line.get(i) {
        if b == b',' || b == b';' {
            break;
        }
        if !is_baggage_octet(b) {
            return None;
        }
        if b == b'%' {
            // The two digits are never `,` or `;`: inside the value, as `is_valid_value` asks.
            if !(i + 2 < line.len() && is_hexdig(line[i + 1]) && is_hexdig(line[i + 2])) {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Some(i)
}

/// The end of a `token` starting at `line[i]`, `None` when it is empty.
#[inline]
fn token_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while i < line.len() && is_tchar(line[i]) {
        i += 1;
    }
    (i > start).then_some(i)
}

/// The number of members of `line` when it is already normalised, every member valid: what
/// [`push_member`] would write for each member is the member itself, and they are joined
/// by single commas (no OWS anywhere, no empty member). `None` for anything else (which the
/// member-by-member path then handles); `Some(0)` for an empty line.
fn normalised_members(line: &[u8]) -> Option<usize> {
    if line.is_empty() {
        return Some(0);
    }
    let mut members = 0;
    let mut i = 0;
    loop {
        // key '=' value
        i = token_end(line, i)?;
        if line.get(i) != Some(&b'=') {
            return None;
        }
        i = value_end(line, i + 1)?;
        // *( ';' pkey [ '=' pvalue ] )
        while line.get(i) == Some(&b';') {
            i = token_end(line, i + 1)?;
            if line.get(i) == Some(&b'=') {
                i = value_end(line, i + 1)?;
            }
        }
        members += 1;
        match line.get(i) {
            None => return Some(members),
            // A ',' must start another member: at the end it would leave an empty one.
            Some(b',') if i + 1 < line.len() => i += 1,
            Some(_) => return None,
        }
    }
}

/// Validates one list-member (without surrounding `OWS`, non-empty) and appends it,
/// normalised (`key=value;pkey;pkey=pvalue`, no whitespace), to `out`; on `false` `out` may
/// hold part of it (the caller truncates).
fn push_member(member: &[u8], out: &mut String) -> bool {
    let Some(eq) = member.iter().position(|&b| b == b'=') else {
        return false;
    };
    let key = trim_ows(&member[..eq]);
    if !is_token(key) {
        return false;
    }
    let mut parts = member[eq + 1..].split(|&b| b == b';');
    let value = trim_ows(parts.next().unwrap_or_default());
    if !is_valid_value(value) {
        return false;
    }
    // Checked above: ASCII only.
    let (Ok(key), Ok(value)) = (core::str::from_utf8(key), core::str::from_utf8(value)) else {
        return false;
    };
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    for property in parts {
        let (pkey, pvalue) = match property.iter().position(|&b| b == b'=') {
            Some(eq) => (
                trim_ows(&property[..eq]),
                Some(trim_ows(&property[eq + 1..])),
            ),
            None => (trim_ows(property), None),
        };
        if !is_token(pkey) || pvalue.is_some_and(|v| !is_valid_value(v)) {
            return false;
        }
        out.push(';');
        out.push_str(core::str::from_utf8(pkey).unwrap_or_default());
        if let Some(v) = pvalue {
            out.push('=');
            out.push_str(core::str::from_utf8(v).unwrap_or_default());
        }
    }
    true
}

/// One member of a [`Baggage`], from [`Baggage::iter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaggageMember<'a> {
    /// The key.
    pub key: &'a str,
    /// The value, percent-decoded (borrowed when it has no `%`).
    pub value: Cow<'a, str>,
    /// The value as sent, percent-encoded.
    pub raw_value: &'a str,
    /// The properties as sent, normalised, without the leading `;`: `""` or
    /// `pkey;pkey=pvalue`, values percent-encoded. See [`properties`](Self::properties).
    pub properties: &'a str,
}

impl<'a> BaggageMember<'a> {
    /// The properties as `(key, value)`, values still percent-encoded (decode with care:
    /// the spec gives them no meaning).
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        let props = self.properties;
        props
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            })
    }

    /// Splits a stored member `key=value;props`.
    fn from_stored(member: &'a str) -> Self {
        let (key, rest) = member.split_once('=').unwrap_or((member, ""));
        let (raw_value, properties) = rest.split_once(';').unwrap_or((rest, ""));
        BaggageMember {
            key,
            value: percent_decode(raw_value),
            raw_value,
            properties,
        }
    }
}

/// A validated W3C `baggage`: application key/value pairs with optional properties, at most
/// [`MAX_BAGGAGE_MEMBERS`] members and [`MAX_BAGGAGE_BYTES`] bytes of header text.
///
/// Held as its normalised header text (`k1=v1;p,k2=v2`, no optional whitespace, values
/// percent-encoded), so sending it is [`as_str`](Self::as_str); values are decoded when read.
/// Keys may repeat (the spec does not forbid it, and asks to keep their order): [`get`](Self::get)
/// returns the last one's value (as OpenTelemetry's propagators do), [`iter`](Self::iter)
/// yields them all, and [`insert`](Self::insert) removes the others.
///
/// ```
/// use ctxpool::propagation::Baggage;
///
/// let lines: [&[u8]; 2] = [b"userId = alice", b"serverNode=DF%2028, name=Am%C3%A9lie;p=1"];
/// let (mut bag, dropped) = Baggage::parse(lines).unwrap();
/// assert_eq!(dropped, 0);
/// assert_eq!(bag.as_str(), "userId=alice,serverNode=DF%2028,name=Am%C3%A9lie;p=1");
/// assert_eq!(bag.get("serverNode").as_deref(), Some("DF 28"));
/// assert_eq!(bag.get("name").as_deref(), Some("Amélie"));
///
/// bag.insert("isProduction", "false; or so").unwrap();
/// assert_eq!(bag.get("isProduction").as_deref(), Some("false; or so"));
/// assert!(bag.as_str().ends_with(",isProduction=false%3B%20or%20so"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Baggage {
    /// `member,member`: each valid and normalised; at most `MAX_BAGGAGE_MEMBERS` members and
    /// `MAX_BAGGAGE_BYTES` bytes.
    text: String,
    /// Members in `text`.
    len: usize,
}

impl Baggage {
    /// An empty baggage.
    pub const fn new() -> Self {
        Baggage {
            text: String::new(),
            len: 0,
        }
    }

    /// Whether `line`, alone, is a baggage that [`parse`](Baggage::parse) would keep whole,
    /// already in the form [`as_str`](Baggage::as_str) gives it (at least one member, none
    /// dropped, no whitespace, within the limits): then the line itself can be sent on, and
    /// parsing it into a `Baggage` (a copy) can wait until someone reads it.
    // Used by `http` (and the tests).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn is_normalised_line(line: &[u8]) -> bool {
        line.len() <= MAX_BAGGAGE_BYTES
            && normalised_members(line).is_some_and(|m| m > 0 && m <= MAX_BAGGAGE_MEMBERS)
    }

    /// Parses the values of every `baggage` header line of a message, in order, and returns
    /// the baggage with the number of list-members dropped.
    ///
    /// Lines are combined as one list (section "Limits": "all limits apply to the combination
    /// of all baggage headers"). Optional whitespace around members, keys, values, `=` and
    /// `;` is dropped; empty members are skipped, not counted (RFC 9110 §5.6.1: "a recipient
    /// MUST parse and ignore a reasonable number of empty list elements").
    ///
    /// - An invalid member (no `=`, a key that is not a `token`, a byte outside
    ///   `baggage-octet` in a value, a `%` not followed by two hex digits, a bad property) is
    ///   dropped and counted: section "Mutating baggage" leaves the handling of a malformed
    ///   `baggage-string` to the implementation ("it MAY remove an offending list-member
    ///   before propagating the rest").
    /// - Members beyond [`MAX_BAGGAGE_MEMBERS`], or that would take the normalised text past
    ///   [`MAX_BAGGAGE_BYTES`], are dropped whole and counted (section "Limits": "a platform
    ///   MAY drop list-members until both conditions are met ... MUST NOT propagate any
    ///   partial list-members"); the earlier members are kept.
    /// - Only when the lines together exceed [`MAX_BAGGAGE_INPUT_BYTES`] is the whole
    ///   header refused, with [`BaggageError::TooLong`], before anything is parsed: no
    ///   legitimate sender gets near it, and it bounds the work spent on a hostile one.
    ///
    /// ```
    /// use ctxpool::propagation::Baggage;
    ///
    /// let (bag, dropped) = Baggage::parse([&b"a=1, no-equals, b c=2, d=\"q\", ,e=%zz,f=2"[..]]).unwrap();
    /// assert_eq!(bag.as_str(), "a=1,f=2");
    /// assert_eq!(dropped, 4);
    /// ```
    pub fn parse<'a, I: IntoIterator<Item = &'a [u8]>>(
        lines: I,
    ) -> Result<(Baggage, usize), BaggageError> {
        let mut bag = Baggage::new();
        let mut dropped = 0;
        let mut input = 0usize;
        for line in lines {
            input = input.saturating_add(line.len());
            if input > MAX_BAGGAGE_INPUT_BYTES {
                return Err(BaggageError::TooLong);
            }
            // A line already normalised, that fits whole: copied as it is (the common case).
            if let Some(members) = normalised_members(line) {
                let sep = usize::from(!bag.text.is_empty());
                if members == 0 {
                    continue;
                }
                if bag.len + members <= MAX_BAGGAGE_MEMBERS
                    && bag.text.len() + sep + line.len() <= MAX_BAGGAGE_BYTES
                {
                    // SAFETY: `normalised_members` returned `Some`, so it accepted every byte
                    // of `line`, and it accepts only tchars, baggage-octets, `=`, `;` and
                    // `,`: ASCII, so UTF-8.
                    let text = unsafe { core::str::from_utf8_unchecked(line) };
                    bag.text.reserve(sep + text.len());
                    if sep == 1 {
                        bag.text.push(',');
                    }
                    bag.text.push_str(text);
                    bag.len += members;
                    continue;
                }
            }
            // One allocation for a well-formed line: its normalised text is never longer.
            bag.text.reserve(line.len().min(MAX_BAGGAGE_BYTES) + 1);
            for member in line.split(|&b| b == b',') {
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                let mark = bag.text.len();
                if mark > 0 {
                    bag.text.push(',');
                }
                if !push_member(member, &mut bag.text)
                    || bag.len == MAX_BAGGAGE_MEMBERS
                    || bag.text.len() > MAX_BAGGAGE_BYTES
                {
                    bag.text.truncate(mark);
                    dropped += 1;
                    continue;
                }
                bag.len += 1;
            }
        }
        Ok((bag, dropped))
    }

    /// The header value to send (`""` when empty).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of members (at most [`MAX_BAGGAGE_MEMBERS`]), repeated keys included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The decoded value of `key` (of its last member if it repeats).
    pub fn get(&self, key: &str) -> Option<Cow<'_, str>> {
        self.members()
            .rev()
            .find(|m| m.split_once('=').is_some_and(|(k, _)| k == key))
            .map(|m| BaggageMember::from_stored(m).value)
    }

    /// The members in order: key, decoded value, raw value and properties.
    pub fn iter(&self) -> impl Iterator<Item = BaggageMember<'_>> {
        self.members().map(BaggageMember::from_stored)
    }

    /// The stored members' text.
    fn members(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.text.split(',').filter(|m| !m.is_empty())
    }

    /// Sets `key` to `value` (percent-encoded as needed, so any text is a value), without
    /// properties, as the last member; every earlier member with that key goes (section
    /// "Mutating baggage" allows updating a value and removing duplicates).
    ///
    /// Fails, leaving `self` unchanged, when `key` is not a `token`, or when the result would
    /// exceed [`MAX_BAGGAGE_MEMBERS`] or [`MAX_BAGGAGE_BYTES`].
    ///
    /// ```
    /// use ctxpool::propagation::{Baggage, BaggageError};
    ///
    /// let mut bag = Baggage::new();
    /// bag.insert("k", "a,b;c=d%").unwrap();
    /// assert_eq!(bag.as_str(), "k=a%2Cb%3Bc%3Dd%25");
    /// assert_eq!(bag.get("k").as_deref(), Some("a,b;c=d%"));
    /// assert_eq!(bag.insert("bad key", "x"), Err(BaggageError::BadKey));
    /// ```
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), BaggageError> {
        if !is_token(key.as_bytes()) {
            return Err(BaggageError::BadKey);
        }
        let (mut text, len) = self.without(key, key.len() + 1 + value.len());
        if len == MAX_BAGGAGE_MEMBERS {
            return Err(BaggageError::TooManyMembers);
        }
        // Checked before encoding: a huge value is refused without building it.
        let sep = usize::from(!text.is_empty());
        if text.len() + sep + key.len() + 1 + value.len() > MAX_BAGGAGE_BYTES {
            return Err(BaggageError::TooLong);
        }
        if sep == 1 {
            text.push(',');
        }
        text.push_str(key);
        text.push('=');
        percent_encode_into(value, &mut text);
        if text.len() > MAX_BAGGAGE_BYTES {
            return Err(BaggageError::TooLong);
        }
        self.text = text;
        self.len = len + 1;
        Ok(())
    }

    /// The text of every member but those with `key`, and how many there are; `extra` bytes
    /// of capacity to spare.
    fn without(&self, key: &str, extra: usize) -> (String, usize) {
        let mut text = String::with_capacity(self.text.len() + extra);
        let mut len = 0;
        for m in self.members() {
            if m.split_once('=').is_some_and(|(k, _)| k == key) {
                continue;
            }
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(m);
            len += 1;
        }
        (text, len)
    }

    /// Removes every member with `key`; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.len;
        let (text, len) = self.without(key, 0);
        self.text = text;
        self.len = len;
        len != before
    }
}

impl AsRef<str> for Baggage {
    /// The header value, as [`as_str`](Self::as_str).
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Baggage {
    /// The header value, as [`as_str`](Self::as_str).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> (Baggage, usize) {
        Baggage::parse([s.as_bytes()]).unwrap()
    }

    #[test]
    fn spec_examples() {
        let (bag, d) = parse("key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue");
        assert_eq!(d, 0);
        assert_eq!(bag.len(), 3);
        assert_eq!(
            bag.as_str(),
            "key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue"
        );
        let m: Vec<_> = bag.iter().collect();
        assert_eq!(m[0].key, "key1");
        assert_eq!(m[0].value, "value1");
        assert_eq!(m[0].properties, "property1;property2");
        assert_eq!(
            m[0].properties().collect::<Vec<_>>(),
            [("property1", None), ("property2", None)]
        );
        assert_eq!(
            m[2].properties().collect::<Vec<_>>(),
            [("propertyKey", Some("propertyValue"))]
        );
        assert_eq!(m[1].properties().count(), 0);

        let (bag, _) = parse("userId=Am%C3%A9lie,serverNode=DF%2028,isProduction=false");
        assert_eq!(bag.get("userId").as_deref(), Some("Amélie"));
        assert_eq!(bag.get("serverNode").as_deref(), Some("DF 28"));
        assert!(matches!(
            bag.get("isProduction"),
            Some(Cow::Borrowed("false"))
        ));
        assert_eq!(bag.get("nope"), None);

        let lines: [&[u8]; 2] = [
            b"userId =   alice",
            b"serverNode = DF%2028, isProduction = false",
        ];
        let (bag, d) = Baggage::parse(lines).unwrap();
        assert_eq!((bag.len(), d), (3, 0));
        assert_eq!(
            bag.as_str(),
            "userId=alice,serverNode=DF%2028,isProduction=false"
        );
        assert_eq!(bag.to_string(), bag.as_str());
    }

    #[test]
    fn values_and_properties() {
        let (bag, d) = parse("a=,b=x=y=,c= ;p ; q = 1=2 ,d=%41%4a%4A");
        assert_eq!(d, 0);
        assert_eq!(bag.as_str(), "a=,b=x=y=,c=;p;q=1=2,d=%41%4a%4A");
        assert_eq!(bag.get("a").as_deref(), Some(""));
        assert_eq!(bag.get("b").as_deref(), Some("x=y="));
        assert_eq!(bag.get("d").as_deref(), Some("AJJ"));
        // Invalid UTF-8 once decoded: U+FFFD.
        let (bag, _) = parse("k=%FF%C3,j=a%E2%82");
        assert_eq!(bag.get("k").as_deref(), Some("\u{fffd}\u{fffd}"));
        assert_eq!(bag.get("j").as_deref(), Some("a\u{fffd}"));
    }

    #[test]
    fn invalid_members_are_dropped_and_counted() {
        for bad in [
            "noequals",
            "=v",
            " =v",
            "a b=v",
            "k\u{e9}=v",
            "k=a b",
            "k=\"q\"",
            "k=a\\b",
            "k=\u{e9}",
            "k=%",
            "k=%4",
            "k=%zz",
            "k=v;",
            "k=v;;p",
            "k=v;=1",
            "k=v;p=\"",
            "k=v;p=%g0",
            "k=v;a b",
            "k=\x7f",
            "k=\t\tv\tw",
        ] {
            let (bag, d) = parse(&format!("a=1,{bad},z=2"));
            assert_eq!((bag.as_str(), d), ("a=1,z=2", 1), "{bad:?}");
        }
        let (bag, d) = parse("a, b, c");
        assert!(bag.is_empty());
        assert_eq!(d, 3);
    }

    #[test]
    fn empty_members_are_skipped() {
        for s in ["", " ", ",", " ,\t, ,,"] {
            let (bag, d) = parse(s);
            assert!(bag.is_empty() && bag.as_str().is_empty());
            assert_eq!(d, 0, "{s:?}");
        }
        let (bag, d) = parse(",a=1,, ,b=2,");
        assert_eq!((bag.as_str(), d), ("a=1,b=2", 0));
    }

    #[test]
    fn duplicates_are_kept_and_the_last_wins() {
        let (mut bag, _) = parse("k=1,j=0,k=2");
        assert_eq!(bag.len(), 3);
        assert_eq!(bag.get("k").as_deref(), Some("2"));
        assert_eq!(bag.iter().filter(|m| m.key == "k").count(), 2);
        bag.insert("k", "3").unwrap();
        assert_eq!(bag.as_str(), "j=0,k=3");
        assert!(bag.remove("k"));
        assert!(!bag.remove("k"));
        assert_eq!((bag.as_str(), bag.len()), ("j=0", 1));
    }

    #[test]
    fn member_limit() {
        let s = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (bag, d) = parse(&s(180));
        assert_eq!((bag.len(), d), (180, 0));
        let (bag, d) = parse(&s(181));
        assert_eq!((bag.len(), d), (180, 1));
        assert_eq!(bag.get("k180"), None);
        assert!(bag.get("k179").is_some());
        let mut full = bag;
        assert_eq!(full.insert("x", "1"), Err(BaggageError::TooManyMembers));
        // Replacing a key keeps the count.
        full.insert("k0", "1").unwrap();
        assert_eq!(full.len(), 180);
    }

    #[test]
    fn byte_limit() {
        // One member of exactly 8192 bytes fits, one more byte does not.
        let v = "v".repeat(MAX_BAGGAGE_BYTES - 2);
        let (bag, d) = parse(&format!("k={v}"));
        assert_eq!((bag.as_str().len(), d), (MAX_BAGGAGE_BYTES, 0));
        let (bag, d) = parse(&format!("k={v}v"));
        assert_eq!((bag.len(), d), (0, 1));
        // Whitespace does not count: the normalised text is measured.
        let (bag, d) = parse(&format!("  k = {v}  "));
        assert_eq!((bag.as_str().len(), d), (MAX_BAGGAGE_BYTES, 0));
        // Members that do not fit are dropped whole; a later small one may still fit.
        let big = "b".repeat(5000);
        let (bag, d) = parse(&format!("a={big},b={big},c=1"));
        assert_eq!(d, 1);
        assert_eq!(bag.len(), 2);
        assert!(bag.get("b").is_none() && bag.get("c").is_some());
        // insert refuses to pass the limit.
        let mut bag = Baggage::new();
        bag.insert("k", &v).unwrap();
        assert_eq!(bag.insert("j", ""), Err(BaggageError::TooLong));
        assert_eq!(bag.as_str().len(), MAX_BAGGAGE_BYTES);
        // The limit is on the encoded text: 'é' is 2 bytes, 6 once encoded.
        let mut bag = Baggage::new();
        assert_eq!(
            bag.insert("k", &"\u{e9}".repeat(1400)),
            Err(BaggageError::TooLong)
        );
        assert!(bag.is_empty());
        bag.insert("k", &"\u{e9}".repeat(1365)).unwrap();
        assert_eq!(bag.as_str().len(), 2 + 1365 * 6);
    }

    #[test]
    fn input_limit() {
        let line = "a".repeat(MAX_BAGGAGE_INPUT_BYTES);
        assert!(Baggage::parse([line.as_bytes()]).is_ok());
        let longer = format!("{line}a");
        assert_eq!(
            Baggage::parse([longer.as_bytes()]),
            Err(BaggageError::TooLong)
        );
        let half = "a=1,".repeat(MAX_BAGGAGE_INPUT_BYTES / 8);
        assert!(Baggage::parse([half.as_bytes(), half.as_bytes()]).is_ok());
        assert_eq!(
            Baggage::parse([half.as_bytes(), half.as_bytes(), b"x"]),
            Err(BaggageError::TooLong)
        );
    }

    #[test]
    fn hostile_inputs_are_fast() {
        let many = "a=1,".repeat(10_000);
        assert_eq!(
            Baggage::parse([many.as_bytes()]),
            Err(BaggageError::TooLong)
        );
        let many = "a=1,".repeat(8_000);
        let (bag, d) = Baggage::parse([many.as_bytes()]).unwrap();
        assert_eq!((bag.len(), d), (180, 8_000 - 180));
        let mib = format!("k={}", "v".repeat(1 << 20));
        assert_eq!(Baggage::parse([mib.as_bytes()]), Err(BaggageError::TooLong));
        let mut bag = Baggage::new();
        assert_eq!(bag.insert("k", &mib), Err(BaggageError::TooLong));
    }

    #[test]
    fn insert_encodes_what_it_must() {
        let mut bag = Baggage::new();
        bag.insert("k", "a b\"c,d;e\\f%g=h\u{e9}\u{1f600}\t\n")
            .unwrap();
        assert_eq!(
            bag.as_str(),
            "k=a%20b%22c%2Cd%3Be%5Cf%25g%3Dh%C3%A9%F0%9F%98%80%09%0A"
        );
        assert_eq!(
            bag.get("k").as_deref(),
            Some("a b\"c,d;e\\f%g=h\u{e9}\u{1f600}\t\n")
        );
        for key in ["", "a b", "a=b", "a,b", "a;b", "\u{e9}", "a\"b"] {
            assert_eq!(bag.insert(key, "v"), Err(BaggageError::BadKey), "{key:?}");
        }
        bag.insert("!#$%&'*+-.^_`|~09azAZ", "v").unwrap();
        assert_eq!(bag.len(), 2);
    }

    #[test]
    fn reasons() {
        use BaggageError::*;
        let all = [TooLong, TooManyMembers, BadKey];
        let set: std::collections::BTreeSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(BadKey.to_string(), "invalid baggage: bad_key");
    }

    proptest! {
        #[test]
        fn insert_as_str_parse_get(
            ops in proptest::collection::vec(("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}", "(?s).{0,16}"), 0..20)
        ) {
            let mut bag = Baggage::new();
            let mut model = std::collections::BTreeMap::new();
            for (k, v) in &ops {
                bag.insert(k, v).unwrap();
                model.insert(k.clone(), v.clone());
                let got = bag.get(k);
                prop_assert_eq!(got.as_deref(), Some(v.as_str()));
            }
            let (back, dropped) = Baggage::parse([bag.as_str().as_bytes()]).unwrap();
            prop_assert_eq!(dropped, 0);
            prop_assert_eq!(&back, &bag);
            prop_assert_eq!(back.len(), model.len());
            for (k, v) in &model {
                let got = back.get(k);
                prop_assert_eq!(got.as_deref(), Some(v.as_str()));
            }
        }

        /// `is_normalised_line` (which `ctxpool::http` uses to send a line on without
        /// parsing it into a copy) says yes exactly when `parse` keeps the whole line as it
        /// is, dropping nothing.
        #[test]
        fn is_normalised_line_agrees_with_parse(
            s in "[a-z=,; \t%0-9A-F\"\u{e9}]{0,120}",
            long in 0usize..200,
        ) {
            for line in [s.clone(), vec!["k=v"; long].join(","), "k=".to_string() + &"v".repeat(long * 50)] {
                let (bag, dropped) = parse(&line);
                let kept_whole = dropped == 0 && !bag.is_empty() && bag.as_str() == line;
                prop_assert_eq!(Baggage::is_normalised_line(line.as_bytes()), kept_whole, "{:?}", line);
            }
        }

        #[test]
        fn parse_is_idempotent(s in "[a-z=,; \t%0-9A-F\"\u{e9}]{0,120}") {
            let (bag, dropped) = parse(&s);
            prop_assert!(bag.len() + dropped <= s.split(',').count());
            let (again, d2) = parse(bag.as_str());
            prop_assert_eq!(d2, 0);
            prop_assert_eq!(again, bag);
        }
    }
}
