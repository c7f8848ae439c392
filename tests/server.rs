//! End-to-end tests of the example server (`examples/server`) over loopback: its router,
//! served by axum on 127.0.0.1, called with a real HTTP client.

#[path = "../examples/server/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::{App, FanoutReply, WorkReply};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use ctxpool::{Config, Pool};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Server {
    app: Arc<App>,
    addr: SocketAddr,
    client: HttpClient,
}

async fn start(config: Config) -> Server {
    let pool = Pool::builder().config(&config).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::new(pool, addr);
    let router = app::router(app.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        app,
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call(Method::GET, path, headers, "").await
    }

    /// Waits until work observed a cancellation of `request_id`; returns its cause text.
    async fn observed(&self, request_id: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(o) = self
                .app
                .observed
                .lock()
                .unwrap()
                .iter()
                .find(|o| o.request_id == request_id)
            {
                return o.cause.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no cancellation observed for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until no request context (of any op but the server root) is active.
    async fn settle(&self) -> u64 {
        let start = Instant::now();
        loop {
            let active: u64 = self
                .app
                .pool
                .metrics()
                .ops
                .iter()
                .filter(|(op, _)| *op != "server")
                .map(|(_, c)| c.active())
                .sum();
            if active == 0 || start.elapsed() > Duration::from_secs(10) {
                return active;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{SPAN}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_continues_through_fanout() {
    let s = start(Config::default()).await;
    let tp = traceparent();
    let r = s
        .get(
            "/fanout?n=3",
            &[
                ("traceparent", &tp),
                ("tracestate", "vendor=abc,other=1"),
                ("baggage", "user.tier=gold,region=eu%20west"),
                ("x-request-id", "req-fanout-1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["x-request-id"], "req-fanout-1");
    let f: FanoutReply = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(f.trace_id, TRACE);
    assert_ne!(f.span_id, SPAN, "the server's span is new");
    assert_eq!(f.calls.len(), 3);
    let mut sent = Vec::new();
    for c in &f.calls {
        assert_eq!(c.status, 200);
        let w: WorkReply = serde_json::from_value(c.reply.clone().unwrap()).unwrap();
        assert_eq!(w.trace_id, TRACE, "the trace continues");
        assert_eq!(w.request_id, "req-fanout-1", "the request id is passed on");
        let sent_span = c.sent_span.clone().unwrap();
        assert_eq!(w.parent_span.as_deref(), Some(sent_span.as_str()));
        assert_ne!(sent_span, f.span_id);
        sent.push(sent_span);
    }
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 3, "a new span id per outgoing call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_shrinks_hop_by_hop() {
    let s = start(Config::default()).await;
    let margin = s.app.pool.config().propagation.outbound_deadline_margin;
    let margin_ms = margin.as_secs_f64() * 1e3;
    let r = s
        .get("/fanout?n=1&depth=3", &[("grpc-timeout", "2000m")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut hop: FanoutReply = serde_json::from_slice(&r.body).unwrap();
    let mut remaining = vec![hop.remaining_ms.unwrap()];
    // A deadline rounds up to the next 1 ms tick (never early): up to 1 ms more than asked.
    assert!(remaining[0] <= 2001.0);
    loop {
        let reply = hop.calls[0].reply.clone().expect("a JSON reply");
        if reply.get("calls").is_some() {
            hop = serde_json::from_value(reply).unwrap();
            remaining.push(hop.remaining_ms.unwrap());
        } else {
            let w: WorkReply = serde_json::from_value(reply).unwrap();
            let incoming = w.incoming_timeout_ms.unwrap();
            // What arrived is at most what the caller had, less the margin.
            assert!(incoming <= remaining.last().unwrap() - margin_ms + 1e-9);
            remaining.push(w.remaining_ms.unwrap());
            break;
        }
    }
    assert_eq!(
        remaining.len(),
        4,
        "three fanout hops and the work: {remaining:?}"
    );
    for w in remaining.windows(2) {
        // Each hop has less: the margin, less at most 1 ms of deadline rounding.
        assert!(
            w[1] <= w[0] - margin_ms + 1.0,
            "the deadline did not shrink by the margin: {remaining:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_past_its_deadline_is_504_and_the_work_stops() {
    let s = start(Config::default()).await;
    let r = s
        .get(
            "/work?ms=5000&children=2",
            &[("grpc-timeout", "100m"), ("x-request-id", "slow-1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers["x-request-id"], "slow-1");
    let cause = s.observed("slow-1").await;
    assert!(cause.contains("DeadlineExceeded"), "{cause}");

    // gRPC: a trailers-only response with grpc-status 4.
    let r = s
        .get(
            "/work?ms=5000",
            &[
                ("grpc-timeout", "50m"),
                ("content-type", "application/grpc"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_client_cancels_the_server_side_context() {
    let s = start(Config::default()).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"GET /work?ms=10000&children=3 HTTP/1.1\r\nhost: x\r\nx-request-id: gone-1\r\n\r\n",
    )
    .await
    .unwrap();
    // Let the request start, then hang up without reading the response.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);
    let cause = s.observed("gone-1").await;
    assert!(cause.contains("client disconnected"), "{cause}");
    assert_eq!(s.settle().await, 0, "every context of the request released");
}

/// A streamed body outlives the response head: its producer, under the request's context,
/// runs to the end (the layer holds the context through the body), and nothing is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_keeps_the_request_context_to_its_end() {
    let s = start(Config::default()).await;
    let r = s
        .get("/stream?lines=5&ms=20", &[("x-request-id", "stream-ok")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = std::str::from_utf8(&r.body).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert_eq!(text.lines().last(), Some("line 4"));
    assert_eq!(s.settle().await, 0, "every context of the request released");
    assert!(
        !s.app
            .observed
            .lock()
            .unwrap()
            .iter()
            .any(|o| o.request_id == "stream-ok"),
        "a complete stream is not a cancellation"
    );
}

/// A client hanging up in the middle of a streamed body cancels the request's context with
/// `client disconnected`, and the producer observes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_cancels_the_producer() {
    use tokio::io::AsyncReadExt;
    let s = start(Config::default()).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"GET /stream?lines=100000&ms=5 HTTP/1.1\r\nhost: x\r\nx-request-id: stream-gone\r\n\r\n",
    )
    .await
    .unwrap();
    // Read until the first line of the body has arrived: the head is long sent.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(7).any(|w| w == b"line 0\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(n > 0, "the server closed the stream early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(conn);
    let cause = s.observed("stream-gone").await;
    assert!(cause.contains("client disconnected"), "{cause}");
    assert_eq!(s.settle().await, 0, "every context of the request released");
}

/// The deadline covers the body: past it, a stream still going is cut (the client sees an
/// incomplete body, not a complete-looking one) and the producer observes the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_mid_body_cuts_the_stream() {
    let s = start(Config::default()).await;
    let req = Request::get(format!("http://{}/stream?lines=100000&ms=5", s.addr))
        .header("grpc-timeout", "300m")
        .header("x-request-id", "stream-late")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the head is sent in time");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream is cut");
    assert!(
        body.is_err(),
        "an incomplete body is an error for the client"
    );
    let cause = s.observed("stream-late").await;
    assert!(cause.contains("DeadlineExceeded"), "{cause}");
    assert_eq!(s.settle().await, 0, "every context of the request released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_put_is_rejected_whole() {
    let s = start(Config::default()).await;
    let before = s.get("/debug/config", &[]).await;
    let bad = r#"{"default_timeout": "10m", "max_timeout": "5m", "pool_capacity": 0,
                  "propagation": {"trusted_peers": ["10.0.0.0/33"]}, "colour": "blue"}"#;
    let r = s.call(Method::PUT, "/debug/config", &[], bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let problems = v["problems"].as_array().unwrap();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(problems.len() >= 4, "every problem listed: {v}");
    for key in ["default_timeout", "pool_capacity", "colour"] {
        assert!(
            keys.iter().any(|k| k.contains(key)),
            "{key} missing from {keys:?}"
        );
    }
    assert!(keys.iter().any(|k| k.contains("trusted_peers")), "{keys:?}");
    let after = s.get("/debug/config", &[]).await;
    assert_eq!(before.body, after.body, "the old configuration stays");
    // A document that does not even parse is a rejected update too, and counted.
    let r = s.call(Method::PUT, "/debug/config", &[], "{").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s
        .call(
            Method::PUT,
            "/debug/config",
            &[("content-type", "application/toml")],
            "default_timeout = ",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.app.pool.metrics().config_updates, [0, 3]);
    let m = s.get("/metrics", &[]).await;
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        text.contains("ctxpool_config_updates_total{result=\"rejected\"} 3\n"),
        "every rejected PUT counted"
    );

    // A valid one is taken, and applies to the next request.
    let mut cfg: serde_json::Value = serde_json::from_slice(&after.body).unwrap();
    cfg["default_timeout"] = "2s".into();
    let r = s
        .call(Method::PUT, "/debug/config", &[], &cfg.to_string())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(s.app.pool.config().default_timeout, Duration::from_secs(2));
    assert_eq!(s.app.pool.metrics().config_updates, [1, 3]);
    let r = s.get("/work", &[]).await;
    let w: WorkReply = serde_json::from_slice(&r.body).unwrap();
    // Up to one 1 ms tick more than asked (deadlines round up, never early).
    assert!(w.remaining_ms.unwrap() <= 2001.0);
}

/// Graceful shutdown with a drain window: a request that finishes within the grace period
/// gets its answer; one still running at its end is cancelled with `Shutdown` (`503`); later
/// requests are refused. (The grace period is far longer than the short request needs, and
/// far shorter than the long one asks: only the order of events is asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_cancels_requests_in_flight() {
    let s = start(Config::default()).await;
    let s = Arc::new(s);
    let (s2, s3) = (s.clone(), s.clone());
    let long = tokio::spawn(async move {
        s2.get("/work?ms=60000", &[("x-request-id", "in-flight-1")])
            .await
    });
    let short = tokio::spawn(async move {
        s3.get("/work?ms=100", &[("x-request-id", "in-flight-2")])
            .await
    });
    // Both in flight (the layer counts them from its call).
    let start = Instant::now();
    while s.app.drain.in_flight() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = s.app.drain.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.in_flight_at_start, 2);
    assert_eq!(
        report.cancelled, 1,
        "the long request outlived the grace period"
    );
    let r = short.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "finished within the grace period");
    let r = long.await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "shutdown");
    let cause = s.observed("in-flight-1").await;
    assert!(cause.contains("Shutdown"), "{cause}");
    // New requests are refused the same way.
    let r = s.get("/work", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.app.drain.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_user_id_is_dropped_and_counted() {
    let s = start(Config::default()).await;
    let r = s.get("/work", &[("x-user-id", "42")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let metrics = s.get("/metrics", &[]).await;
    let text = std::str::from_utf8(&metrics.body).unwrap();
    assert!(
        text.contains(
            "ctxpool_propagation_rejected_total{header=\"x-user-id\",reason=\"untrusted_peer\"} 1"
        ),
        "{text}"
    );

    // Trusted when loopback is configured.
    let mut cfg = Config::default();
    cfg.propagation.trusted_peers = vec!["127.0.0.0/8".parse().unwrap()];
    let s = start(cfg).await;
    s.get("/work", &[("x-user-id", "42")]).await;
    assert_eq!(
        s.app
            .propagator
            .stats()
            .rejected_total(ctxpool::http::Header::UserId),
        0
    );
}

/// 20,000 requests at concurrency 64; afterwards nothing is active and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_20k_requests_at_concurrency_64() {
    // A short leak threshold, so that the final scan would see any request context left
    // behind: the only context alive past it must be the server root.
    let mut cfg = Config::default();
    cfg.leak.threshold = Duration::from_millis(200);
    cfg.leak.interval = Duration::from_millis(100);
    let s = Arc::new(start(cfg).await);
    let in_use_before = s.app.pool.stats().in_use;
    let mut workers = tokio::task::JoinSet::new();
    const TOTAL: usize = 20_000;
    const CONCURRENCY: usize = 64;
    for w in 0..CONCURRENCY {
        let s = s.clone();
        workers.spawn(async move {
            let mut ok = 0usize;
            let mut i = w;
            while i < TOTAL {
                let path = if i % 10 == 0 {
                    "/fanout?n=2"
                } else {
                    "/work?children=2"
                };
                let r = s.get(path, &[]).await;
                ok += usize::from(r.status == StatusCode::OK);
                i += CONCURRENCY;
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = workers.join_next().await {
        ok += n.unwrap();
    }
    assert_eq!(ok, TOTAL, "every request answered 200");
    assert_eq!(
        s.settle().await,
        0,
        "contexts_active is 0 for every request op"
    );
    assert_eq!(s.app.pool.stats().in_use, in_use_before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = s.app.pool.scan_leaks();
    assert_eq!(report.suspects, 1, "{}", report.to_json());
    assert_eq!(report.groups.len(), 1, "{}", report.to_json());
    assert_eq!(
        report.groups[0].op, "server",
        "only the server root is long-lived"
    );
    let metrics = s.get("/metrics", &[]).await;
    let text = std::str::from_utf8(&metrics.body).unwrap();
    assert!(
        text.contains("ctxpool_contexts_active{op=\"work\"} 0"),
        "{text}"
    );
}

/// With the pool at capacity, a sub-operation is born cancelled with `PoolExhausted`: work
/// not done is answered `503` naming the cause, never `200` with `parts_done: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_not_done_at_pool_exhaustion_is_never_200() {
    let s = start(Config {
        pool_capacity: 8,
        ..Config::default()
    })
    .await;
    // More parts than the pool has slots: some are born cancelled.
    let r = s.get("/work?children=64", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "pool_exhausted");
    // A request the pool has room for is done and answered 200.
    let r = s.get("/work?children=2", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let w: WorkReply = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(w.parts_done, 2);
}
