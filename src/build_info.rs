//! What this binary was built with. The benchmark refuses to measure a server whose
//! `/version` does not list exactly the features it asked for, so this list must be honest.
use serde::Serialize;

/// The crate version, from Cargo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The optimisation features compiled into this binary, in a fixed order.
/// The umbrella feature `full` is not listed: it only switches the others on.
pub fn enabled_features() -> Vec<&'static str> {
    let all = [
        ("pool", cfg!(feature = "pool")),
        ("prepared", cfg!(feature = "prepared")),
        ("mimalloc", cfg!(feature = "mimalloc")),
        ("simd-json", cfg!(feature = "simd-json")),
        ("metrics", cfg!(feature = "metrics")),
        ("pipeline", cfg!(feature = "pipeline")),
        ("coalesce", cfg!(feature = "coalesce")),
    ];
    all.iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect()
}

/// The body of `GET /version`.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub features: Vec<&'static str>,
}

impl VersionInfo {
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME"),
            version: VERSION,
            features: enabled_features(),
        }
    }
}
