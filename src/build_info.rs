//! What this binary was built with. The benchmark refuses to measure a server whose
//! `/version` does not list exactly the features it asked for, so this list must be honest.
use serde::Serialize;

/// The crate version, from Cargo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Declares the optimisation features once: the list of all of them and the list of
/// those compiled in (by `cfg!`), in the same fixed order.
macro_rules! features {
    ($($name:literal),* $(,)?) => {
        /// Every feature of Cargo.toml (the umbrella `full` is not one: it only switches
        /// the optimisations on). A test checks this against Cargo.toml.
        pub const ALL_FEATURES: &[&str] = &[$($name),*];

        /// The optimisation features compiled into this binary, in [`ALL_FEATURES`]' order.
        pub fn enabled_features() -> Vec<&'static str> {
            let mut on = Vec::new();
            $(if cfg!(feature = $name) {
                on.push($name);
            })*
            on
        }
    };
}

features!(
    "pool",
    "prepared",
    "mimalloc",
    "simd-json",
    "metrics",
    "pipeline",
    "coalesce",
    "current-thread",
    "memory-store",
);

/// Features that are references, not optimisations: not in `full`, and a build with
/// one of them is not a candidate for a ladder's "fastest".
pub const REFERENCE_FEATURES: &[&str] = &["memory-store"];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The feature names of Cargo.toml's `[features]` table, and what `full` turns on.
    fn cargo_features() -> (Vec<String>, Vec<String>) {
        let manifest = include_str!("../Cargo.toml");
        let table = manifest
            .split("[features]")
            .nth(1)
            .and_then(|t| t.split("\n[").next())
            .expect("a [features] table");
        let (mut names, mut full) = (Vec::new(), Vec::new());
        for line in table.lines().map(str::trim) {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let name = name.trim().to_string();
            if name == "full" {
                full = value
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .map(String::from)
                    .collect();
            } else if name != "default" && !name.starts_with('#') {
                names.push(name);
            }
        }
        (names, full)
    }

    #[test]
    fn the_feature_list_is_cargo_tomls() {
        let (names, full) = cargo_features();
        assert_eq!(names, ALL_FEATURES, "Cargo.toml's features, in order");
        let optimisations: Vec<&str> = ALL_FEATURES
            .iter()
            .copied()
            .filter(|f| !REFERENCE_FEATURES.contains(f))
            .collect();
        assert_eq!(full, optimisations, "`full` turns every optimisation on");
    }
}
