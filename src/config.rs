//! Settings of a pool and its background tasks, loaded from TOML or JSON and checked as a whole.
//!
//! A [`Config`] is plain data: build one in code (start from [`Config::default()`]) or load it
//! from a file with [`Config::from_file`] (feature `serde`, on by default). Loading and
//! [`Config::validate`] report **every** problem at once, each naming its key, so one edit
//! fixes a whole file; a running pool takes a new configuration only if
//! [`Config::check_update`] accepts it.
//!
//! # File format
//!
//! TOML, or JSON with the same tree (sections become objects). Every key is optional: a
//! missing key keeps its default, so an empty file (TOML or JSON) means all defaults. Durations
//! are strings with a unit, parsed by [`humantime`](https://docs.rs/humantime): `"250ms"`,
//! `"30s"`, `"5m"`, `"1h 30m"`, `"1.5s"`; a bare number such as `30` is rejected, since its
//! unit would be a guess. They are written back in the same form.
//!
//! ```toml
//! default_timeout = "30s"
//! max_timeout = "5m"
//! timer_resolution = "1ms"
//! pool_capacity = 1048576
//!
//! [leak]
//! enabled = true
//! threshold = "5m"
//! interval = "30s"
//! alert_threshold = 100
//! backtrace_sample_rate = 0.0
//!
//! [metrics]
//! enabled = true
//! publish_interval = "10s"
//!
//! [propagation]
//! trusted_peers = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
//! outbound_deadline_margin = "5ms"
//! sampler = "always"
//! ```
//!
//! # Keys
//!
//! | key | type | default | allowed |
//! |-----|------|---------|---------|
//! | `default_timeout` | duration | `"30s"` | > 0, ≤ `max_timeout`, ≥ `timer_resolution` |
//! | `max_timeout` | duration | `"5m"` | > 0, ≤ 7 days |
//! | `timer_resolution` | duration | `"1ms"` | whole milliseconds, 1ms to 1s |
//! | `pool_capacity` | integer | `1048576` | 1 to 1073741824 (2³⁰) |
//! | `leak.enabled` | boolean | `true` | |
//! | `leak.threshold` | duration | `"5m"` | > 0, ≤ 7 days |
//! | `leak.interval` | duration | `"30s"` | > 0, ≤ `leak.threshold`, ≥ `timer_resolution` |
//! | `leak.alert_threshold` | integer | `100` | ≥ 1 |
//! | `leak.backtrace_sample_rate` | number | `0.0` | 0 to 1 |
//! | `metrics.enabled` | boolean | `true` | |
//! | `metrics.publish_interval` | duration | `"10s"` | > 0, ≥ `timer_resolution`, ≤ 1h |
//! | `propagation.trusted_peers` | array of strings | `[]` | CIDR blocks or IP addresses |
//! | `propagation.outbound_deadline_margin` | duration | `"5ms"` | < `max_timeout`, ≤ 1m |
//! | `propagation.sampler` | `"always"`, `"never"` or a number | `"always"` | a number is the ratio of new traces sampled, 0 to 1 |
//!
//! # Validation
//!
//! Loading walks the parsed tree key by key; each of these is one [`Problem`], and the walk
//! goes on after it:
//!
//! - a syntax error in the text (one problem for the whole document, with line and column);
//! - an unknown key or section, with a suggestion when a known key is a typo away;
//! - a value of the wrong type, or an integer that does not fit its key;
//! - a duration that does not parse, is negative, or has no unit;
//! - a trusted peer that is neither a CIDR block nor an IP address.
//!
//! Then the rules of the table above are checked, as [`Config::validate`] does. A key that
//! already has a problem is reported once, and a rule comparing two keys (such as
//! `default_timeout ≤ max_timeout`) is skipped when the other key is itself wrong. A trusted
//! peer with host bits set, such as `"10.0.0.1/8"`, is rejected with the network that was
//! probably meant. The leak and metrics settings are checked even when their task is disabled.
//!
//! [`Config::check_update`] adds the settings fixed when the pool is built: `pool_capacity`
//! (the slots the pool reserved) and `timer_resolution` (the tick of the deadline wheel) can
//! change only with a restart.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! use std::time::Duration;
//! use ctxpool::Config;
//!
//! let config = Config::from_toml_str(
//!     r#"
//!     default_timeout = "2s"
//!
//!     [propagation]
//!     trusted_peers = ["10.0.0.0/8", "::1"]
//!     "#,
//! )
//! .expect("a valid configuration");
//! assert_eq!(config.default_timeout, Duration::from_secs(2));
//! assert_eq!(config.max_timeout, Duration::from_secs(300)); // missing: the default
//! assert_eq!(config.propagation.trusted_peers.len(), 2);
//!
//! let err = Config::from_toml_str(
//!     r#"
//!     default_timeout = "10m"
//!     pool_capacity = 0
//!
//!     [leak]
//!     interval = "abc"
//!     treshold = "1m"
//!     "#,
//! )
//! .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid configuration (4 problems):
//!   - leak.interval: cannot parse \"abc\" as a duration: expected number at 0; \
//! durations are strings like \"250ms\", \"30s\" or \"5m\"
//!   - leak.treshold: unknown key; did you mean `threshold`?
//!   - default_timeout: default_timeout 10m is above max_timeout 5m
//!   - pool_capacity: must be between 1 and 1073741824 (1 << 30), found 0"
//! );
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

