//! The checks of the header-parser fuzz targets, shared by `fuzz/fuzz_targets/<name>.rs`
//! (libFuzzer, nightly) and `tests/corpus.rs` (replay of `fuzz/corpus/<name>/` on stable).
//! The configuration target's check is in `fuzz_config.rs` (it needs feature `serde`).
//!
//! Each function takes the raw fuzz input and asserts properties beyond "does not panic":
//! what parses writes back to text that parses to the same value, limits hold, errors are
//! classified consistently, and the multi-line parsers treat a line break as a comma.

// Each fuzz target includes this file for one of its functions.
#![allow(dead_code)]

use std::time::Duration;

use ctxpool::propagation::*;
use ctxpool::UserId;

/// `data` split at `\n` into header lines (so the multi-line combining is fuzzed too).
fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == b'\n').collect()
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `traceparent`: a parsed value has non-zero ids and known flags, writes back as a version-00
/// value holding the same fields (the same text as the input's, but for the version and the
/// cleared flags), and whitespace around the value changes nothing.
pub fn traceparent(data: &[u8]) {
    let parsed = parse_traceparent(data);
    let mut padded = b" \t".to_vec();
    padded.extend_from_slice(data);
    padded.push(b' ');
    assert_eq!(parse_traceparent(&padded), parsed, "OWS around the value");
    match parsed {
        Ok(tc) => {
            assert_ne!(tc.trace_id, 0);
            assert_ne!(tc.span_id, 0);
            assert_eq!(tc.flags & !KNOWN_FLAGS, 0);
            let mut buf = [0u8; TRACEPARENT_LEN];
            let text = format_traceparent(&tc, &mut buf);
            assert_eq!(text.len(), TRACEPARENT_LEN);
            assert_eq!(parse_traceparent(text.as_bytes()), Ok(tc));
            let start = data.iter().position(|&b| !is_ows(b)).unwrap_or(0);
            let trimmed = &data[start..];
            assert!(trimmed.len() >= TRACEPARENT_LEN);
            assert_eq!(&text.as_bytes()[2..52], &trimmed[2..52], "ids as received");
            if trimmed.starts_with(b"00") {
                assert_eq!(
                    trimmed.len() - trimmed.iter().rev().take_while(|&&b| is_ows(b)).count(),
                    TRACEPARENT_LEN
                );
            }
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
}

/// `tracestate`: at most 32 unique members, the text reparses to the same state, line breaks
/// act as commas (for errors too), and an insert keeps every invariant.
pub fn tracestate(data: &[u8]) {
    let parsed = TraceState::parse(lines(data));
    let joined: Vec<u8> = data
        .iter()
        .map(|&b| if b == b'\n' { b',' } else { b })
        .collect();
    assert_eq!(
        TraceState::parse([&joined[..]]),
        parsed,
        "lines combine as commas"
    );
    let Ok(mut ts) = parsed else {
        return;
    };
    assert!(ts.len() <= MAX_TRACESTATE_MEMBERS);
    assert_eq!(ts.iter().count(), ts.len());
    assert_eq!(ts.is_empty(), ts.as_str().is_empty());
    let mut keys = std::collections::HashSet::new();
    for (k, v) in ts.iter() {
        assert!(keys.insert(k), "duplicate key {k}");
        assert_eq!(ts.get(k), Some(v));
        assert!(k.len() <= MAX_TRACESTATE_KEY_LEN && v.len() <= MAX_TRACESTATE_VALUE_LEN);
        assert!(!v.ends_with(' '));
    }
    assert_eq!(
        TraceState::parse([ts.as_str().as_bytes()]).as_ref(),
        Ok(&ts)
    );
    let first = ts.iter().next().map(|(k, v)| (k.to_owned(), v.to_owned()));
    ts.insert("fuzz@ctxpool", "x").unwrap();
    assert_eq!(ts.iter().next(), Some(("fuzz@ctxpool", "x")));
    assert!(ts.len() <= MAX_TRACESTATE_MEMBERS);
    if let Some((k, v)) = first {
        if k != "fuzz@ctxpool" {
            ts.insert(&k, &v).unwrap();
            assert_eq!(ts.iter().next(), Some((k.as_str(), v.as_str())));
        }
    }
    assert_eq!(TraceState::parse([ts.as_str().as_bytes()]), Ok(ts));
}

/// `baggage`: limits hold, the text reparses to the same baggage with nothing dropped, `get`
/// agrees with `iter`, line breaks act as commas, and an inserted value (the input itself,
/// as text) reads back unchanged.
pub fn baggage(data: &[u8]) {
    let parsed = Baggage::parse(lines(data));
    let line_bytes = data.iter().filter(|&&b| b != b'\n').count();
    match &parsed {
        Err(e) => {
            assert_eq!(*e, BaggageError::TooLong);
            assert!(line_bytes > MAX_BAGGAGE_INPUT_BYTES);
        }
        Ok(_) => assert!(line_bytes <= MAX_BAGGAGE_INPUT_BYTES),
    }
    if data.len() <= MAX_BAGGAGE_INPUT_BYTES {
        let joined: Vec<u8> = data
            .iter()
            .map(|&b| if b == b'\n' { b',' } else { b })
            .collect();
        assert_eq!(
            Baggage::parse([&joined[..]]),
            parsed,
            "lines combine as commas"
        );
    }
    let Ok((mut bag, _dropped)) = parsed else {
        return;
    };
    assert!(bag.len() <= MAX_BAGGAGE_MEMBERS);
    assert!(bag.as_str().len() <= MAX_BAGGAGE_BYTES);
    assert_eq!(bag.iter().count(), bag.len());
    assert_eq!(bag.is_empty(), bag.as_str().is_empty());
    let mut last = std::collections::HashMap::new();
    for m in bag.iter() {
        assert!(!m.key.is_empty());
        last.insert(m.key, m.value);
    }
    for (key, value) in &last {
        assert_eq!(bag.get(key).as_ref(), Some(value), "{key}");
    }
    assert_eq!(
        Baggage::parse([bag.as_str().as_bytes()]),
        Ok((bag.clone(), 0))
    );
    let value = String::from_utf8_lossy(data);
    match bag.insert("fuzz", &value) {
        Ok(()) => {
            assert_eq!(bag.get("fuzz").as_deref(), Some(&*value));
            assert_eq!(bag.iter().last().map(|m| m.key), Some("fuzz"));
            assert!(bag.as_str().len() <= MAX_BAGGAGE_BYTES);
            assert_eq!(Baggage::parse([bag.as_str().as_bytes()]), Ok((bag, 0)));
        }
        Err(e) => assert!(matches!(
            e,
            BaggageError::TooLong | BaggageError::TooManyMembers
        )),
    }
}

/// `grpc-timeout`: what parses is 2 to 9 bytes and writes back to the same duration; and the
/// input read as a duration (12 bytes: seconds and nanoseconds) writes as a value that parses
/// back to at most that duration, less by under one unit (or is the 99999999H cap).
pub fn grpc_timeout(data: &[u8]) {
    let mut buf = [0u8; GRPC_TIMEOUT_MAX_LEN];
    match parse_grpc_timeout(data) {
        Ok(d) => {
            assert!((2..=GRPC_TIMEOUT_MAX_LEN).contains(&data.len()));
            let text = format_grpc_timeout(d, &mut buf);
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(d), "{text}");
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
    let mut raw = [0u8; 12];
    let n = data.len().min(12);
    raw[..n].copy_from_slice(&data[..n]);
    let secs = u64::from_le_bytes(raw[..8].try_into().unwrap());
    let nanos = u32::from_le_bytes(raw[8..].try_into().unwrap()) % 1_000_000_000;
    let d = Duration::new(secs, nanos);
    let text = format_grpc_timeout(d, &mut buf).to_owned();
    assert!(text.len() <= GRPC_TIMEOUT_MAX_LEN);
    let back = parse_grpc_timeout(text.as_bytes()).unwrap();
    assert!(back <= d, "{d:?} -> {text} -> {back:?}");
    let unit = match text.as_bytes()[text.len() - 1] {
        b'n' => Duration::from_nanos(1),
        b'u' => Duration::from_micros(1),
        b'm' => Duration::from_millis(1),
        b'S' => Duration::from_secs(1),
        b'M' => Duration::from_secs(60),
        _ => Duration::from_secs(3600),
    };
    assert!(d - back < unit || text == "99999999H", "{d:?} -> {text}");
}

/// `x-request-id` and `x-user-id`: the request id keeps exactly the input when valid, the
/// error class follows from the input, the inline id is stable; the user id agrees with std's
/// `u64` parser on digit-only input and rejects everything else.
pub fn request_id(data: &[u8]) {
    match XRequestId::parse(data) {
        Ok(id) => {
            assert_eq!(id.as_bytes(), data);
            assert_eq!(id.as_str().as_bytes(), data);
            assert!((1..=MAX_REQUEST_ID_LEN).contains(&data.len()));
            assert_eq!(XRequestId::parse(id.as_bytes()), Ok(id));
            assert_eq!(id.id(), XRequestId::parse(data).unwrap().id());
            let hex16 = data.len() == 16
                && data
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
            if hex16 {
                assert_eq!(id.id().to_string(), id.as_str());
            }
        }
        Err(e) => {
            let want = if data.is_empty() {
                RequestIdError::Empty
            } else if data.len() > MAX_REQUEST_ID_LEN {
                RequestIdError::TooLong
            } else {
                RequestIdError::NotVisibleAscii
            };
            assert_eq!(e, want);
            if e == RequestIdError::NotVisibleAscii {
                assert!(data.iter().any(|b| !(0x21..=0x7e).contains(b)));
            }
        }
    }
    let reference = if !data.is_empty() && data.len() <= 20 && data.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(data).unwrap().parse::<u64>().ok()
    } else {
        None
    };
    assert_eq!(parse_user_id(data).ok(), reference.map(UserId));
}
