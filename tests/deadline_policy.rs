//! The server's deadline policy (`src/http/mod.rs`, H6): a request's deadline is the
//! incoming `grpc-timeout` within its route's budget, else the budget; only a trusted peer
//! gets more, never above `max_timeout`. Each cut is counted by reason.
//!
//! Durations are large (seconds) and the checks bound the remaining time from above exactly
//! (a deadline rounds up by at most one tick) and from below loosely (half of it), so a slow
//! machine cannot fail them.

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use ctxpool::http::{ContextLayer, DeadlineCut, Propagator, RequestContext, HTTP_REQUEST};
use ctxpool::{Config, Pool};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, ServiceExt};

const TICK: Duration = Duration::from_millis(1);
const DEFAULT: Duration = Duration::from_secs(20);
const MAX: Duration = Duration::from_secs(600);
const TRUSTED: &str = "10.1.2.3";
const UNTRUSTED: &str = "192.0.2.7";

fn pool() -> Pool {
    let mut cfg = Config {
        default_timeout: DEFAULT,
        max_timeout: MAX,
        ..Config::default()
    };
    cfg.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
    Pool::builder().config(&cfg).build().unwrap()
}

struct Case {
    name: &'static str,
    peer: Option<&'static str>,
    grpc_timeout: Option<&'static str>,
    budget: Option<Duration>,
    deadline: Duration,
    cut: Option<DeadlineCut>,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn table() -> Vec<Case> {
    let c = |name, peer, grpc_timeout, budget, deadline, cut| Case {
        name,
        peer,
        grpc_timeout,
        budget,
        deadline,
        cut,
    };
    use DeadlineCut::{MaxTimeout, RouteBudget};
    let (t, u) = (Some(TRUSTED), Some(UNTRUSTED));
    vec![
        // No incoming timeout: the route's budget (the default without one).
        c("untrusted, none", u, None, None, DEFAULT, None),
        c(
            "untrusted, none, route 100s",
            u,
            None,
            Some(secs(100)),
            secs(100),
            None,
        ),
        c(
            "trusted, none, route 100s",
            t,
            None,
            Some(secs(100)),
            secs(100),
            None,
        ),
        // Below the budget: the incoming one, for every peer.
        c(
            "untrusted, below the default",
            u,
            Some("5S"),
            None,
            secs(5),
            None,
        ),
        c(
            "trusted, below the default",
            t,
            Some("5S"),
            None,
            secs(5),
            None,
        ),
        c(
            "untrusted, below a route's budget",
            u,
            Some("50S"),
            Some(secs(100)),
            secs(50),
            None,
        ),
        c(
            "trusted, below a route's budget",
            t,
            Some("50S"),
            Some(secs(100)),
            secs(50),
            None,
        ),
        c(
            "untrusted, below a short route's budget",
            u,
            Some("5S"),
            Some(secs(8)),
            secs(5),
            None,
        ),
        // Above the budget: untrusted peers get the budget, trusted ones what they asked.
        c(
            "untrusted, above the default",
            u,
            Some("60S"),
            None,
            DEFAULT,
            Some(RouteBudget),
        ),
        c(
            "unknown peer, above the default",
            None,
            Some("60S"),
            None,
            DEFAULT,
            Some(RouteBudget),
        ),
        c(
            "untrusted, above a route's budget",
            u,
            Some("200S"),
            Some(secs(100)),
            secs(100),
            Some(RouteBudget),
        ),
        c(
            "untrusted, an hour",
            u,
            Some("1H"),
            Some(secs(100)),
            secs(100),
            Some(RouteBudget),
        ),
        c(
            "trusted, above the default",
            t,
            Some("60S"),
            None,
            secs(60),
            None,
        ),
        c(
            "trusted, above a route's budget",
            t,
            Some("200S"),
            Some(secs(100)),
            secs(200),
            None,
        ),
        c(
            "trusted (IPv4-mapped), above the default",
            Some("::ffff:10.9.9.9"),
            Some("60S"),
            None,
            secs(60),
            None,
        ),
        // Above max_timeout: cut to it, for trusted peers and for a route's budget.
        c(
            "trusted, an hour",
            t,
            Some("1H"),
            None,
            MAX,
            Some(MaxTimeout),
        ),
        c(
            "untrusted, none, route above max",
            u,
            None,
            Some(secs(3600)),
            MAX,
            Some(MaxTimeout),
        ),
        c(
            "trusted, an hour, route above max",
            t,
            Some("1H"),
            Some(secs(3600)),
            MAX,
            Some(MaxTimeout),
        ),
        // An invalid grpc-timeout is ignored: the budget.
        c(
            "untrusted, invalid",
            u,
            Some("5s"),
            Some(secs(100)),
            secs(100),
            None,
        ),
        c("trusted, invalid", t, Some("-1S"), None, DEFAULT, None),
    ]
}

fn headers(grpc_timeout: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(t) = grpc_timeout {
        h.insert("grpc-timeout", HeaderValue::from_str(t).unwrap());
    }
    h
}

fn check(name: &str, left: Duration, want: Duration) {
    assert!(
        left <= want + TICK && left > want / 2,
        "{name}: {left:?} left, want {want:?}"
    );
}

#[test]
fn policy_table() {
    let pool = pool();
    let p = Propagator::new(&pool);
    for c in table() {
        let peer: Option<IpAddr> = c.peer.map(|s| s.parse().unwrap());
        let before = DeadlineCut::ALL.map(|r| p.stats().deadline_cuts(r));
        let clamped_before = pool.timer_stats().clamped;
        let req = p.extract_route(&headers(c.grpc_timeout), peer, &HTTP_REQUEST, c.budget);
        let left = req.context().remaining().expect("a deadline");
        check(c.name, left, c.deadline);
        assert_eq!(
            req.meta().deadline_cut(),
            c.cut,
            "{}: the cut noted",
            c.name
        );
        for (i, r) in DeadlineCut::ALL.into_iter().enumerate() {
            let want = before[i] + u64::from(c.cut == Some(r));
            assert_eq!(
                p.stats().deadline_cuts(r),
                want,
                "{}: {} counted",
                c.name,
                r.label()
            );
        }
        // The pool counts its own clamp of whatever was above max_timeout.
        let clamped = u64::from(c.cut == Some(DeadlineCut::MaxTimeout));
        assert_eq!(
            pool.timer_stats().clamped,
            clamped_before + clamped,
            "{}",
            c.name
        );
    }
}

/// `extract` (no route budget) follows the same policy with the default timeout as budget,
/// and a configuration update applies to the next request.
#[test]
fn the_default_budget_follows_the_configuration() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let untrusted = Some(UNTRUSTED.parse().unwrap());
    let req = p.extract(&headers(Some("60S")), untrusted);
    check("default 20s", req.context().remaining().unwrap(), DEFAULT);
    let mut cfg = (*pool.config()).clone();
    cfg.default_timeout = secs(90);
    pool.update_config(cfg).unwrap();
    let req = p.extract(&headers(Some("60S")), untrusted);
    check("default 90s", req.context().remaining().unwrap(), secs(60));
    assert_eq!(req.meta().deadline_cut(), None);
    let req = p.extract(&headers(Some("120S")), untrusted);
    check(
        "default 90s, asked 120s",
        req.context().remaining().unwrap(),
        secs(90),
    );
    assert_eq!(p.stats().deadline_cuts(DeadlineCut::RouteBudget), 2);
}

