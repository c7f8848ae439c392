//! `ctxpool::config`: defaults, round trips, every problem of a bad file at once, run-time
//! updates. Data files live in `tests/data/config/`; each file in `bad/` has a row in `BAD`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ctxpool::config::{ConfigError, Problem};
use ctxpool::Config;

fn keys(err: &ConfigError) -> Vec<&str> {
    let mut keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort_unstable();
    keys
}

/// The message of the one problem under `key`.
fn message<'e>(err: &'e ConfigError, key: &str) -> &'e str {
    let mut found = err.problems.iter().filter(|p| p.key == key);
    let problem = found
        .next()
        .unwrap_or_else(|| panic!("no problem for {key:?} in {err}"));
    assert!(found.next().is_none(), "{key:?} reported twice in {err}");
    &problem.message
}

#[test]
fn defaults_are_valid() {
    let c = Config::default();
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.check_update(&c), Ok(()));
    assert_eq!(c.default_timeout, Duration::from_secs(30));
    assert_eq!(c.max_timeout, Duration::from_secs(300));
    assert_eq!(c.timer_resolution, Duration::from_millis(1));
    assert_eq!(c.pool_capacity, 1 << 20);
    assert!(c.leak.enabled && c.metrics.enabled);
    assert_eq!(c.leak.threshold, Duration::from_secs(300));
    assert_eq!(c.leak.interval, Duration::from_secs(30));
    assert_eq!(c.leak.alert_threshold, 100);
    assert_eq!(c.leak.backtrace_sample_rate, 0.0);
    assert_eq!(c.metrics.publish_interval, Duration::from_secs(10));
    assert!(c.propagation.trusted_peers.is_empty());
    assert_eq!(
        c.propagation.outbound_deadline_margin,
        Duration::from_millis(5)
    );
}

/// Rules checked on values built in code, without a file.
#[test]
fn validate_reports_every_rule_broken() {
    let mut c = Config {
        timer_resolution: Duration::from_micros(1500),
        pool_capacity: (1 << 30) + 1,
        ..Config::default()
    };
    c.leak.backtrace_sample_rate = f64::NAN;
    c.leak.alert_threshold = 0;
    c.propagation.trusted_peers = vec!["192.168.1.1/16".parse().unwrap()];
    let err = c.validate().unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "leak.alert_threshold",
            "leak.backtrace_sample_rate",
            "pool_capacity",
            "propagation.trusted_peers[0]",
            "timer_resolution",
        ]
    );
    assert_eq!(
        message(&err, "timer_resolution"),
        "must be a whole number of milliseconds, found 1ms 500us"
    );
    assert_eq!(
        message(&err, "leak.backtrace_sample_rate"),
        "must be a number between 0 and 1, found NaN"
    );
    assert_eq!(
        message(&err, "propagation.trusted_peers[0]"),
        "192.168.1.1/16 has host bits set; did you mean 192.168.0.0/16?"
    );

    // A bare address is a /32 and has no host bits.
    let mut c = Config::default();
    c.propagation.trusted_peers = vec![IpAddr::V4(Ipv4Addr::LOCALHOST).into()];
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn cross_key_rules_name_both_values() {
    let c = Config {
        default_timeout: Duration::from_secs(600),
        ..Config::default()
    };
    let err = c.validate().unwrap_err();
    assert_eq!(keys(&err), ["default_timeout"]);
    assert_eq!(
        message(&err, "default_timeout"),
        "default_timeout 10m is above max_timeout 5m"
    );

    let mut c = Config::default();
    c.leak.interval = Duration::from_secs(600);
    let err = c.validate().unwrap_err();
    assert_eq!(
        message(&err, "leak.interval"),
        "leak interval 10m is above leak threshold 5m; scan at least once per threshold"
    );

    // Against a key that is itself wrong, the comparison is skipped: one mistake, one problem.
    let c = Config {
        max_timeout: Duration::from_secs(30 * 24 * 3600),
        default_timeout: Duration::from_secs(40 * 24 * 3600),
        ..Config::default()
    };
    let err = c.validate().unwrap_err();
    assert_eq!(keys(&err), ["max_timeout"]);
    assert!(message(&err, "max_timeout").contains("at most 7days, found 30days"));
}

