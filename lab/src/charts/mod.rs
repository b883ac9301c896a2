//! The four charts of a run, drawn with plotters' SVG backend and written beside
//! results.md: capacity per row (every repetition a dot), the capacity curves (p99
//! against the offered rate, from the search's steps), the latency percentiles at the
//! common rate, and the CPU per request, stacked by party.
//!
//! Rows are told apart in grey-scale too: their colours run from dark to light along
//! the ladder and each row has its own marker shape.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::results::Summary;

mod capacity;
mod cpu;
mod curves;
mod latency;
mod scale;
mod style;

use capacity::*;
use cpu::*;
use curves::*;
use latency::*;
use style::*;

/// The charts' file names and what each shows (its alt text).
pub const CHARTS: [(&str, &str); 4] = [
    (
        "results-capacity.svg",
        "Capacity per row: the median bar, every repetition a dot, the pgbench line",
    ),
    (
        "results-curves.svg",
        "p99 against the offered rate for every row, from the search's steps",
    ),
    (
        "results-latency.svg",
        "Latency percentiles at the common rate, per row",
    ),
    (
        "results-cpu.svg",
        "CPU per request at the common rate: server, PostgreSQL, load generator",
    ),
];

/// The Markdown that shows the charts (paths relative to results.md and README.md).
pub fn markdown(s: &Summary) -> String {
    let curve = crate::scale::curve(s).map(|_| format!("![{}]({})\n", SCALE.1, SCALE.0));
    let blocks = s
        .blocks
        .is_some()
        .then(|| format!("![{}]({})\n", THROUGHPUT.1, THROUGHPUT.0));
    // The search's charts, where the run searched (a curve measures the blocks alone).
    let searched = s
        .rows
        .iter()
        .any(|r| r.workloads.iter().any(|w| !w.searches.is_empty()));
    curve
        .into_iter()
        .chain(blocks)
        .chain(
            CHARTS
                .iter()
                .filter(|_| searched)
                .map(|(file, alt)| format!("![{alt}]({file})\n")),
        )
        .collect()
}

/// The headline chart, drawn for runs with blocks.
pub const THROUGHPUT: (&str, &str) = (
    "results-throughput.svg",
    "Saturation throughput per row in randomized blocks: the geometric-mean bar, its 95% interval, every block a dot",
);

/// A curve's chart, drawn for runs whose matrix has `[scale]`.
pub const SCALE: (&str, &str) = (
    "results-scale.svg",
    "One build along the curve's axis: saturation throughput, p99 at the fixed rate, CPU per request and server memory, each with its 95% interval over blocks",
);

/// Draws the four charts into `out`; `steps` is the run's steps.json (None: the curves
/// chart says the steps were not kept). Returns the files written.
pub fn write_all(
    out: &Path,
    s: &Summary,
    steps: Option<&serde_json::Value>,
) -> Result<Vec<PathBuf>> {
    let drawn = [capacity(s)?, curves(s, steps)?, latency(s)?, cpu(s)?];
    let mut files = Vec::new();
    if let Some((axis, points)) = crate::scale::curve(s) {
        let path = out.join(SCALE.0);
        std::fs::write(&path, scale::scale(s, axis, &points)?)
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    if let Some(b) = &s.blocks {
        let path = out.join(THROUGHPUT.0);
        std::fs::write(&path, throughput(s, b)?)
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    for ((file, _), svg) in CHARTS.iter().zip(drawn) {
        let path = out.join(file);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

/// Reads `steps.json` or `steps.json.gz` from a run folder (None when neither is there).
pub fn read_steps(raw: &Path) -> Result<Option<serde_json::Value>> {
    let plain = raw.join("steps.json");
    if plain.exists() {
        let text = std::fs::read_to_string(&plain)?;
        return Ok(Some(
            serde_json::from_str(&text).context("parsing steps.json")?,
        ));
    }
    let gz = raw.join("steps.json.gz");
    if gz.exists() {
        let file = std::fs::File::open(&gz)?;
        let value = serde_json::from_reader(flate2::read::GzDecoder::new(file))
            .context("parsing steps.json.gz")?;
        return Ok(Some(value));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> (Summary, serde_json::Value) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/20261129T045528Z");
        let s = crate::compare::load(&dir).unwrap();
        let steps = read_steps(&dir).unwrap().expect("steps.json");
        (s, steps)
    }

    /// Every chart of a committed run is an SVG that names every row (and the curves
    /// chart has a line per row and workload, from the kept steps).
    #[test]
    fn the_four_charts_of_a_committed_run_name_every_row() {
        let (s, steps) = committed();
        let svgs = [
            capacity(&s).unwrap(),
            curves(&s, Some(&steps)).unwrap(),
            latency(&s).unwrap(),
            cpu(&s).unwrap(),
        ];
        for svg in &svgs {
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{}",
                &svg[..80]
            );
            for r in &s.rows {
                let name = r.name.replace('&', "&amp;");
                assert!(svg.contains(&name), "{} missing", r.name);
            }
        }
        assert!(
            svgs[1].matches("<polyline").count() >= s.rows.len() * 2,
            "a curve per row and workload"
        );
        assert!(svgs[1].contains("SLO 50 ms"));
        assert!(svgs[2].contains("p99.9"));
        let no_steps = curves(&s, None).unwrap();
        assert!(no_steps.contains("no steps kept"));
    }

    #[test]
    fn the_ladder_darkens_to_lightens_monotonically() {
        let lum = |c: RGBColor| 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
        let v: Vec<f64> = (0..9).map(|i| lum(row_color(i, 9))).collect();
        assert!(v.windows(2).all(|w| w[1] > w[0]), "{v:?}");
    }
}