#[cfg(feature = "serde")]
use std::path::Path;

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
/// The longest deadline or leak threshold: far beyond any request, and well inside the 32-bit
/// millisecond ticks that deadlines are kept in (about 49 days).
const WEEK: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const MAX_POOL_CAPACITY: u32 = 1 << 30;

/// The whole configuration: timeouts, pool size, and the leak, metrics and propagation tasks.
///
/// See the [module docs](self) for the file format, defaults and rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Deadline given to request roots that ask for none. Default 30s; above 0, at most
    /// `max_timeout`, and at least `timer_resolution`.
    pub default_timeout: Duration,
    /// Every requested or incoming deadline is clamped to this. Default 5m; above 0, at most
    /// 7 days.
    pub max_timeout: Duration,
    /// Tick of the deadline wheel. Default 1ms; whole milliseconds from 1ms to 1s. Fixed when
    /// the pool is built.
    pub timer_resolution: Duration,
    /// The most contexts alive at once. Default 1,048,576; from 1 to 2³⁰. Fixed when the pool
    /// is built.
    pub pool_capacity: u32,
    /// The `[leak]` section.
    pub leak: LeakConfig,
    /// The `[metrics]` section.
    pub metrics: MetricsConfig,
    /// The `[propagation]` section.
    pub propagation: PropagationConfig,
}

impl Default for Config {
    /// The defaults listed in the [module docs](self).
    fn default() -> Self {
        Config {
            default_timeout: Duration::from_secs(30),
            max_timeout: 5 * MINUTE,
            timer_resolution: MILLISECOND,
            pool_capacity: 1 << 20,
            leak: LeakConfig::default(),
            metrics: MetricsConfig::default(),
            propagation: PropagationConfig::default(),
        }
    }
}

/// The `[leak]` section: a periodic scan for contexts alive for too long.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakConfig {
    /// Whether the scan runs. Default `true`.
    pub enabled: bool,
    /// A context alive longer than this counts as leaked. Default 5m; above 0, at most 7 days.
    pub threshold: Duration,
    /// Time between scans. Default 30s; above 0, at most `threshold`, at least
    /// `timer_resolution`.
    pub interval: Duration,
    /// Leaked contexts from one creation site before an alert. Default 100; at least 1.
    pub alert_threshold: u64,
    /// Fraction of contexts whose creation backtrace is kept. Default 0.0; from 0 to 1.
    pub backtrace_sample_rate: f64,
}

impl Default for LeakConfig {
    /// Enabled, threshold 5m, interval 30s, alert threshold 100, no backtraces.
    fn default() -> Self {
        LeakConfig {
            enabled: true,
            threshold: 5 * MINUTE,
            interval: Duration::from_secs(30),
            alert_threshold: 100,
            backtrace_sample_rate: 0.0,
        }
    }
}

/// The `[metrics]` section: publishing the pool's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Whether counters are published. Default `true`.
    pub enabled: bool,
    /// Time between publications. Default 10s; above 0, at least `timer_resolution`, at most
    /// 1h.
    pub publish_interval: Duration,
}

impl Default for MetricsConfig {
    /// Enabled, every 10s.
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            publish_interval: Duration::from_secs(10),
        }
    }
}

/// The `[propagation]` section: deadlines and trace context across process boundaries.
#[derive(Clone, Debug, PartialEq)]
pub struct PropagationConfig {
    /// Peers trusted with user identity: an incoming `x-user-id` is honoured only from them,
    /// and an outgoing one is sent only to them (see `ctxpool::http`, feature `http`). Trace
    /// context, baggage, request ids and deadlines are taken from any peer (deadlines clamped
    /// to `max_timeout`). Default none. In a file, each entry is a CIDR block
    /// (`"10.0.0.0/8"`) or an IP address (one host).
    pub trusted_peers: Vec<IpNet>,
    /// Taken off a deadline sent to a peer, for the time the request spends in transit.
    /// Default 5ms; below `max_timeout`, at most 1m.
    pub outbound_deadline_margin: Duration,
    /// Whether a trace that starts here (a request without a valid `traceparent`, or an
    /// outgoing call from a context without a trace) is sampled. Default
    /// [`Sampler::Always`](crate::propagation::Sampler::Always); a ratio is from 0 to 1. In a
    /// file: `"always"`, `"never"`, or the ratio as a number.
    pub sampler: crate::propagation::Sampler,
}

