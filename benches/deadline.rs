//! Deadline benchmarks.
#![allow(missing_docs)]
use criterion::{criterion_group, criterion_main, Criterion};
use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("timeout_create_drop");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    g.bench_function("tokio_timeout", |b| {
        let _e = rt.enter();
        let waker = Waker::noop();
        let mut cx = TaskCx::from_waker(waker);
        b.iter(|| {
            let f = pin!(tokio::time::timeout(Duration::from_secs(30), std::future::pending::<()>()));
            let r = f.poll(&mut cx);
            assert!(matches!(r, Poll::Pending));
        })
    });
    g.finish();
}
criterion_group!(benches, bench);
criterion_main!(benches);
