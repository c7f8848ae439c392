//! An HTTP server on `ctxpool`: every request gets a context from its headers (W3C trace
//! context, baggage, `x-request-id`, `grpc-timeout`, `x-user-id` from trusted peers), enforced
//! as a deadline, carried to outgoing calls, and cancelled when the client goes away.
//!
//! ```text
//! cargo run --release --example server -- --addr 127.0.0.1:8080 [--config FILE] [--grace SECS]
//! ```
//!
//! Endpoints:
//!
//! - `GET /work?ms=N&children=K`: K sub-operations of N ms each, side by side, each a spawned
//!   task with a child context that stops when the context is cancelled;
//! - `GET /fanout?n=N[&depth=D][&ms=M]`: N calls to this server's `/work` (or, with D > 1, to
//!   `/fanout` one hop shorter) with propagated headers: the trace continues and the deadline
//!   shrinks by `outbound_deadline_margin` per hop;
//! - `GET /metrics`: the Prometheus exposition (the pool's families and the propagator's);
//! - `GET /debug/leaks`: the leak report, as JSON;
//! - `GET /debug/config`, `PUT /debug/config`: the configuration as JSON; a PUT is validated
//!   first (`400` with every problem listed, the old configuration stays);
//! - `GET /debug/cancelled`: cancellations observed by work (cause per request id);
//! - `GET /healthz`.
//!
//! SIGINT or SIGTERM: the server stops accepting and lets the requests in flight finish for
//! up to the grace period (`--grace SECS`, default 5), then cancels the rest with cause
//! `Shutdown` (they answer `503`; `ctxpool::http::Drain`), waits for their connections to
//! finish and exits 0.

#[allow(dead_code)] // shared with tests/server.rs, which uses other parts of it
mod app;

use std::net::SocketAddr;
use std::process::exit;

use ctxpool::{Config, Pool};
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: server [--addr HOST:PORT] [--config FILE] [--grace SECS]");
    exit(2);
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut config = Config::default();
    let mut grace = Duration::from_secs(5);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--config" => {
                let path = args.next().unwrap_or_else(|| usage());
                config = match Config::from_file(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{path}: invalid configuration:");
                        for p in &e.problems {
                            eprintln!("  - {p}");
                        }
                        exit(2);
                    }
                };
            }
            "--grace" => {
                grace = args
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let pool = Pool::builder().config(&config).build().unwrap_or_else(|e| {
        eprintln!("cannot build the pool: {e}");
        exit(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| {
                eprintln!("cannot listen on {addr}: {e}");
                exit(1)
            });
        let addr = listener.local_addr().expect("a bound address");
        let app = app::App::new(pool, addr);
        let router = app::router(app.clone());
        eprintln!("listening on http://{addr}");
        // The drain task, awaited once the server stops (its contexts then gone too).
        let drained = std::sync::Arc::new(std::sync::Mutex::new(None));
        let shutdown = {
            let app = app.clone();
            let drained = drained.clone();
            async move {
                signal().await;
                // Axum stops accepting once this returns; the drain runs beside its wait for
                // the connections, which ends with the last answer.
                eprintln!(
                    "shutting down: {} requests in flight, {grace:?} to finish",
                    app.drain.in_flight()
                );
                let task = tokio::spawn(async move {
                    let report = app.drain.shutdown(grace).await;
                    eprintln!(
                        "drain: {} in flight at the start, {} cancelled at the end of the grace period",
                        report.in_flight_at_start, report.cancelled
                    );
                });
                *drained.lock().unwrap() = Some(task);
            }
        };
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .expect("the server");
        let task = drained.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let m = app.pool.metrics();
        let active: u64 = m.ops.iter().map(|(_, c)| c.active()).sum();
        eprintln!("stopped; contexts still active: {active} (the server root is one)");
    });
}

/// SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