#[test]
fn check_update_rejects_only_settings_fixed_at_build() {
    let current = Config::default();

    let mut update = current.clone();
    update.default_timeout = Duration::from_secs(5);
    update.max_timeout = Duration::from_secs(60);
    update.leak.enabled = false;
    update.leak.threshold = Duration::from_secs(60);
    update.leak.backtrace_sample_rate = 0.5;
    update.metrics.publish_interval = Duration::from_secs(1);
    update.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
    update.propagation.outbound_deadline_margin = Duration::from_millis(1);
    assert_eq!(update.check_update(&current), Ok(()));

    let update = Config {
        pool_capacity: 2048,
        ..current.clone()
    };
    assert_eq!(update.validate(), Ok(()));
    let err = update.check_update(&current).unwrap_err();
    assert_eq!(keys(&err), ["pool_capacity"]);
    assert_eq!(
        message(&err, "pool_capacity"),
        "cannot change at run time: the pool reserved 1048576 slots when it was built; \
         restart the process to use 2048"
    );

    let update = Config {
        timer_resolution: Duration::from_millis(10),
        ..current.clone()
    };
    assert_eq!(update.validate(), Ok(()));
    let err = update.check_update(&current).unwrap_err();
    assert_eq!(keys(&err), ["timer_resolution"]);
    assert_eq!(
        message(&err, "timer_resolution"),
        "cannot change at run time: the deadline wheel ticks every 1ms; \
         restart the process to use 10ms"
    );
}

#[test]
fn check_update_lists_validation_problems_too() {
    let current = Config::default();
    let mut update = Config {
        default_timeout: Duration::from_secs(600),
        pool_capacity: 4096,
        timer_resolution: Duration::from_millis(2),
        ..current.clone()
    };
    update.leak.alert_threshold = 0;
    let err = update.check_update(&current).unwrap_err();
    assert_eq!(
        keys(&err),
        [
            "default_timeout",
            "leak.alert_threshold",
            "pool_capacity",
            "timer_resolution"
        ]
    );
    assert!(message(&err, "pool_capacity").contains("restart"));
    assert!(message(&err, "default_timeout").contains("above max_timeout"));
}

#[test]
fn display_lists_every_problem_one_per_line() {
    let err = ConfigError {
        problems: vec![
            Problem {
                key: "pool_capacity".into(),
                message: "must be between 1 and 1073741824 (1 << 30), found 0".into(),
            },
            Problem {
                key: "leak.treshold".into(),
                message: "unknown key; did you mean `threshold`?".into(),
            },
            Problem {
                key: String::new(),
                message: "syntax error at line 3, column 1: expected `=`".into(),
            },
        ],
    };
    assert_eq!(
        err.to_string(),
        "invalid configuration (3 problems):\n  \
         - pool_capacity: must be between 1 and 1073741824 (1 << 30), found 0\n  \
         - leak.treshold: unknown key; did you mean `threshold`?\n  \
         - syntax error at line 3, column 1: expected `=`"
    );

    let one = ConfigError {
        problems: err.problems[..1].to_vec(),
    };
    assert!(one
        .to_string()
        .starts_with("invalid configuration (1 problem):\n"));

    // A real error: its header counts the lines below it.
    let mut c = Config {
        pool_capacity: 0,
        ..Config::default()
    };
    c.leak.alert_threshold = 0;
    c.metrics.publish_interval = Duration::ZERO;
    let err = c.validate().unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "invalid configuration (3 problems):");
    assert_eq!(lines.len(), 4);
    for (line, problem) in lines[1..].iter().zip(&err.problems) {
        assert_eq!(*line, format!("  - {}: {}", problem.key, problem.message));
    }
}

#[cfg(feature = "serde")]
mod files {
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::Duration;

    use ctxpool::Config;

    use super::{keys, message};

    fn data(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/config")).join(name)
    }