#[test]
fn cuts_are_exported_by_reason() {
    let pool = pool();
    let p = Propagator::new(&pool);
    let _req = p.extract(&headers(Some("1H")), Some(UNTRUSTED.parse().unwrap()));
    let _req = p.extract(&headers(Some("1H")), Some(TRUSTED.parse().unwrap()));
    let _req = p.extract(&headers(Some("1H")), Some(TRUSTED.parse().unwrap()));
    let mut out = String::new();
    p.write_prometheus(&mut out);
    assert!(out.contains("# TYPE ctxpool_propagation_deadline_cuts_total counter"));
    assert!(out.contains("ctxpool_propagation_deadline_cuts_total{reason=\"route_budget\"} 1\n"));
    assert!(out.contains("ctxpool_propagation_deadline_cuts_total{reason=\"max_timeout\"} 2\n"));
}

/// Through the tower layer: `timeout_for` gives each route its budget, `peer_from` the peer
/// whose trust decides whether it may ask for more.
#[tokio::test]
async fn the_layer_applies_route_budgets() {
    let pool = pool();
    let layer = ContextLayer::new(Propagator::new(&pool))
        .timeout_for(|_, uri| match uri.path() {
            "/slow" => Some(secs(100)),
            "/quick" => Some(secs(4)),
            _ => None,
        })
        .peer_from(|ext| ext.get::<IpAddr>().copied());
    let svc = layer.layer(tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        let rc = req.extensions().get::<RequestContext>().unwrap();
        let left = rc.context().remaining().unwrap();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
            left.as_millis().to_string(),
        ))))
    }));
    let cases = [
        ("/slow", UNTRUSTED, None, secs(100)),
        ("/slow", UNTRUSTED, Some("300S"), secs(100)),
        ("/slow", TRUSTED, Some("300S"), secs(300)),
        ("/quick", UNTRUSTED, Some("60S"), secs(4)),
        ("/quick", UNTRUSTED, Some("2S"), secs(2)),
        ("/other", UNTRUSTED, Some("60S"), DEFAULT),
        ("/other", TRUSTED, Some("60S"), secs(60)),
    ];
    for (path, peer, timeout, want) in cases {
        let mut b = Request::get(path);
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        let mut req = b.body(Empty::<Bytes>::new()).unwrap();
        req.extensions_mut().insert(peer.parse::<IpAddr>().unwrap());
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let ms: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
        let name = format!("{path} from {peer} asking {timeout:?}");
        check(&name, Duration::from_millis(ms), want);
    }
}
