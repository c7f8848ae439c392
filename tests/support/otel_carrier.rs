//! `http::HeaderMap` as OpenTelemetry's text-map carrier (what `opentelemetry-http` provides),
//! shared by `tests/otel_interop.rs` and `benches/propagation.rs`.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

/// Reads a header map (the first line of each header, as `opentelemetry-http` does).
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes a header map; OpenTelemetry only writes valid names and values, so anything else
/// is a failure of the test or benchmark using it.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = HeaderName::from_bytes(key.as_bytes()).expect("OpenTelemetry header name");
        let value = HeaderValue::from_str(&value).expect("OpenTelemetry header value");
        self.0.insert(name, value);
    }
}