    /// Each bad file and every key it must be reported under (sorted; `""` is the document).
    const BAD: &[(&str, &[&str])] = &[
        (
            "combined.toml",
            &[
                "default_timeout",
                "leak.interval",
                "metrics.publsh_interval",
                "pool_capacity",
                "propagation.trusted_peers[1]",
            ],
        ),
        (
            "combined.json",
            &[
                "default_timeout",
                "leak.interval",
                "metrics.publsh_interval",
                "pool_capacity",
                "propagation.trusted_peers[1]",
            ],
        ),
        (
            "wrong_types.toml",
            &[
                "default_timeout",
                "leak.alert_threshold",
                "leak.enabled",
                "metrics",
                "pool_capacity",
                "propagation.trusted_peers",
            ],
        ),
        (
            "wrong_types.json",
            &[
                "default_timeout",
                "leak.backtrace_sample_rate",
                "leak.enabled",
                "max_timeout",
                "pool_capacity",
                "propagation.trusted_peers[1]",
            ],
        ),
        (
            "durations.toml",
            &[
                "default_timeout",
                "leak.interval",
                "leak.threshold",
                "max_timeout",
                "metrics.publish_interval",
                "propagation.outbound_deadline_margin",
                "timer_resolution",
            ],
        ),
        (
            "negative.json",
            &[
                "default_timeout",
                "leak.alert_threshold",
                "leak.backtrace_sample_rate",
                "pool_capacity",
            ],
        ),
        ("nan_rate.toml", &["leak.backtrace_sample_rate"]),
        (
            "inf_rate.toml",
            &["leak.alert_threshold", "leak.backtrace_sample_rate"],
        ),
        ("rate_too_high.json", &["leak.backtrace_sample_rate"]),
        ("unknown_section.toml", &["logging", "metric"]),
        ("misspelled.toml", &["default_timout", "leak.treshold"]),
        ("misspelled.json", &["propagation.trusted_peer"]),
        ("syntax.toml", &[""]),
        ("syntax.json", &[""]),
        (
            "limits.toml",
            &[
                "leak.threshold",
                "max_timeout",
                "metrics.publish_interval",
                "pool_capacity",
                "timer_resolution",
            ],
        ),
        (
            "cross.toml",
            &[
                "default_timeout",
                "leak.interval",
                "metrics.publish_interval",
                "propagation.outbound_deadline_margin",
            ],
        ),
        (
            "peers.json",
            &[
                "propagation.trusted_peers[0]",
                "propagation.trusted_peers[1]",
                "propagation.trusted_peers[3]",
            ],
        ),
        ("top_level.json", &[""]),
        ("datetime.toml", &["default_timeout"]),
        ("duplicate.json", &["pool_capacity"]),
    ];

