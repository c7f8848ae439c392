//! `Propagator::extract` and `inject` against hostile and malformed headers: a table of
//! cases, each with the fallback it must get and the counter it must bump; none may panic.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctxpool::http::{Header, Propagator, BAGGAGE, GRPC_TIMEOUT, TRACEPARENT, TRACESTATE};
use ctxpool::{Config, ContextError, Pool, UserId};
use http::{HeaderMap, HeaderName, HeaderValue};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const TRUSTED: &str = "10.1.2.3";
const UNTRUSTED: &str = "192.0.2.7";

/// The pool's clock tick: a deadline is at most this much after the instant asked for.
const TICK: Duration = Duration::from_millis(1);

fn pool() -> Pool {
    let mut cfg = Config {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    cfg.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
    Pool::builder().config(&cfg).build().unwrap()
}

/// What a case expects.
#[derive(Clone, Copy, Debug, Default)]
struct Expect {
    /// The incoming trace continues (else a new one starts).
    trace_kept: bool,
    tracestate_kept: bool,
    baggage_members: Option<usize>,
    /// The incoming x-request-id is kept (else one is generated).
    request_id_kept: bool,
    /// The deadline is the default 30 s (else the incoming one, clamped to 60 s).
    default_deadline: bool,
    user_id: Option<u64>,
}

struct Case {
    name: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    peer: &'static str,
    expect: Expect,
    /// (header, reason or "" for any, count) rejections this case must add.
    rejected: Vec<(Header, &'static str, u64)>,
}

fn case(
    name: &'static str,
    headers: &[(&'static str, &[u8])],
    expect: Expect,
    rejected: &[(Header, &'static str, u64)],
) -> Case {
    Case {
        name,
        headers: headers.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        peer: UNTRUSTED,
        expect,
        rejected: rejected.to_vec(),
    }
}

fn tracestate_members(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

fn table() -> Vec<Case> {
    let ok = Expect {
        trace_kept: true,
        default_deadline: true,
        ..Expect::default()
    };
    let fresh = Expect {
        default_deadline: true,
        ..Expect::default()
    };
    let tp = TP.as_bytes();
    let big = vec![b'a'; 64 * 1024];
    let mut upper = TP.to_owned().into_bytes();
    upper[3..35].make_ascii_uppercase();
    let mut cases = vec![
        case("valid traceparent", &[("traceparent", tp)], ok, &[]),
        case(
            "oversized traceparent",
            &[("traceparent", &big)],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "non-ASCII traceparent",
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01".as_bytes(),
            )],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "duplicated traceparent",
            &[("traceparent", tp), ("traceparent", tp)],
            fresh,
            &[(Header::TraceParent, "duplicate", 1)],
        ),
        case(
            "uppercase traceparent",
            &[("traceparent", &upper)],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "version ff",
            &[(
                "traceparent",
                b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "all-zero trace id",
            &[(
                "traceparent",
                b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "CRLF-looking traceparent",
            &[(
                "traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\\r\\nx-user-id: 1",
            )],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "empty traceparent",
            &[("traceparent", b"")],
            fresh,
            &[(Header::TraceParent, "", 1)],
        ),
        case(
            "tracestate without traceparent",
            &[("tracestate", b"a=1")],
            fresh,
            &[(Header::TraceState, "no_traceparent", 1)],
        ),
        case(
            "tracestate kept",
            &[("traceparent", tp), ("tracestate", b"a=1,b=2")],
            Expect {
                tracestate_kept: true,
                ..ok
            },
            &[],
        ),
        case(
            "tracestate with repeated keys: the first kept, the rest counted",
            &[("traceparent", tp), ("tracestate", b"a=1,b=2,a=3,b=4")],
            Expect {
                tracestate_kept: true,
                ..ok
            },
            &[(Header::TraceState, "duplicate_key", 2)],
        ),
        case(
            "tracestate with a key repeated on a second line",
            &[
                ("traceparent", tp),
                ("tracestate", b"a=1"),
                ("tracestate", b"a=2,c=3"),
            ],
            Expect {
                tracestate_kept: true,
                ..ok
            },
            &[(Header::TraceState, "duplicate_key", 1)],
        ),
        case(
            "10,000 tracestate members on one line",
            &[
                ("traceparent", tp),
                ("tracestate", &tracestate_members(10_000)),
            ],
            ok,
            &[(Header::TraceState, "", 1)],
        ),
        case(
            "33 tracestate members",
            &[("traceparent", tp), ("tracestate", &tracestate_members(33))],
            ok,
            &[(Header::TraceState, "", 1)],
        ),
        case(
            "invalid tracestate member",
            &[("traceparent", tp), ("tracestate", b"a=1,B@D=2")],
            ok,
            &[(Header::TraceState, "", 1)],
        ),
        case(
            "999999999H grpc-timeout",
            &[("grpc-timeout", b"999999999H")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "-1S grpc-timeout",
            &[("grpc-timeout", b"-1S")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "+5S grpc-timeout",
            &[("grpc-timeout", b"+5S")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "empty grpc-timeout",
            &[("grpc-timeout", b"")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "unit only",
            &[("grpc-timeout", b"S")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "bad unit",
            &[("grpc-timeout", b"5s")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "space",
            &[("grpc-timeout", b"5 S")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "CRLF-looking grpc-timeout",
            &[("grpc-timeout", b"1S\\r\\n")],
            fresh,
            &[(Header::GrpcTimeout, "", 1)],
        ),
        case(
            "duplicated grpc-timeout",
            &[("grpc-timeout", b"1S"), ("grpc-timeout", b"2S")],
            fresh,
            &[(Header::GrpcTimeout, "duplicate", 1)],
        ),
        case(
            "99999999H grpc-timeout from an untrusted peer: the default budget",
            &[("grpc-timeout", b"99999999H")],
            fresh,
            &[],
        ),
        case(
            "x-request-id kept",
            &[("x-request-id", b"abc-123")],
            Expect {
                request_id_kept: true,
                ..fresh
            },
            &[],
        ),
        case(
            "128-byte x-request-id kept",
            &[("x-request-id", &[b'r'; 128])],
            Expect {
                request_id_kept: true,
                ..fresh
            },
            &[],
        ),
        case(
            "129-byte x-request-id",
            &[("x-request-id", &[b'r'; 129])],
            fresh,
            &[(Header::RequestId, "", 1)],
        ),
        case(
            "non-ASCII x-request-id",
            &[("x-request-id", "réq".as_bytes())],
            fresh,
            &[(Header::RequestId, "", 1)],
        ),
        case(
            "space in x-request-id",
            &[("x-request-id", b"a b")],
            fresh,
            &[(Header::RequestId, "", 1)],
        ),
        case(
            "empty x-request-id",
            &[("x-request-id", b"")],
            fresh,
            &[(Header::RequestId, "", 1)],
        ),
        case(
            "duplicated x-request-id",
            &[("x-request-id", b"a"), ("x-request-id", b"b")],
            fresh,
            &[(Header::RequestId, "duplicate", 1)],
        ),
        case(
            "spoofed x-user-id from an untrusted peer",
            &[("x-user-id", b"1")],
            fresh,
            &[(Header::UserId, "untrusted_peer", 1)],
        ),
        case(
            "baggage kept",
            &[("baggage", b"a=1,b=two%20words;prop")],
            Expect {
                baggage_members: Some(2),
                ..fresh
            },
            &[],
        ),
        case(
            "baggage over 8192 bytes",
            &[("baggage", &[b"a=".as_slice(), &[b'x'; 9000]].concat())],
            Expect {
                baggage_members: Some(0),
                ..fresh
            },
            &[(Header::Baggage, "", 1)],
        ),
    ];
    // From a trusted peer, x-user-id is honoured when valid.
    let mut c = case(
        "x-user-id from a trusted peer",
        &[("x-user-id", b"1001")],
        Expect {
            user_id: Some(1001),
            ..fresh
        },
        &[],
    );
    c.peer = TRUSTED;
    cases.push(c);
    for (name, v) in [
        ("non-numeric x-user-id from a trusted peer", &b"root"[..]),
        (
            "overflowing x-user-id from a trusted peer",
            b"99999999999999999999999",
        ),
        ("signed x-user-id from a trusted peer", b"-1"),
    ] {
        let mut c = case(name, &[("x-user-id", v)], fresh, &[(Header::UserId, "", 1)]);
        c.peer = TRUSTED;
        cases.push(c);
    }
    let mut c = case(
        "duplicated x-user-id from a trusted peer",
        &[("x-user-id", b"1"), ("x-user-id", b"2")],
        fresh,
        &[(Header::UserId, "duplicate", 1)],
    );
    c.peer = TRUSTED;
    cases.push(c);
    // A trusted peer may ask for more than the default budget: cut to max_timeout (the
    // deadline policy; its whole table is `tests/deadline_policy.rs`).
    let mut c = case(
        "99999999H grpc-timeout from a trusted peer is clamped, not rejected",
        &[("grpc-timeout", b"99999999H")],
        Expect::default(),
        &[],
    );
    c.peer = TRUSTED;
    cases.push(c);
    cases
}

fn snapshot(p: &Propagator) -> Vec<(Header, &'static str, u64)> {
    Header::ALL
        .iter()
        .flat_map(|h| {
            h.reasons()
                .iter()
                .map(move |r| (*h, *r, p.stats().rejected(*h, r)))
        })
        .collect()
}

#[test]
fn hostile_header_table() {
    run_table(0);
}

/// The same table among 30 ordinary header lines: past the size up to which `extract` walks
/// the map, it looks each propagation header up instead; the outcomes must not change.
#[test]
fn hostile_header_table_in_a_large_map() {
    run_table(30);
}

/// Runs every case of [`table`], each request also carrying `padding` ordinary header lines.
fn run_table(padding: usize) {
    let pool = pool();
    let p = Propagator::new(&pool);
    for c in table() {
        let mut headers = HeaderMap::new();
        for i in 0..padding {
            headers.append(
                HeaderName::try_from(format!("x-ordinary-{i}")).unwrap(),
                HeaderValue::from_static("tracestate=a,traceparent"),
            );
        }
        for (k, v) in &c.headers {
            let value = HeaderValue::from_bytes(v)
                .unwrap_or_else(|e| panic!("{}: the http crate refuses {k}: {e}", c.name));
            headers.append(HeaderName::from_static(k), value);
        }
        let before = snapshot(&p);
        let clamped_before = pool.timer_stats().clamped;
        let peer: IpAddr = c.peer.parse().unwrap();
        let req = p.extract(&headers, Some(peer));
        let ctx = req.context();
        let meta = req.meta();
        let e = c.expect;

        let trace = ctx.trace().expect("every request has a trace");
        assert_ne!(trace.trace_id, 0, "{}", c.name);
        assert_ne!(trace.span_id, 0, "{}", c.name);
        assert_eq!(
            trace.trace_id == TRACE_ID,
            e.trace_kept,
            "{}: trace",
            c.name
        );
        assert_eq!(meta.parent_span().is_some(), e.trace_kept, "{}", c.name);
        assert_eq!(
            !meta.tracestate().is_empty(),
            e.tracestate_kept,
            "{}: tracestate",
            c.name
        );
        if let Some(n) = e.baggage_members {
            assert_eq!(meta.baggage().len(), n, "{}: baggage", c.name);
        }
        let incoming_id = c
            .headers
            .iter()
            .find(|(k, _)| *k == "x-request-id")
            .map(|(_, v)| v.as_slice());
        let id = meta.request_id();
        if e.request_id_kept {
            assert_eq!(Some(id.as_str().as_bytes()), incoming_id, "{}", c.name);
        } else {
            assert_eq!(id.as_str().len(), 16, "{}: a generated id", c.name);
            assert_eq!(ctx.request_id(), Some(id.id()), "{}", c.name);
        }
        assert_eq!(meta.user_id().map(|u| u.0), e.user_id, "{}: user", c.name);
        assert_eq!(
            ctx.user_id().map(|u| u.0),
            e.user_id,
            "{}: user in the node",
            c.name
        );

        let left = ctx.remaining().expect("every request has a deadline");
        // A deadline is rounded up to the next 1 ms tick (never early), so right after
        // creation up to one tick more than asked may remain.
        if e.default_deadline {
            assert!(
                left <= Duration::from_secs(30) + TICK && left > Duration::from_secs(25),
                "{}: {left:?}",
                c.name
            );
        } else {
            assert!(
                left <= Duration::from_secs(60) && left > Duration::from_secs(55),
                "{}: {left:?}",
                c.name
            );
            assert_eq!(
                pool.timer_stats().clamped,
                clamped_before + 1,
                "{}: the clamp is counted",
                c.name
            );
        }

        let after = snapshot(&p);
        for ((h, r, b), (_, _, a)) in before.iter().zip(&after) {
            let want: u64 = c
                .rejected
                .iter()
                .filter(|(eh, er, _)| eh == h && (er.is_empty() || er == r))
                .map(|(_, _, n)| n)
                .sum();
            if c.rejected
                .iter()
                .any(|(eh, er, _)| eh == h && er.is_empty())
            {
                continue; // any reason of this header: checked as a total below
            }
            assert_eq!(a - b, want, "{}: {}/{r}", c.name, h.name());
        }
        for (h, r, n) in &c.rejected {
            if r.is_empty() {
                let total = |s: &[(Header, &str, u64)]| -> u64 {
                    s.iter()
                        .filter(|(sh, _, _)| sh == h)
                        .map(|(_, _, v)| v)
                        .sum()
                };
                assert_eq!(
                    total(&after) - total(&before),
                    *n,
                    "{}: {} total",
                    c.name,
                    h.name()
                );
            }
        }
    }
}

#[test]
fn real_crlf_cannot_reach_the_propagator() {
    // The http crate refuses control characters in values; what reaches us is at most the
    // CRLF-looking text tested in the table.
    assert!(HeaderValue::from_bytes(b"1S\r\nx-user-id: 1").is_err());
    assert!(HeaderValue::from_bytes(b"a\nb").is_err());
}

#[test]
fn ten_thousand_tracestate_lines() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(TP));
    for i in 0..10_000 {
        headers.append(
            TRACESTATE,
            HeaderValue::from_str(&format!("k{i}=v")).unwrap(),
        );
    }
    let req = p.extract(&headers, None);
    assert!(
        req.meta().tracestate().is_empty(),
        "over 32 members: dropped whole"
    );
    assert_eq!(
        req.context().trace().unwrap().trace_id,
        TRACE_ID,
        "the trace is kept"
    );
    assert_eq!(p.stats().rejected_total(Header::TraceState), 1);
}

/// W3C "Mutating the tracestate Field": the received `tracestate` is sent on even when it
/// repeats keys; the first occurrence of each key is what goes out.
#[test]
fn tracestate_with_repeated_keys_is_passed_on() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(TP));
    headers.insert(
        TRACESTATE,
        HeaderValue::from_static("rojo=1,congo=2,rojo=3"),
    );
    let req = p.extract(&headers, None);
    assert_eq!(req.meta().tracestate().as_str(), "rojo=1,congo=2");
    let mut out = HeaderMap::new();
    p.inject(&req.context(), req.meta(), &mut out, None)
        .unwrap();
    assert_eq!(out[TRACESTATE], "rojo=1,congo=2");
    assert_eq!(p.stats().rejected(Header::TraceState, "duplicate_key"), 1);
    assert_eq!(p.stats().rejected_total(Header::TraceState), 1);
}

#[test]
fn inject_sends_the_remaining_budget_and_fails_fast_when_spent() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(TP));
    headers.insert(TRACESTATE, HeaderValue::from_static("a=1"));
    headers.insert(BAGGAGE, HeaderValue::from_static("k=v"));
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    let t0 = Instant::now();
    let req = p.extract(&headers, None);

    let mut out = HeaderMap::new();
    p.inject(&req.context(), req.meta(), &mut out, None)
        .unwrap();
    let spent = t0.elapsed();
    let sent = ctxpool::propagation::parse_grpc_timeout(out[GRPC_TIMEOUT].as_bytes()).unwrap();
    let margin = pool.config().propagation.outbound_deadline_margin;
    // Up to one tick more than asked (deadlines round up to the tick, never early), and no
    // less than what this run left of it (a slow machine spends more: not a bound to time).
    assert!(sent <= Duration::from_secs(1) - margin + TICK, "{sent:?}");
    assert!(
        sent + spent + TICK >= Duration::from_secs(1) - margin,
        "{sent:?} after {spent:?}"
    );
    assert_eq!(out[TRACESTATE], "a=1");
    assert_eq!(out[BAGGAGE], "k=v");
    let tp = ctxpool::propagation::parse_traceparent(out[TRACEPARENT].as_bytes()).unwrap();
    assert_eq!(tp.trace_id, TRACE_ID);
    assert_eq!(tp.flags, 1);
    assert_ne!(tp.span_id, 0x00f067aa0ba902b7);
    assert_ne!(
        Some(tp.span_id),
        req.context().trace().map(|t| t.span_id),
        "a new span per call"
    );

    // A budget within the margin: nothing is sent, the call fails fast.
    let short = req.context().with_timeout(Duration::from_millis(2));
    let mut out = HeaderMap::new();
    assert_eq!(
        p.inject(&short, req.meta(), &mut out, None),
        Err(ContextError::DeadlineExceeded)
    );
    assert!(out.is_empty(), "nothing written");
    assert_eq!(p.stats().failed_fast(), 1);

    // A cancelled context fails fast too.
    let cancelled = req.context().with_cancel();
    cancelled.cancel(ctxpool::Reason::None);
    assert_eq!(
        p.inject(&cancelled, req.meta(), &mut out, None),
        Err(ContextError::Canceled)
    );

    // A new margin applies to the next call (H4), and an invalid one changes nothing.
    let mut cfg = (*pool.config()).clone();
    cfg.propagation.outbound_deadline_margin = Duration::from_millis(400);
    pool.update_config(cfg.clone()).unwrap();
    let mut out = HeaderMap::new();
    p.inject(&req.context(), req.meta(), &mut out, None)
        .unwrap();
    let spent = t0.elapsed();
    let sent = ctxpool::propagation::parse_grpc_timeout(out[GRPC_TIMEOUT].as_bytes()).unwrap();
    assert!(sent <= Duration::from_millis(600) + TICK, "{sent:?}");
    assert!(
        sent + spent + TICK >= Duration::from_millis(600),
        "{sent:?} after {spent:?}"
    );
    cfg.propagation.outbound_deadline_margin = Duration::from_secs(3600);
    assert!(pool.update_config(cfg).is_err());
    p.inject(&req.context(), req.meta(), &mut out, None)
        .unwrap();
    let again = ctxpool::propagation::parse_grpc_timeout(out[GRPC_TIMEOUT].as_bytes()).unwrap();
    assert!(
        again <= sent && again > Duration::from_millis(450),
        "{again:?}"
    );
}

#[test]
fn user_id_is_sent_only_to_trusted_destinations() {
    let pool = pool();
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("77"));
    for forward in [false, true] {
        let p = Propagator::builder(&pool).forward_user_id(forward).build();
        let req = p.extract(&headers, Some(TRUSTED.parse().unwrap()));
        assert_eq!(req.context().user_id(), Some(UserId(77)));
        let mut out = HeaderMap::new();
        p.inject(
            &req.context(),
            req.meta(),
            &mut out,
            Some(TRUSTED.parse().unwrap()),
        )
        .unwrap();
        assert_eq!(out["x-user-id"], "77");
        let mut out = HeaderMap::new();
        p.inject(
            &req.context(),
            req.meta(),
            &mut out,
            Some(UNTRUSTED.parse().unwrap()),
        )
        .unwrap();
        assert_eq!(out.contains_key("x-user-id"), forward);
        let mut out = HeaderMap::new();
        p.inject(&req.context(), req.meta(), &mut out, None)
            .unwrap();
        assert_eq!(
            out.contains_key("x-user-id"),
            forward,
            "unknown = untrusted"
        );
        assert_eq!(p.stats().user_id_withheld(), if forward { 0 } else { 2 });
    }
    // IPv4-mapped IPv6 peers are matched as IPv4.
    let p = Propagator::new(&pool);
    let req = p.extract(&headers, Some("::ffff:10.9.9.9".parse().unwrap()));
    assert_eq!(req.meta().user_id(), Some(UserId(77)));
}

#[test]
fn prometheus_lists_every_header_and_reason() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let mut out = String::new();
    p.write_prometheus(&mut out);
    for h in Header::ALL {
        for r in h.reasons() {
            let series = format!(
                "ctxpool_propagation_rejected_total{{header=\"{}\",reason=\"{r}\"}} 0",
                h.name()
            );
            assert!(out.contains(&series), "{series} missing");
        }
    }
    assert!(out.contains("# TYPE ctxpool_propagation_rejected_total counter"));
}

/// Sampling: an incoming decision is kept and passed on (sampled or not); a trace that
/// starts here is decided by `propagation.sampler` (read per request: an update applies to
/// the next one) and carries the W3C random flag, on `extract` and on an `inject` from a
/// context without a trace.
#[test]
fn sampling_honours_the_caller_and_the_configured_sampler() {
    use ctxpool::propagation::{Sampler, FLAG_RANDOM, FLAG_SAMPLED};
    let pool = pool();
    let p = Propagator::new(&pool);
    let flags_sent = |req: &ctxpool::http::Incoming| {
        let mut out = HeaderMap::new();
        p.inject(&req.context(), req.meta(), &mut out, None)
            .unwrap();
        let tp = out[TRACEPARENT].to_str().unwrap().to_owned();
        u8::from_str_radix(&tp[53..], 16).unwrap()
    };
    for (incoming, want) in [("00", 0x00), ("01", 0x01), ("02", 0x02), ("03", 0x03)] {
        let mut headers = HeaderMap::new();
        let tp = format!("{}-{incoming}", &TP[..52]);
        headers.insert(TRACEPARENT, HeaderValue::from_str(&tp).unwrap());
        let req = p.extract(&headers, None);
        assert_eq!(req.context().trace().unwrap().flags, want, "{tp}");
        assert_eq!(flags_sent(&req), want, "{tp}: passed on");
    }

    let set = |sampler: Sampler| {
        let mut cfg = (*pool.config()).clone();
        cfg.propagation.sampler = sampler;
        pool.update_config(cfg).unwrap();
    };
    for (sampler, sampled) in [(Sampler::Always, true), (Sampler::Never, false)] {
        set(sampler);
        let req = p.extract(&HeaderMap::new(), None);
        let tc = req.context().trace().unwrap();
        assert_eq!(
            tc.flags,
            FLAG_RANDOM | if sampled { FLAG_SAMPLED } else { 0 }
        );
        assert_eq!(tc.sampled(), sampled);
        assert_eq!(flags_sent(&req), tc.flags);
        // An outgoing call from a context with no trace starts one the same way.
        let bare = ctxpool::Context::background().with_cancel();
        let mut out = HeaderMap::new();
        p.inject(&bare.context(), req.meta(), &mut out, None)
            .unwrap();
        let tp = out[TRACEPARENT].to_str().unwrap();
        let flags = u8::from_str_radix(&tp[53..], 16).unwrap();
        assert_eq!(flags, tc.flags, "{sampler}");
    }
    set(Sampler::Ratio(0.25));
    let mut sampled = 0;
    for _ in 0..2_000 {
        let req = p.extract(&HeaderMap::new(), None);
        let tc = req.context().trace().unwrap();
        assert_eq!(tc.sampled(), Sampler::Ratio(0.25).sample(tc.trace_id));
        assert_ne!(tc.flags & FLAG_RANDOM, 0);
        sampled += usize::from(tc.sampled());
    }
    assert!((300..700).contains(&sampled), "{sampled} of 2,000 at 0.25");
}
