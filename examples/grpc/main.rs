//! A gRPC service on `ctxpool` and tonic: every call gets a context from its metadata
//! (`grpc-timeout` under the deadline policy, W3C trace context, baggage, `x-request-id`),
//! enforced as a deadline (`DEADLINE_EXCEEDED`), carried to outgoing calls, and cancelled
//! when the client hangs up.
//!
//! ```text
//! cargo run --release --features tonic --example grpc -- [--addr 127.0.0.1:50051] [--grace SECS]
//! cargo run --release --features tonic --example grpc -- --call ADDR [--timeout-ms N] [--fanout N] [--ticks N]
//! ```
//!
//! Methods of `ctxpool.example.Demo` (hand-written prost messages in `app.rs`, no `protoc`):
//! `Work` (work under the call's context), `Fanout` (calls to itself: the trace continues,
//! the deadline shrinks per hop) and `Ticks` (a server stream cut at its deadline).
//!
//! With `--call ADDR` it is the client instead: one `Fanout` (`--fanout N` calls) and one
//! `Ticks` (`--ticks N` messages, 100 ms apart) under a context of `--timeout-ms`
//! (default 2000), printing what came back; it exits 0 when the fanout answered OK and the
//! stream ended with OK or `DEADLINE_EXCEEDED`.
//!
//! Served by `ctxpool::grpc::serve`. SIGINT or SIGTERM: the server stops accepting, lets calls
//! in flight finish for up to the grace period (default 5 s), then cancels the rest
//! (`UNAVAILABLE`), and exits 0 once every connection has closed.

#[allow(dead_code)] // shared with tests/grpc.rs, which uses other parts of it
mod app;

use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

use ctxpool::grpc::RequestExt;
use ctxpool::http::Propagator;
use ctxpool::Pool;
use http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

fn usage() -> ! {
    eprintln!(
        "usage: grpc [--addr HOST:PORT] [--grace SECS]\n       grpc --call HOST:PORT [--timeout-ms N] [--fanout N] [--ticks N]"
    );
    exit(2);
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
    let mut call: Option<SocketAddr> = None;
    let mut grace = Duration::from_secs(5);
    let mut timeout_ms = 2000u64;
    let mut fanout = 2u32;
    let mut ticks = 3u32;
    let mut args = std::env::args().skip(1);
    let next = |args: &mut std::iter::Skip<std::env::Args>| args.next().unwrap_or_else(|| usage());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = next(&mut args).parse().unwrap_or_else(|_| usage()),
            "--call" => call = Some(next(&mut args).parse().unwrap_or_else(|_| usage())),
            "--grace" => {
                grace = next(&mut args)
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .unwrap_or_else(|| usage())
            }
            "--timeout-ms" => timeout_ms = next(&mut args).parse().unwrap_or_else(|_| usage()),
            "--fanout" => fanout = next(&mut args).parse().unwrap_or_else(|_| usage()),
            "--ticks" => ticks = next(&mut args).parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let pool = Pool::builder().build().unwrap_or_else(|e| {
        eprintln!("cannot build the pool: {e}");
        exit(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match call {
        Some(server) => exit(rt.block_on(client(pool, server, timeout_ms, fanout, ticks))),
        None => rt.block_on(server(pool, addr, grace)),
    }
}

async fn server(pool: Pool, addr: SocketAddr, grace: Duration) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {addr}: {e}");
            exit(1)
        });
    let addr = listener.local_addr().expect("a bound address");
    let app = app::App::new(pool, addr);
    eprintln!("listening on {addr} (gRPC, service {})", app::SERVICE);
    // At the signal: `serve` stops accepting and waits for the open connections, while the
    // drain gives the calls in flight the grace period, then cancels them (`UNAVAILABLE`).
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let drain = app.drain.clone();
    let shutdown = async move {
        signal().await;
        eprintln!(
            "shutting down: {} calls in flight, {grace:?} to finish",
            drain.in_flight()
        );
        tokio::spawn(async move {
            let _ = report_tx.send(drain.shutdown(grace).await);
        });
    };
    if let Err(e) = ctxpool::grpc::serve(listener, app::service(&app), shutdown).await {
        eprintln!("cannot accept on {addr}: {e}");
        exit(1);
    }
    if let Ok(report) = report_rx.await {
        eprintln!(
            "drain: {} in flight at the start, {} cancelled at the end of the grace period",
            report.in_flight_at_start, report.cancelled
        );
    }
}

/// One `Fanout` and one `Ticks` under a context of `timeout_ms`.
async fn client(pool: Pool, server: SocketAddr, timeout_ms: u64, n: u32, ticks: u32) -> i32 {
    let propagator = Propagator::new(&pool);
    let mut grpc = tonic::client::Grpc::new(app::channel(&propagator, server));
    let root = pool
        .request()
        .with_timeout(Duration::from_millis(timeout_ms));
    let ctx = root.context();
    if let Err(e) = grpc.ready().await {
        eprintln!("cannot reach {server}: {e}");
        return 1;
    }
    let req = tonic::Request::new(app::pb::FanoutRequest {
        n,
        depth: 0,
        ms: 10,
    })
    .with_context(&ctx);
    let fanout = grpc
        .unary::<_, app::pb::FanoutReply, _>(
            req,
            PathAndQuery::from_static(app::FANOUT_PATH),
            ProstCodec::default(),
        )
        .await;
    let mut ok = match &fanout {
        Ok(reply) => {
            println!("Fanout: {:#?}", reply.get_ref());
            true
        }
        Err(status) => {
            println!("Fanout: {status}");
            false
        }
    };
    let req = tonic::Request::new(app::pb::TicksRequest {
        count: ticks,
        ms: 100,
    })
    .with_context(&ctx);
    let _ = grpc.ready().await;
    let stream = grpc
        .server_streaming::<_, app::pb::Tick, _>(
            req,
            PathAndQuery::from_static(app::TICKS_PATH),
            ProstCodec::default(),
        )
        .await;
    let end = match stream {
        Err(status) => status,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(tick)) => println!("Ticks: {}", tick.n),
                    Ok(None) => break tonic::Status::ok(""),
                    Err(status) => break status,
                }
            }
        }
    };
    println!("Ticks ended: {:?} {}", end.code(), end.message());
    ok &= matches!(end.code(), tonic::Code::Ok | tonic::Code::DeadlineExceeded);
    if ok {
        0
    } else {
        1
    }
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
