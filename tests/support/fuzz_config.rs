//! The check of the `config` fuzz target, shared by `fuzz/fuzz_targets/config.rs` and
//! `tests/corpus.rs` (which includes it only with feature `serde`, the TOML and JSON
//! loaders' feature; the fuzz crate builds ctxpool with its default features, `serde` among
//! them).

use ctxpool::Config;

/// The first byte picks the format (even: TOML, odd: JSON), the rest is the document. A
/// document that loads is valid (loading validates), and both writers' output loads back to
/// an equal configuration; a rejected one has a non-empty report.
pub fn run(data: &[u8]) {
    let Some((&format, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let loaded = if format % 2 == 0 {
        Config::from_toml_str(text)
    } else {
        Config::from_json_str(text)
    };
    match loaded {
        Ok(config) => {
            config.validate().expect("a loaded configuration is valid");
            let toml = config.to_toml_string();
            let back = Config::from_toml_str(&toml)
                .unwrap_or_else(|e| panic!("written TOML does not load: {e}\n{toml}"));
            assert_eq!(back, config, "TOML round trip\n{toml}");
            let json = config.to_json_string();
            let back = Config::from_json_str(&json)
                .unwrap_or_else(|e| panic!("written JSON does not load: {e}\n{json}"));
            assert_eq!(back, config, "JSON round trip\n{json}");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