impl Default for PropagationConfig {
    /// No trusted peers, a 5ms margin, every new trace sampled.
    fn default() -> Self {
        PropagationConfig {
            trusted_peers: Vec::new(),
            outbound_deadline_margin: Duration::from_millis(5),
            sampler: crate::propagation::Sampler::Always,
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, such as `"leak.interval"` or `"propagation.trusted_peers[2]"`;
    /// empty for the document as a whole (a syntax error, a file that cannot be read).
    pub key: String,
    /// What is wrong, with the values involved.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// An invalid configuration: every problem found, in the order found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Each problem; never empty.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    #[cfg(feature = "serde")]
    fn whole(message: String) -> Self {
        ConfigError {
            problems: vec![Problem {
                key: String::new(),
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    /// `invalid configuration (N problems):`, then one `  - key: message` line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let s = if n == 1 { "" } else { "s" };
        write!(f, "invalid configuration ({n} problem{s}):")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every rule of the [module docs](self), reporting all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut checker = Checker::default();
        self.check(&mut checker);
        checker.finish()
    }

    /// Checks that `self` may replace `current` in a running pool: it must be valid, and keep
    /// the settings fixed when the pool was built (`pool_capacity`, `timer_resolution`).
    pub fn check_update(&self, current: &Config) -> Result<(), ConfigError> {
        let mut c = Checker::default();
        self.check(&mut c);
        c.check(
            "pool_capacity",
            &[],
            self.pool_capacity == current.pool_capacity,
            || {
                format!(
                    "cannot change at run time: the pool reserved {} slots when it was built; \
                     restart the process to use {}",
                    current.pool_capacity, self.pool_capacity
                )
            },
        );
        c.check(
            "timer_resolution",
            &[],
            self.timer_resolution == current.timer_resolution,
            || {
                format!(
                    "cannot change at run time: the deadline wheel ticks every {}; \
                     restart the process to use {}",
                    show(current.timer_resolution),
                    show(self.timer_resolution)
                )
            },
        );
        c.finish()
    }

    /// The rules, in an order where each key is checked after the keys it is compared with.
    fn check(&self, c: &mut Checker) {
        let res = self.timer_resolution;
        c.check(
            "timer_resolution",
            &[],
            res.subsec_nanos() % 1_000_000 == 0,
            || {
                format!(
                    "must be a whole number of milliseconds, found {}",
                    show(res)
                )
            },
        );
        c.check(
            "timer_resolution",
            &[],
            (MILLISECOND..=SECOND).contains(&res),
            || format!("must be between 1ms and 1s, found {}", show(res)),
        );

        let max = self.max_timeout;
        c.check("max_timeout", &[], !max.is_zero(), || {
            "must be above 0s".into()
        });
        c.check("max_timeout", &[], max <= WEEK, || {
            format!(
                "must be at most 7days, found {}; deadlines are kept as 32-bit millisecond ticks",
                show(max)
            )
        });

        let default = self.default_timeout;
        c.check("default_timeout", &[], !default.is_zero(), || {
            "must be above 0s".into()
        });
        c.check("default_timeout", &["max_timeout"], default <= max, || {
            format!(
                "default_timeout {} is above max_timeout {}",
                show(default),
                show(max)
            )
        });
        c.check(
            "default_timeout",
            &["timer_resolution"],
            default >= res,
            || {
                format!(
                    "default_timeout {} is below timer_resolution {}",
                    show(default),
                    show(res)
                )
            },
        );

        let capacity = self.pool_capacity;
        c.check(
            "pool_capacity",
            &[],
            (1..=MAX_POOL_CAPACITY).contains(&capacity),
            || format!("must be between 1 and {MAX_POOL_CAPACITY} (1 << 30), found {capacity}"),
        );

        let leak = &self.leak;
        c.check("leak.threshold", &[], !leak.threshold.is_zero(), || {
            "must be above 0s".into()
        });
        c.check("leak.threshold", &[], leak.threshold <= WEEK, || {
            format!("must be at most 7days, found {}", show(leak.threshold))
        });
        c.check("leak.interval", &[], !leak.interval.is_zero(), || {
            "must be above 0s".into()
        });
        c.check(
            "leak.interval",
            &["leak.threshold"],
            leak.interval <= leak.threshold,
            || {
                format!(
                    "leak interval {} is above leak threshold {}; scan at least once per threshold",
                    show(leak.interval),
                    show(leak.threshold)
                )
            },
        );
        c.check(
            "leak.interval",
            &["timer_resolution"],
            leak.interval >= res,
            || {
                format!(
                    "leak interval {} is below timer_resolution {}",
                    show(leak.interval),
                    show(res)
                )
            },
        );
        c.check(
            "leak.alert_threshold",
            &[],
            leak.alert_threshold >= 1,
            || format!("must be at least 1, found {}", leak.alert_threshold),
        );
        let rate = leak.backtrace_sample_rate;
        c.check(
            "leak.backtrace_sample_rate",
            &[],
            rate.is_finite() && (0.0..=1.0).contains(&rate),
            || format!("must be a number between 0 and 1, found {rate:?}"),
        );

        let publish = self.metrics.publish_interval;
        c.check("metrics.publish_interval", &[], !publish.is_zero(), || {
            "must be above 0s".into()
        });
        c.check(
            "metrics.publish_interval",
            &["timer_resolution"],
            publish >= res,
            || {
                format!(
                    "publish interval {} is below timer_resolution {}",
                    show(publish),
                    show(res)
                )
            },
        );
        c.check("metrics.publish_interval", &[], publish <= HOUR, || {
            format!("must be at most 1h, found {}", show(publish))
        });

        let margin = self.propagation.outbound_deadline_margin;
        c.check(
            "propagation.outbound_deadline_margin",
            &["max_timeout"],
            margin < max,
            || {
                format!(
                    "outbound deadline margin {} is not below max_timeout {}",
                    show(margin),
                    show(max)
                )
            },
        );
        c.check(
            "propagation.outbound_deadline_margin",
            &[],
            margin <= MINUTE,
            || format!("must be at most 1m, found {}", show(margin)),
        );

        let sampler = self.propagation.sampler;
        c.check("propagation.sampler", &[], sampler.is_valid(), || {
            format!("a ratio must be a number between 0 and 1, found {sampler}")
        });

        for (i, net) in self.propagation.trusted_peers.iter().enumerate() {
            let meant = net.trunc();
            let index = c.peer_index.get(i).copied().unwrap_or(i);
            let key = format!("propagation.trusted_peers[{index}]");
            c.check(&key, &[], *net == meant, || {
                format!("{net} has host bits set; did you mean {meant}?")
            });
        }
    }
}

/// Collects problems, reporting each key at most once.
#[derive(Default)]
struct Checker {
    /// Keys that already have a problem, from loading or from an earlier rule.
    bad: BTreeSet<String>,
    problems: Vec<Problem>,
    /// Where each loaded trusted peer stood in the file, when entries before it were dropped.
    peer_index: Vec<usize>,
}

impl Checker {
    /// Reports `message` under `key` unless `ok`, `key` already has a problem, or one of the
    /// keys in `compared_with` does (then the rule would blame the wrong key).
    fn check(
        &mut self,
        key: &str,
        compared_with: &[&str],
        ok: bool,
        message: impl FnOnce() -> String,
    ) {
        if ok || self.bad.contains(key) || compared_with.iter().any(|k| self.bad.contains(*k)) {
            return;
        }
        self.problem(key.to_owned(), message());
    }

    fn problem(&mut self, key: String, message: String) {
        self.bad.insert(key.clone());
        self.problems.push(Problem { key, message });
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// A duration the way files write it (`"30s"`, `"1m 30s"`, `"1ms 500us"`): the format of
/// `humantime::format_duration`, kept here so messages read the same without feature `serde`.
fn show(d: Duration) -> String {
    const YEAR: u64 = 31_557_600; // 365.25 days
    const MONTH: u64 = 2_630_016; // 30.44 days
    let (secs, nanos) = (d.as_secs(), u64::from(d.subsec_nanos()));
    if secs == 0 && nanos == 0 {
        return "0s".into();
    }
    let day_secs = secs % YEAR % MONTH % 86_400;
    let items = [
        (secs / YEAR, "year"),
        (secs % YEAR / MONTH, "month"),
        (secs % YEAR % MONTH / 86_400, "day"),
        (day_secs / 3600, "h"),
        (day_secs % 3600 / 60, "m"),
        (day_secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1000 % 1000, "us"),
        (nanos % 1000, "ns"),
    ];
    let mut out = String::new();
    for (value, unit) in items.into_iter().filter(|(v, _)| *v > 0) {
        if !out.is_empty() {
            out.push(' ');
        }
        let plural = unit.len() > 2 && value > 1;
        out += &format!("{value}{unit}{}", if plural { "s" } else { "" });
    }
    out
}

#[cfg(feature = "serde")]
mod load {
    //! Text → [`Node`] tree → [`Config`], one [`Problem`] per bad key.

    use std::net::IpAddr;
    use std::path::Path;
    use std::time::Duration;

    use ipnet::IpNet;
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{Checker, Config, ConfigError, LeakConfig, MetricsConfig, PropagationConfig};

    const DURATION_HINT: &str = "durations are strings like \"250ms\", \"30s\" or \"5m\"";
    const TOP_KEYS: &[&str] = &[
        "default_timeout",
        "max_timeout",
        "timer_resolution",
        "pool_capacity",
        "leak",
        "metrics",
        "propagation",
    ];
    const LEAK_KEYS: &[&str] = &[
        "enabled",
        "threshold",
        "interval",
        "alert_threshold",
        "backtrace_sample_rate",
    ];
    const METRICS_KEYS: &[&str] = &["enabled", "publish_interval"];
    const PROPAGATION_KEYS: &[&str] = &["trusted_peers", "outbound_deadline_margin", "sampler"];

    /// A parsed document of any self-describing format, keeping every entry of a table (so a
    /// JSON object's duplicate keys are seen) in document order.
    enum Node {
        Null,
        Bool(bool),
        Int(i128),
        Float(f64),
        Str(String),
        Seq(Vec<Node>),
        Map(Vec<(String, Node)>),
        /// A value no key takes, such as a TOML datetime: its description.
        Other(&'static str),
    }

    impl Node {
        fn describe(&self) -> String {
            match self {
                Node::Null => "null".into(),
                Node::Bool(b) => format!("boolean {b}"),
                Node::Int(n) => format!("integer {n}"),
                Node::Float(x) => format!("float {x:?}"),
                Node::Str(s) => format!("string {s:?}"),
                Node::Seq(_) => "an array".into(),
                Node::Map(_) => "a table".into(),
                Node::Other(what) => (*what).into(),
            }
        }
    }

    impl<'de> Deserialize<'de> for Node {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(NodeVisitor)
        }
    }

    struct NodeVisitor;

    impl<'de> Visitor<'de> for NodeVisitor {
        type Value = Node;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any value")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
            Ok(Node::Bool(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
            Ok(Node::Int(v.into()))
        }

        fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
            Ok(Node::Int(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
            Ok(Node::Int(v.into()))
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
            Ok(i128::try_from(v).map_or(Node::Other("a huge integer"), Node::Int))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
            Ok(Node::Float(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
            Ok(Node::Str(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
            Ok(Node::Str(v))
        }

        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
            Ok(Node::Other("bytes"))
        }

        fn visit_none<E: de::Error>(self) -> Result<Node, E> {
            Ok(Node::Null)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
            Ok(Node::Null)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
            Node::deserialize(d)
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
            Node::deserialize(d)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Node::Seq(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let mut entries = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: Node = map.next_value()?;
                // How the `toml` crate hands a datetime to `deserialize_any`.
                if entries.is_empty() && key == "$__toml_private_datetime" {
                    return Ok(Node::Other("a datetime"));
                }
                entries.push((key, value));
            }
            Ok(Node::Map(entries))
        }
    }

    pub(super) fn parse_toml(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        match toml::from_str::<Node>(text) {
            Ok(node) => from_node(&node),
            Err(e) => {
                let at = e.span().map(|span| line_column(text, span.start));
                Err(syntax_error(file, at, e.message()))
            }
        }
    }

    pub(super) fn parse_json(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        match serde_json::from_str::<Node>(text) {
            Ok(node) => from_node(&node),
            Err(e) => {
                let full = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let message = full.strip_suffix(&suffix).unwrap_or(&full);
                Err(syntax_error(file, Some((e.line(), e.column())), message))
            }
        }
    }

    pub(super) fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole(format!("cannot read {}: {e}", path.display())))?;
        let json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        if json {
            parse_json(&text, Some(path))
        } else {
            parse_toml(&text, Some(path))
        }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    fn line_column(text: &str, offset: usize) -> (usize, usize) {
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }

    fn syntax_error(file: Option<&Path>, at: Option<(usize, usize)>, message: &str) -> ConfigError {
        let mut text = String::from("syntax error");
        if let Some(file) = file {
            text += &format!(" in {}", file.display());
        }
        if let Some((line, column)) = at {
            text += &format!(" at line {line}, column {column}");
        }
        // Parsers may spread one message over several lines; a problem is one line.
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        text += ": ";
        text += &message;
        ConfigError::whole(text)
    }

    /// Walks `root` from the defaults, then checks the rules, skipping keys already reported.
    fn from_node(root: &Node) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut w = Checker::default();
        table(&mut w, "", root, TOP_KEYS, |w, key, value| match key {
            "default_timeout" => duration(w, key, value, &mut c.default_timeout),
            "max_timeout" => duration(w, key, value, &mut c.max_timeout),
            "timer_resolution" => duration(w, key, value, &mut c.timer_resolution),
            "pool_capacity" => integer(w, key, value, CAPACITY_RANGE, &mut c.pool_capacity),
            "leak" => leak(w, value, &mut c.leak),
            "metrics" => metrics(w, value, &mut c.metrics),
            _ => propagation(w, value, &mut c.propagation),
        });
        c.check(&mut w);
        w.finish().map(|()| c)
    }

    const CAPACITY_RANGE: &str = "between 1 and 1073741824 (1 << 30)";

    fn leak(w: &mut Checker, node: &Node, l: &mut LeakConfig) {
        table(w, "leak", node, LEAK_KEYS, |w, key, value| match key {
            "enabled" => boolean(w, "leak.enabled", value, &mut l.enabled),
            "threshold" => duration(w, "leak.threshold", value, &mut l.threshold),
            "interval" => duration(w, "leak.interval", value, &mut l.interval),
            "alert_threshold" => {
                let key = "leak.alert_threshold";
                integer(w, key, value, "at least 1", &mut l.alert_threshold);
            }
            _ => match *value {
                Node::Float(x) => l.backtrace_sample_rate = x,
                // Exact for every integer that passes the range check.
                Node::Int(n) => l.backtrace_sample_rate = n as f64,
                _ => w.problem(
                    "leak.backtrace_sample_rate".into(),
                    format!(
                        "expected a number between 0 and 1, found {}",
                        value.describe()
                    ),
                ),
            },
        });
    }

    fn metrics(w: &mut Checker, node: &Node, m: &mut MetricsConfig) {
        table(
            w,
            "metrics",
            node,
            METRICS_KEYS,
            |w, key, value| match key {
                "enabled" => boolean(w, "metrics.enabled", value, &mut m.enabled),
                _ => duration(
                    w,
                    "metrics.publish_interval",
                    value,
                    &mut m.publish_interval,
                ),
            },
        );
    }

    fn propagation(w: &mut Checker, node: &Node, p: &mut PropagationConfig) {
        table(w, "propagation", node, PROPAGATION_KEYS, |w, key, value| {
            if key == "outbound_deadline_margin" {
                let key = "propagation.outbound_deadline_margin";
                duration(w, key, value, &mut p.outbound_deadline_margin);
            } else if key == "sampler" {
                sampler(w, value, &mut p.sampler);
            } else {
                trusted_peers(w, value, &mut p.trusted_peers);
            }
        });
    }

    /// `"always"`, `"never"` or a ratio (its range is checked with the rules).
    fn sampler(w: &mut Checker, node: &Node, out: &mut crate::propagation::Sampler) {
        use crate::propagation::Sampler;
        match node {
            Node::Str(s) if s == "always" => *out = Sampler::Always,
            Node::Str(s) if s == "never" => *out = Sampler::Never,
            Node::Float(x) => *out = Sampler::Ratio(*x),
            Node::Int(n) => *out = Sampler::Ratio(*n as f64),
            _ => w.problem(
                "propagation.sampler".into(),
                format!(
                    "expected \"always\", \"never\" or a ratio between 0 and 1, found {}",
                    node.describe()
                ),
            ),
        }
    }

    /// Keeps the entries that parse, noting where each stood for later problems.
    fn trusted_peers(w: &mut Checker, node: &Node, peers: &mut Vec<IpNet>) {
        let key = "propagation.trusted_peers";
        let Node::Seq(items) = node else {
            let found = node.describe();
            let message =
                format!("expected an array of CIDR blocks like [\"10.0.0.0/8\"], found {found}");
            w.problem(key.into(), message);
            return;
        };
        peers.clear();
        w.peer_index.clear();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let Node::Str(s) = item else {
                let found = item.describe();
                let message = format!(
                    "expected a CIDR block like \"10.0.0.0/8\" or an IP address, found {found}"
                );
                w.problem(key, message);
                continue;
            };
            let text = s.trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|e| text.parse::<IpAddr>().map(IpNet::from).map_err(|_| e));
            match net {
                Ok(net) => {
                    peers.push(net);
                    w.peer_index.push(i);
                }
                Err(e) => w.problem(
                    key,
                    format!("{s:?} is not a CIDR block like \"10.0.0.0/8\" or an IP address ({e})"),
                ),
            }
        }
    }

    /// Calls `each` for the entries of the table at `path` whose keys are `known`, in document
    /// order; every other entry, or a value that is not a table, is a problem.
    fn table(
        w: &mut Checker,
        path: &str,
        node: &Node,
        known: &[&'static str],
        mut each: impl FnMut(&mut Checker, &'static str, &Node),
    ) {
        let Node::Map(entries) = node else {
            let found = node.describe();
            let message = if path.is_empty() {
                format!("expected a table at the top level, found {found}")
            } else {
                format!("expected a table, found {found}")
            };
            w.problem(path.into(), message);
            return;
        };
        let mut seen: Vec<&'static str> = Vec::new();
        for (key, value) in entries {
            let full = join(path, key);
            match known.iter().find(|k| **k == key) {
                Some(k) if seen.contains(k) => w.problem(full, "duplicate key".into()),
                Some(k) => {
                    seen.push(k);
                    each(w, k, value);
                }
                None => {
                    let what = if matches!(value, Node::Map(_)) {
                        "section"
                    } else {
                        "key"
                    };
                    let message = match suggest(key, known) {
                        Some(near) => format!("unknown {what}; did you mean `{near}`?"),
                        None => format!("unknown {what}; expected one of `{}`", known.join("`, `")),
                    };
                    w.problem(full, message);
                }
            }
        }
    }

    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.into()
        } else {
            format!("{path}.{key}")
        }
    }

    /// The known key nearest to `key`, if within two edits.
    fn suggest(key: &str, known: &[&'static str]) -> Option<&'static str> {
        known
            .iter()
            .map(|k| (edit_distance(key, k), *k))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k)
    }

    /// Levenshtein distance, in characters.
    fn edit_distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let substitute = diagonal + usize::from(ca != *cb);
                diagonal = row[j + 1];
                row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
            }
        }
        row[b.len()]
    }

    fn duration(w: &mut Checker, key: &str, node: &Node, slot: &mut Duration) {
        let message = match node {
            Node::Str(s) => {
                let text = s.trim();
                if text.starts_with('-') {
                    format!("cannot be negative, found {s:?}")
                } else {
                    match humantime::parse_duration(text) {
                        Ok(d) => {
                            *slot = d;
                            return;
                        }
                        Err(e) => format!("cannot parse {s:?} as a duration: {e}; {DURATION_HINT}"),
                    }
                }
            }
            Node::Int(_) | Node::Float(_) => {
                format!(
                    "expected a duration with a unit, found {}; {DURATION_HINT}",
                    node.describe()
                )
            }
            _ => format!(
                "expected a duration, found {}; {DURATION_HINT}",
                node.describe()
            ),
        };
        w.problem(key.into(), message);
    }

    fn boolean(w: &mut Checker, key: &str, node: &Node, slot: &mut bool) {
        match *node {
            Node::Bool(b) => *slot = b,
            _ => w.problem(
                key.into(),
                format!("expected true or false, found {}", node.describe()),
            ),
        }
    }

    /// An integer that fits `T`; the key's own range (`allowed`) is checked later, and named
    /// here when the value does not even fit.
    fn integer<T: TryFrom<i128>>(
        w: &mut Checker,
        key: &str,
        node: &Node,
        allowed: &str,
        slot: &mut T,
    ) {
        let message = match *node {
            Node::Int(n) => match T::try_from(n) {
                Ok(v) => {
                    *slot = v;
                    return;
                }
                Err(_) => format!("must be {allowed}, found {n}"),
            },
            _ => format!("expected an integer, found {}", node.describe()),
        };
        w.problem(key.into(), message);
    }

    impl serde::Serialize for Config {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            Repr::from(self).serialize(serializer)
        }
    }

    impl<'de> Deserialize<'de> for Config {
        /// Through the same walk as [`Config::from_toml_str`]: the error lists every problem.
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let node = Node::deserialize(deserializer)?;
            from_node(&node).map_err(de::Error::custom)
        }
    }

    /// The serialized form: durations as humantime strings, peers as CIDR strings.
    #[derive(serde::Serialize)]
    struct Repr {
        default_timeout: String,
        max_timeout: String,
        timer_resolution: String,
        pool_capacity: u32,
        leak: LeakRepr,
        metrics: MetricsRepr,
        propagation: PropagationRepr,
    }

    #[derive(serde::Serialize)]
    struct LeakRepr {
        enabled: bool,
        threshold: String,
        interval: String,
        alert_threshold: u64,
        backtrace_sample_rate: f64,
    }

    #[derive(serde::Serialize)]
    struct MetricsRepr {
        enabled: bool,
        publish_interval: String,
    }

    #[derive(serde::Serialize)]
    struct PropagationRepr {
        trusted_peers: Vec<String>,
        outbound_deadline_margin: String,
        sampler: SamplerRepr,
    }

    /// `"always"`, `"never"`, or the ratio as a number.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum SamplerRepr {
        Name(&'static str),
        Ratio(f64),
    }

    impl From<crate::propagation::Sampler> for SamplerRepr {
        fn from(s: crate::propagation::Sampler) -> Self {
            use crate::propagation::Sampler;
            match s {
                Sampler::Always => SamplerRepr::Name("always"),
                Sampler::Never => SamplerRepr::Name("never"),
                Sampler::Ratio(r) => SamplerRepr::Ratio(r),
            }
        }
    }

    impl From<&Config> for Repr {
        fn from(c: &Config) -> Self {
            Repr {
                default_timeout: written(c.default_timeout),
                max_timeout: written(c.max_timeout),
                timer_resolution: written(c.timer_resolution),
                pool_capacity: c.pool_capacity,
                leak: LeakRepr {
                    enabled: c.leak.enabled,
                    threshold: written(c.leak.threshold),
                    interval: written(c.leak.interval),
                    alert_threshold: c.leak.alert_threshold,
                    backtrace_sample_rate: c.leak.backtrace_sample_rate,
                },
                metrics: MetricsRepr {
                    enabled: c.metrics.enabled,
                    publish_interval: written(c.metrics.publish_interval),
                },
                propagation: PropagationRepr {
                    trusted_peers: c
                        .propagation
                        .trusted_peers
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    outbound_deadline_margin: written(c.propagation.outbound_deadline_margin),
                    sampler: c.propagation.sampler.into(),
                },
            }
        }
    }

    /// A duration as written to files; `show` formats it the same way for messages.
    fn written(d: Duration) -> String {
        humantime::format_duration(d).to_string()
    }
}

#[cfg(feature = "serde")]
impl Config {
    /// Loads a TOML document; see the [module docs](self) for the keys. Every problem is
    /// reported at once.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        load::parse_toml(s, None)
    }

    /// Loads a JSON document with the same tree as the TOML form; empty text means all
    /// defaults. Every problem is reported at once.
    pub fn from_json_str(s: &str) -> Result<Config, ConfigError> {
        load::parse_json(s, None)
    }

    /// Loads a file: JSON if its extension is `.json`, TOML otherwise. A file that cannot be
    /// read is one problem with an empty key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        load::read(path.as_ref())
    }

    /// This configuration as TOML, every key written; loads back to an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a Config has only TOML-compatible values")
    }

    /// This configuration as pretty-printed JSON, every key written. A NaN
    /// `leak.backtrace_sample_rate` (invalid anyway) is written as `null`.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Config has only JSON-compatible values")
    }
}

