//! The check of the `http_extract` fuzz target, shared by `fuzz/fuzz_targets/http_extract.rs`
//! (libFuzzer, nightly) and `tests/corpus.rs` (replay of `fuzz/corpus/http_extract/` on
//! stable). Needs feature `http`.
//!
//! The input is a peer selector byte, then header lines `name: value` separated by `\n`
//! (names of the propagation headers are likeliest; any value bytes the `http` crate accepts).
//! `Propagator::extract` must never panic, and what it makes must hold every limit; `inject`
//! of the result, extracted again, must give the same trace, request id, trace state and
//! baggage, a deadline no later than the first, and a user id only towards a trusted peer.

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use ctxpool::http::{Propagator, TRACEPARENT};
use ctxpool::propagation::{
    parse_grpc_timeout, parse_traceparent, MAX_BAGGAGE_BYTES, MAX_REQUEST_ID_LEN,
    MAX_TRACESTATE_MEMBERS,
};
use ctxpool::{Config, ContextError, Pool};
use http::{HeaderMap, HeaderName, HeaderValue};

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

fn propagator() -> &'static Propagator {
    static P: OnceLock<Propagator> = OnceLock::new();
    P.get_or_init(|| {
        let mut cfg = Config {
            default_timeout: Duration::from_secs(10),
            max_timeout: MAX_TIMEOUT,
            ..Config::default()
        };
        cfg.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
        let pool = Pool::builder().config(&cfg).build().unwrap();
        Propagator::new(&pool)
    })
}

/// The header map of `data` after its first byte.
fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = match &line[..colon] {
            b"tp" => HeaderName::from_static("traceparent"),
            b"ts" => HeaderName::from_static("tracestate"),
            b"bg" => HeaderName::from_static("baggage"),
            b"id" => HeaderName::from_static("x-request-id"),
            b"gt" => HeaderName::from_static("grpc-timeout"),
            b"u" => HeaderName::from_static("x-user-id"),
            other => match HeaderName::from_bytes(other) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let mut value = &line[colon + 1..];
        if value.first() == Some(&b' ') {
            value = &value[1..];
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            map.append(name, v);
        }
    }
    map
}

pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let peer: Option<IpAddr> = match selector % 3 {
        0 => None,
        1 => Some("10.1.2.3".parse().unwrap()),
        _ => Some("192.0.2.1".parse().unwrap()),
    };
    let p = propagator();
    let incoming = headers(rest);
    let req = p.extract(&incoming, peer);
    let ctx = req.context();
    let meta = req.meta();

    let trace = ctx.trace().expect("every request has a trace");
    assert_ne!(trace.trace_id, 0);
    assert_ne!(trace.span_id, 0);
    let id = meta.request_id();
    assert!((1..=MAX_REQUEST_ID_LEN).contains(&id.as_str().len()));
    assert!(id.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
    assert_eq!(ctx.request_id(), Some(id.id()));
    assert!(meta.tracestate().len() <= MAX_TRACESTATE_MEMBERS);
    assert!(meta.baggage().as_str().len() <= MAX_BAGGAGE_BYTES);
    if !matches!(peer, Some(IpAddr::V4(a)) if a.octets()[0] == 10) {
        assert_eq!(meta.user_id(), None, "x-user-id from an untrusted peer");
    }
    let left = ctx.remaining().expect("every request has a deadline");
    assert!(left <= MAX_TIMEOUT);
    if let Some(v) = incoming.get(TRACEPARENT) {
        if incoming.get_all(TRACEPARENT).iter().count() == 1 {
            if let Ok(tc) = parse_traceparent(v.as_bytes()) {
                assert_eq!(trace.trace_id, tc.trace_id, "a valid traceparent continues");
                assert_eq!(meta.parent_span(), Some(tc.span_id));
            }
        }
    }

    // The same request among enough other header lines that `extract` looks each
    // propagation header up instead of walking the map: the same outcome.
    let mut padded = incoming.clone();
    for i in 0..25 {
        padded.append(
            HeaderName::try_from(format!("x-pad-{i}")).unwrap(),
            HeaderValue::from_static("traceparent"),
        );
    }
    let other = p.extract(&padded, peer);
    let om = other.meta();
    assert_eq!(om.parent_span(), meta.parent_span());
    if meta.parent_span().is_some() {
        assert_eq!(other.context().trace().unwrap().trace_id, trace.trace_id);
    }
    assert_eq!(om.tracestate(), meta.tracestate());
    assert_eq!(om.baggage().as_str(), meta.baggage().as_str());
    assert_eq!(om.user_id(), meta.user_id());
    assert_eq!(om.incoming_timeout(), meta.incoming_timeout());
    let ids = incoming.get_all("x-request-id").iter().collect::<Vec<_>>();
    if let [v] = ids[..] {
        if v.as_bytes() == id.as_str().as_bytes() {
            assert_eq!(om.request_id().as_str(), id.as_str(), "a kept request id");
        }
    }
    drop(other);

    let mut out = HeaderMap::new();
    match p.inject(&ctx, meta, &mut out, peer) {
        Err(ContextError::DeadlineExceeded) => {
            assert!(out.is_empty(), "a refused call writes nothing");
            return;
        }
        Err(e) => panic!("an uncancelled context failed to inject: {e:?}"),
        Ok(()) => {}
    }
    let sent = parse_traceparent(out[TRACEPARENT].as_bytes()).expect("we send valid traceparents");
    assert_eq!(sent.trace_id, trace.trace_id);
    assert_eq!(sent.flags, trace.flags);
    assert_ne!(sent.span_id, trace.span_id, "a new span per call");
    let budget = parse_grpc_timeout(out["grpc-timeout"].as_bytes()).expect("a valid grpc-timeout");
    assert!(budget <= left);

    // What we send, extracted again, is the same request (from a trusted peer, so the user
    // id travels too when it was sent).
    let again = p.extract(&out, Some("10.9.9.9".parse().unwrap()));
    let t2 = again.context().trace().unwrap();
    assert_eq!(t2.trace_id, trace.trace_id);
    assert_eq!(again.meta().parent_span(), Some(sent.span_id));
    assert_eq!(again.meta().request_id().as_str(), id.as_str());
    assert_eq!(again.meta().tracestate(), meta.tracestate());
    assert_eq!(again.meta().baggage().as_str(), meta.baggage().as_str());
    assert!(again.context().remaining().unwrap() <= budget + Duration::from_millis(1));
    let sent_user = out.contains_key("x-user-id");
    assert_eq!(
        again.meta().user_id(),
        if sent_user { meta.user_id() } else { None }
    );
}