    fn load_bad(name: &str) -> ctxpool::config::ConfigError {
        match Config::from_file(data("bad").join(name)) {
            Ok(c) => panic!("bad/{name} loaded: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_files_report_every_problem() {
        let mut failures = Vec::new();
        for (name, expected) in BAD {
            let err = load_bad(name);
            if keys(&err) != *expected {
                failures.push(format!("bad/{name}: expected {expected:?}, got\n{err}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn every_bad_file_has_expectations() {
        let listed: BTreeSet<&str> = BAD.iter().map(|(name, _)| *name).collect();
        assert_eq!(listed.len(), BAD.len(), "a file is listed twice");
        let on_disk: BTreeSet<String> = std::fs::read_dir(data("bad"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let on_disk: BTreeSet<&str> = on_disk.iter().map(String::as_str).collect();
        assert_eq!(listed, on_disk);
        let json = listed.iter().filter(|n| n.ends_with(".json")).count();
        assert!(json >= 5 && listed.len() - json >= 5);
    }

    #[test]
    fn combined_messages_explain_each_problem() {
        let err = load_bad("combined.toml");
        assert_eq!(
            message(&err, "default_timeout"),
            "default_timeout 10m is above max_timeout 5m"
        );
        assert!(message(&err, "leak.interval").contains("above leak threshold 1m"));
        assert_eq!(
            message(&err, "metrics.publsh_interval"),
            "unknown key; did you mean `publish_interval`?"
        );
        assert!(message(&err, "propagation.trusted_peers[1]").contains("\"10.0.0.300/24\""));
        // Both formats describe the same problems the same way.
        assert_eq!(load_bad("combined.json"), err);
    }

    #[test]
    fn type_and_duration_messages() {
        let err = load_bad("wrong_types.toml");
        assert_eq!(
            message(&err, "default_timeout"),
            "expected a duration with a unit, found integer 30; \
             durations are strings like \"250ms\", \"30s\" or \"5m\""
        );
        assert_eq!(
            message(&err, "metrics"),
            "expected a table, found integer 5"
        );
        assert_eq!(
            message(&err, "leak.enabled"),
            "expected true or false, found string \"yes\""
        );
        assert_eq!(
            message(&err, "leak.alert_threshold"),
            "expected an integer, found float 1.5"
        );

        let err = load_bad("wrong_types.json");
        assert!(message(&err, "default_timeout").contains("found null"));

        let err = load_bad("durations.toml");
        assert!(message(&err, "default_timeout").starts_with("cannot parse \"abc\" as a duration"));
        assert_eq!(
            message(&err, "max_timeout"),
            "cannot be negative, found \"-1s\""
        );
        assert!(message(&err, "leak.threshold").contains("time unit needed"));
        assert!(message(&err, "leak.threshold").contains("durations are strings like"));
        assert!(message(&err, "timer_resolution").contains("whole number of milliseconds"));
        assert_eq!(
            message(&err, "propagation.outbound_deadline_margin"),
            "must be at most 1m, found 2m"
        );

        let err = load_bad("negative.json");
        assert_eq!(
            message(&err, "pool_capacity"),
            "must be between 1 and 1073741824 (1 << 30), found -1"
        );
        assert_eq!(
            message(&err, "leak.alert_threshold"),
            "must be at least 1, found -5"
        );
        assert!(message(&err, "leak.backtrace_sample_rate").ends_with("found -0.1"));

        let err = load_bad("datetime.toml");
        assert!(message(&err, "default_timeout").contains("found a datetime"));
    }

    #[test]
    fn unknown_keys_suggest_near_names() {
        let err = load_bad("misspelled.toml");
        assert_eq!(
            message(&err, "leak.treshold"),
            "unknown key; did you mean `threshold`?"
        );
        assert_eq!(
            message(&err, "default_timout"),
            "unknown key; did you mean `default_timeout`?"
        );
        let err = load_bad("misspelled.json");
        assert_eq!(
            message(&err, "propagation.trusted_peer"),
            "unknown key; did you mean `trusted_peers`?"
        );

        let err = load_bad("unknown_section.toml");
        assert_eq!(
            message(&err, "metric"),
            "unknown section; did you mean `metrics`?"
        );
        // Nothing near: list what is allowed.
        assert_eq!(
            message(&err, "logging"),
            "unknown section; expected one of `default_timeout`, `max_timeout`, \
             `timer_resolution`, `pool_capacity`, `leak`, `metrics`, `propagation`"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = load_bad("syntax.toml");
        let text = message(&err, "");
        assert!(text.starts_with("syntax error in "), "{text}");
        assert!(
            text.contains("syntax.toml at line 2, column 23: invalid basic string"),
            "{text}"
        );

        let err = load_bad("syntax.json");
        let text = message(&err, "");
        assert!(
            text.contains("syntax.json at line 3, column 1: trailing comma"),
            "{text}"
        );

        let err = Config::from_toml_str("[leak\n").unwrap_err();
        assert!(message(&err, "").starts_with("syntax error at line 1, column 6: "));
        // One problem is one line, even when the parser's message has several.
        assert_eq!(err.to_string().lines().count(), 2);
    }

    #[test]
    fn trusted_peers_keep_file_positions() {
        let err = load_bad("peers.json");
        assert_eq!(
            message(&err, "propagation.trusted_peers[0]"),
            "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert!(message(&err, "propagation.trusted_peers[1]").starts_with("\"not-an-ip\" is not"));
        // Index 3 in the file, though entry 1 was dropped before it.
        assert_eq!(
            message(&err, "propagation.trusted_peers[3]"),
            "2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"
        );
    }

    #[test]
    fn limits_skip_comparisons_with_bad_keys() {
        let err = load_bad("limits.toml");
        assert!(message(&err, "max_timeout").contains("32-bit millisecond ticks"));
        assert_eq!(
            message(&err, "timer_resolution"),
            "must be between 1ms and 1s, found 2s"
        );
        let err = load_bad("cross.toml");
        assert_eq!(
            message(&err, "default_timeout"),
            "default_timeout 500us is below timer_resolution 1ms"
        );
        assert_eq!(
            message(&err, "propagation.outbound_deadline_margin"),
            "outbound deadline margin 5m is not below max_timeout 5m"
        );
    }

    #[test]
    fn empty_files_mean_defaults() {
        assert_eq!(Config::from_file(data("empty.toml")), Ok(Config::default()));
        assert_eq!(Config::from_file(data("empty.json")), Ok(Config::default()));
        assert_eq!(Config::from_toml_str(""), Ok(Config::default()));
        assert_eq!(Config::from_json_str("{}"), Ok(Config::default()));
        assert_eq!(Config::from_json_str(" \n"), Ok(Config::default()));
    }

    fn full() -> Config {
        let mut c = Config {
            default_timeout: Duration::from_secs(2),
            max_timeout: Duration::from_secs(90),
            timer_resolution: Duration::from_millis(5),
            pool_capacity: 65536,
            ..Config::default()
        };
        c.leak.enabled = false;
        c.leak.threshold = Duration::from_secs(600);
        c.leak.interval = Duration::from_secs(60);
        c.leak.alert_threshold = 7;
        c.leak.backtrace_sample_rate = 0.25;
        c.metrics.enabled = false;
        c.metrics.publish_interval = Duration::from_millis(250);
        c.propagation.trusted_peers = ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        c.propagation.outbound_deadline_margin = Duration::from_millis(20);
        c.propagation.sampler = ctxpool::propagation::Sampler::Ratio(0.25);
        c
    }

    #[test]
    fn full_example_sets_every_key_in_both_formats() {
        let toml = Config::from_file(data("full.toml")).unwrap();
        let json = Config::from_file(data("full.json")).unwrap();
        assert_eq!(toml, full());
        assert_eq!(json, toml);

        // Every key differs from its default, so a key the loader skipped would show here.
        let text = toml.to_toml_string();
        let default = Config::default().to_toml_string();
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.contains(" = "))
                .map(String::from)
                .collect()
        };
        let (ours, theirs) = (lines(&text), lines(&default));
        assert_eq!(ours.len(), 14);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_ne!(a, b);
        }
    }

    #[test]
    fn toml_round_trip() {
        for c in [Config::default(), full()] {
            let first = c.to_toml_string();
            let back = Config::from_toml_str(&first).unwrap();
            assert_eq!(back, c);
            assert_eq!(back.to_toml_string(), first);
        }
        let text = Config::default().to_toml_string();
        assert!(text.contains("default_timeout = \"30s\"\n"), "{text}");
        assert!(text.contains("max_timeout = \"5m\"\n"), "{text}");
        assert!(text.contains("\n[leak]\n"), "{text}");
    }

    #[test]
    fn json_round_trip() {
        for c in [Config::default(), full()] {
            let first = c.to_json_string();
            let back = Config::from_json_str(&first).unwrap();
            assert_eq!(back, c);
            assert_eq!(back.to_json_string(), first);
        }
        let text = full().to_json_string();
        assert!(text.contains("\"max_timeout\": \"1m 30s\""), "{text}");
        assert!(text.contains("\"publish_interval\": \"250ms\""), "{text}");
    }

    #[test]
    fn serde_impls_use_the_same_checks() {
        let err = toml::from_str::<Config>("pool_capacity = 0\n[leak]\ntreshold = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid configuration (2 problems)"), "{err}");
        assert!(err.contains("leak.treshold: unknown key; did you mean `threshold`?"));
        assert!(err.contains("pool_capacity: must be between 1"));

        let c: Config = serde_json::from_str(&full().to_json_string()).unwrap();
        assert_eq!(c, full());
        let value = serde_json::to_value(full()).unwrap();
        assert_eq!(value["leak"]["threshold"], "10m");
    }

    /// `propagation.sampler`: `"always"`, `"never"` or a ratio from 0 to 1, in both formats;
    /// anything else is one problem naming the key.
    #[test]
    fn sampler_names_and_ratios() {
        use ctxpool::propagation::Sampler;
        for (text, want) in [
            ("\"always\"", Sampler::Always),
            ("\"never\"", Sampler::Never),
            ("0.1", Sampler::Ratio(0.1)),
            ("1", Sampler::Ratio(1.0)),
            ("0", Sampler::Ratio(0.0)),
        ] {
            let toml = Config::from_toml_str(&format!("[propagation]\nsampler = {text}")).unwrap();
            assert_eq!(toml.propagation.sampler, want, "{text}");
            let json =
                Config::from_json_str(&format!("{{\"propagation\": {{\"sampler\": {text}}}}}"))
                    .unwrap();
            assert_eq!(json.propagation.sampler, want, "{text}");
            assert_eq!(Config::from_toml_str(&toml.to_toml_string()).unwrap(), toml);
        }
        for (text, says) in [
            ("\"sometimes\"", "expected \"always\", \"never\" or a ratio"),
            ("1.5", "a ratio must be a number between 0 and 1, found 1.5"),
            ("-1", "a ratio must be a number between 0 and 1, found -1.0"),
            ("true", "found boolean true"),
        ] {
            let err =
                Config::from_toml_str(&format!("[propagation]\nsampler = {text}")).unwrap_err();
            assert_eq!(keys(&err), ["propagation.sampler"], "{text}");
            let m = message(&err, "propagation.sampler");
            assert!(m.contains(says), "{text}: {m}");
        }
    }

    #[test]
    fn from_file_picks_the_format_and_reports_io_errors() {
        let missing = data("no-such-file.toml");
        let err = Config::from_file(&missing).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        let text = message(&err, "");
        assert!(text.starts_with("cannot read "), "{text}");
        assert!(text.contains("no-such-file.toml"), "{text}");

        // Any other extension is read as TOML.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("ctxpool-config-test.conf");
        std::fs::write(&path, "pool_capacity = 4096\n").unwrap();
        assert_eq!(Config::from_file(&path).unwrap().pool_capacity, 4096);
        let path = dir.join("ctxpool-config-test.JSON");
        std::fs::write(&path, "{\"pool_capacity\": 4096}").unwrap();
        assert_eq!(Config::from_file(&path).unwrap().pool_capacity, 4096);
    }
}