/// The text form of a configuration given to [`Pool::update_config_from`](crate::Pool::update_config_from).
#[cfg(feature = "serde")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFormat {
    /// TOML ([`Config::from_toml_str`]).
    Toml,
    /// JSON ([`Config::from_json_str`]).
    Json,
}

/// Runtime updates from text: a document that does not parse is a rejected update too, and
/// counted as one (`ctxpool_config_updates_total{result="rejected"}`), as a configuration
/// that parses but fails validation is by [`Pool::update_config`](crate::Pool::update_config).
#[cfg(feature = "serde")]
impl crate::Pool {
    /// Parses `text` as `format` and, if it is a valid configuration, makes it current (see
    /// [`Pool::update_config`](crate::Pool::update_config)). Text that is not UTF-8, does not
    /// parse or does not validate changes nothing, is counted as a rejected update, and is
    /// explained with every problem found.
    ///
    /// ```
    /// use ctxpool::config::ConfigFormat;
    /// use ctxpool::Pool;
    ///
    /// let pool = Pool::builder().build().unwrap();
    /// assert!(pool.update_config_from("default_timeout = ", ConfigFormat::Toml).is_err());
    /// assert!(pool.update_config_from(b"\xff", ConfigFormat::Json).is_err());
    /// assert!(pool.update_config_from(r#"{"default_timeout": "10m"}"#, ConfigFormat::Json).is_err());
    /// pool.update_config_from(r#"{"default_timeout": "2s"}"#, ConfigFormat::Json).unwrap();
    /// assert_eq!(pool.metrics().config_updates, [1, 3]); // accepted, rejected
    /// ```
    pub fn update_config_from(
        &self,
        text: impl AsRef<[u8]>,
        format: ConfigFormat,
    ) -> Result<(), ConfigError> {
        let parsed = std::str::from_utf8(text.as_ref())
            .map_err(|e| ConfigError::whole(format!("the configuration is not UTF-8: {e}")))
            .and_then(|text| match format {
                ConfigFormat::Toml => Config::from_toml_str(text),
                ConfigFormat::Json => Config::from_json_str(text),
            });
        self.update_parsed(parsed)
    }

    /// Loads a configuration file ([`Config::from_file`]: JSON if its extension is `.json`,
    /// TOML otherwise) and, if it is valid, makes it current; a file that cannot be read,
    /// parsed or validated changes nothing and is counted as a rejected update.
    pub fn update_config_from_file(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        self.update_parsed(Config::from_file(path))
    }

    /// Validates and applies a parsed configuration (counted either way by
    /// `update_config`), or counts a parse failure as a rejected update.
    fn update_parsed(&self, parsed: Result<Config, ConfigError>) -> Result<(), ConfigError> {
        match parsed {
            Ok(config) => self.update_config(config),
            Err(e) => {
                self.inner.get().config_updates[1]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use std::time::Duration;

    #[test]
    fn show_matches_humantime() {
        let secs = [
            0, 1, 59, 60, 90, 3600, 86_399, 86_400, 172_800, 2_630_016, 40_000_000,
        ];
        let nanos = [0, 1, 999, 1000, 1_500_000, 250_000_000, 999_999_999];
        for s in secs {
            for n in nanos {
                let d = Duration::new(s, n);
                let expected = humantime::format_duration(d).to_string();
                assert_eq!(super::show(d), expected, "{d:?}");
            }
        }
    }
}
