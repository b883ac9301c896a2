//! The four charts of a run, drawn with plotters' SVG backend and written beside
//! results.md: capacity per row (every repetition a dot), the capacity curves (p99
//! against the offered rate, from the search's steps), the latency percentiles at the
//! common rate, and the CPU per request, stacked by party.
//!
//! Rows are told apart in grey-scale too: their colours run from dark to light along
//! the ladder and each row has its own marker shape.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::stats::spread;
use crate::report::fmt_qps;
use crate::results::{CommonLoad, Summary, WorkloadResult};

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

const FONT: &str = "sans-serif";
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The Markdown that shows the charts (paths relative to results.md and README.md).
pub fn markdown(s: &Summary) -> String {
    let blocks = s
        .blocks
        .is_some()
        .then(|| format!("![{}]({})\n", THROUGHPUT.1, THROUGHPUT.0));
    blocks
        .into_iter()
        .chain(
            CHARTS
                .iter()
                .map(|(file, alt)| format!("![{alt}]({file})\n")),
        )
        .collect()
}

/// The headline chart, drawn for runs with blocks.
pub const THROUGHPUT: (&str, &str) = (
    "results-throughput.svg",
    "Saturation throughput per row in randomized blocks: the geometric-mean bar, its 95% interval, every block a dot",
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

/// Row `i` of `n`'s colour: along viridis from dark violet to green, so that the
/// ladder's order is also an order of lightness (it survives grey-scale printing).
fn row_color(i: usize, n: usize) -> RGBColor {
    const STOPS: [(u8, u8, u8); 6] = [
        (68, 1, 84),
        (65, 68, 135),
        (42, 120, 142),
        (34, 168, 132),
        (122, 209, 81),
        (189, 223, 38),
    ];
    let t = if n > 1 {
        i as f64 / (n - 1) as f64
    } else {
        0.0
    } * 0.9;
    let x = t * (STOPS.len() - 1) as f64;
    let k = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - k as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

const REFERENCE: RGBColor = RGBColor(110, 110, 110);
const SLO: RGBColor = RGBColor(200, 30, 30);

/// A marker of shape `kind` at a pixel: circle, triangle, square, diamond, cross.
fn marker(area: &Area, at: (i32, i32), kind: usize, size: i32, style: ShapeStyle) -> Result<()> {
    let (x, y) = at;
    match kind % 5 {
        0 => area.draw(&Circle::new(at, size, style))?,
        1 => area.draw(&Polygon::new(
            vec![
                (x, y - size - 1),
                (x - size - 1, y + size),
                (x + size + 1, y + size),
            ],
            style,
        ))?,
        2 => area.draw(&Rectangle::new(
            [(x - size, y - size), (x + size, y + size)],
            style,
        ))?,
        3 => area.draw(&Polygon::new(
            vec![
                (x, y - size - 2),
                (x + size + 2, y),
                (x, y + size + 2),
                (x - size - 2, y),
            ],
            style,
        ))?,
        _ => {
            let s = size + 1;
            let line = ShapeStyle {
                filled: false,
                stroke_width: 2,
                ..style
            };
            area.draw(&PathElement::new(
                vec![(x - s, y - s), (x + s, y + s)],
                line,
            ))?;
            area.draw(&PathElement::new(
                vec![(x - s, y + s), (x + s, y - s)],
                line,
            ))?;
        }
    }
    Ok(())
}

/// A chart of one panel per workload side by side: the title, then the panels' areas
/// between `top` and `bottom` pixels of margin.
fn two_panels<'a>(
    root: &Area<'a>,
    heading: &str,
    top: i32,
    bottom: i32,
    panels: usize,
) -> Result<Vec<Area<'a>>> {
    title(root, heading)?;
    let body = root.margin(top as u32, bottom as u32, 0, 0);
    Ok(body.split_evenly((1, panels)))
}

/// A workload's panel of a two-panel chart: its caption and room for the axes.
fn panel<'a, 'b>(area: &'a Area<'b>, workload: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.caption(workload, (FONT, 18))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(56);
    b
}

fn text(area: &Area, at: (i32, i32), s: &str, size: u32, pos: Pos, color: &RGBColor) -> Result<()> {
    let style = TextStyle::from((FONT, size).into_font())
        .color(color)
        .pos(pos);
    area.draw(&Text::new(s.to_string(), at, style))?;
    Ok(())
}

/// One entry of a legend: a name, its colour, marker and whether its line is dashed.
struct Key {
    name: String,
    color: RGBColor,
    marker: Option<usize>,
    dashed: bool,
    /// A filled box instead of a line (for bars).
    swatch: bool,
}

/// Draws a legend in `columns` columns on a strip of the image (pixel coordinates).
fn legend(area: &Area, origin: (i32, i32), width: i32, columns: usize, keys: &[Key]) -> Result<()> {
    let col_w = width / columns.max(1) as i32;
    for (i, k) in keys.iter().enumerate() {
        let x = origin.0 + (i % columns) as i32 * col_w;
        let y = origin.1 + (i / columns) as i32 * 22;
        let style = k.color.stroke_width(2);
        if k.swatch {
            area.draw(&Rectangle::new(
                [(x + 4, y - 7), (x + 22, y + 7)],
                k.color.filled(),
            ))?;
        } else if k.dashed {
            for d in 0..3 {
                area.draw(&PathElement::new(
                    vec![(x + d * 10, y), (x + d * 10 + 6, y)],
                    style,
                ))?;
            }
        } else {
            area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], style))?;
        }
        if let Some(m) = k.marker {
            marker(area, (x + 13, y), m, 4, k.color.filled())?;
        }
        text(
            area,
            (x + 34, y),
            &k.name,
            14,
            Pos::new(HPos::Left, VPos::Center),
            &BLACK,
        )?;
    }
    Ok(())
}

fn legend_rows(keys: usize, columns: usize) -> i32 {
    keys.div_ceil(columns.max(1)) as i32 * 22 + 16
}

/// A row's name as the legend shows it: `*` when it ran below the common rate.
fn row_keys(s: &Summary) -> Vec<Key> {
    let n = s.rows.len();
    s.rows
        .iter()
        .enumerate()
        .map(|(i, r)| Key {
            name: r.name.clone(),
            color: row_color(i, n),
            marker: Some(i),
            dashed: false,
            swatch: false,
        })
        .collect()
}

fn svg_string(draw: impl FnOnce(&Area) -> Result<()>, size: (u32, u32)) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

fn title(area: &Area, s: &str) -> Result<()> {
    text(
        area,
        (20, 22),
        s,
        20,
        Pos::new(HPos::Left, VPos::Center),
        &BLACK,
    )
}

/// "1k", "10k" for an axis of requests per second.
fn rate_label(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-6 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else {
        fmt_qps(v)
    }
}

fn ms_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Chart 1: horizontal bars of each row's median capacity per workload (log scale),
/// each repetition a dot on its bar, the pgbench capacity a dashed line per workload.
fn capacity(s: &Summary) -> Result<String> {
    let n = s.rows.len().max(1);
    let nw = s.workloads.len().max(1);
    let (w, label_w, top, band) = (1000_i32, 150_i32, 60_i32, 18 * nw as i32 + 14);
    let keys: Vec<Key> = s
        .workloads
        .iter()
        .enumerate()
        .map(|(j, name)| Key {
            name: format!("{name} (median; dots: repetitions)"),
            color: workload_color(j),
            marker: None,
            dashed: false,
            swatch: true,
        })
        .chain(
            s.workloads
                .iter()
                .enumerate()
                .filter(|(_, name)| s.reference.iter().any(|r| &r.workload == *name))
                .map(|(j, name)| Key {
                    name: format!("PostgreSQL alone (pgbench), {name}"),
                    color: workload_color(j),
                    marker: None,
                    dashed: true,
                    swatch: false,
                }),
        )
        .collect();
    let legend_h = legend_rows(keys.len(), 2);
    let plot_h = band * n as i32;
    let h = top + plot_h + 50 + legend_h;
    let values: Vec<f64> = s
        .rows
        .iter()
        .flat_map(|r| &r.workloads)
        .flat_map(|w| w.searches.iter().map(|x| x.qps))
        .chain(s.reference.iter().map(|r| r.tps))
        .filter(|q| *q > 0.0)
        .collect();
    let max = values.iter().cloned().fold(100.0_f64, f64::max) * 1.6;
    let min = values.iter().cloned().fold(max, f64::min).max(1.0) / 2.0;
    let draw = |root: &Area| -> Result<()> {
        title(root, "Capacity per row: max QPS within the SLO (log scale)")?;
        let plot = root.margin(top as u32, (h - top - plot_h) as u32, label_w as u32, 30);
        let mut chart = ChartBuilder::on(&plot)
            .x_label_area_size(0)
            .y_label_area_size(0)
            .build_cartesian_2d((min..max).log_scale(), 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_labels(8)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        // The x axis labels under the plot, at the decades and their 2× and 5×.
        let mut v = 10f64.powf(min.log10().floor());
        while v <= max {
            for m in [1.0, 2.0, 5.0] {
                let x = v * m;
                if x >= min && x <= max {
                    let (xx, yy) = chart.backend_coord(&(x, 0.0));
                    text(
                        root,
                        (xx, yy + 14),
                        &rate_label(x),
                        13,
                        Pos::new(HPos::Center, VPos::Center),
                        &BLACK,
                    )?;
                }
            }
            v *= 10.0;
        }
        let (ax, ay) = chart.backend_coord(&(min, 0.0));
        text(
            root,
            (ax + 300, ay + 36),
            "good replies per second (log scale)",
            14,
            Pos::new(HPos::Left, VPos::Center),
            &BLACK,
        )?;
        for (i, row) in s.rows.iter().enumerate() {
            // Row i's band, from the top.
            let y_top = n as f64 - i as f64;
            let (_, yy) = chart.backend_coord(&(min, y_top - 0.5));
            text(
                root,
                (label_w - 8, yy),
                &row.name,
                14,
                Pos::new(HPos::Right, VPos::Center),
                &BLACK,
            )?;
            for (j, wl) in row.workloads.iter().enumerate() {
                let Some(q) = wl.qps() else { continue };
                let slot = 0.8 / nw as f64;
                let y1 = y_top - 0.1 - slot * j as f64;
                let y0 = y1 - slot * 0.9;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(min, y0), (q.median, y1)],
                    workload_color(j).filled(),
                )))?;
                // The median's value right of the bar and of every dot.
                let (mx, my) = chart.backend_coord(&(q.max.max(q.median), (y0 + y1) / 2.0));
                text(
                    root,
                    (mx + 9, my),
                    &fmt_qps(q.median),
                    12,
                    Pos::new(HPos::Left, VPos::Center),
                    &BLACK,
                )?;
                for x in &wl.searches {
                    if x.qps > 0.0 {
                        let (dx, dy) = chart.backend_coord(&(x.qps, (y0 + y1) / 2.0));
                        root.draw(&Circle::new((dx, dy), 4, WHITE.filled()))?;
                        root.draw(&Circle::new((dx, dy), 4, BLACK.stroke_width(1)))?;
                    }
                }
            }
        }
        for (j, name) in s.workloads.iter().enumerate() {
            let tps: Vec<f64> = s
                .reference
                .iter()
                .filter(|r| &r.workload == name)
                .map(|r| r.tps)
                .collect();
            if let Some(t) = spread(&tps) {
                chart.draw_series(DashedLineSeries::new(
                    [(t.median, 0.0), (t.median, n as f64)],
                    6,
                    4,
                    workload_color(j).stroke_width(2),
                ))?;
                let (lx, ly) = chart.backend_coord(&(t.median, n as f64));
                text(
                    root,
                    (lx - 4, ly - 8 - 14 * j as i32),
                    &format!("pgbench {}", fmt_qps(t.median)),
                    12,
                    Pos::new(HPos::Right, VPos::Center),
                    &BLACK,
                )?;
            }
        }
        legend(
            root,
            (label_w, top + plot_h + 60),
            w - label_w - 20,
            2,
            &keys,
        )?;
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
}

/// Chart 0 (runs with blocks): horizontal bars of each row's median saturation
/// throughput per workload (log scale), its 95% interval as a whisker, every block's
/// window a dot; rows that did not take part are left empty.
fn throughput(s: &Summary, b: &crate::blocks::Blocks) -> Result<String> {
    let n = s.rows.len().max(1);
    let nw = b.workloads.len().max(1);
    let (w, label_w, top, band) = (1000_i32, 150_i32, 60_i32, 18 * nw as i32 + 14);
    let keys: Vec<Key> = b
        .workloads
        .iter()
        .enumerate()
        .map(|(j, name)| Key {
            name: format!("{name} (geometric mean; whisker: 95% interval; dots: blocks)"),
            color: workload_color(j),
            marker: None,
            dashed: false,
            swatch: true,
        })
        .collect();
    let legend_h = legend_rows(keys.len(), 1);
    let plot_h = band * n as i32;
    let h = top + plot_h + 50 + legend_h;
    let values: Vec<f64> = b
        .windows
        .iter()
        .map(|x| x.throughput)
        .chain(
            b.cells
                .iter()
                .filter_map(|c| c.throughput.as_ref())
                .flat_map(|t| [t.interval.ci_low, t.interval.ci_high]),
        )
        .filter(|q| *q > 0.0)
        .collect();
    let max = values.iter().cloned().fold(100.0_f64, f64::max) * 1.6;
    let min = values.iter().cloned().fold(max, f64::min).max(1.0) / 2.0;
    let draw = |root: &Area| -> Result<()> {
        title(
            root,
            "Saturation throughput per row, randomized blocks (log scale)",
        )?;
        let plot = root.margin(top as u32, (h - top - plot_h) as u32, label_w as u32, 30);
        let mut chart = ChartBuilder::on(&plot)
            .x_label_area_size(0)
            .y_label_area_size(0)
            .build_cartesian_2d((min..max).log_scale(), 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_labels(8)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        let mut v = 10f64.powf(min.log10().floor());
        while v <= max {
            for m in [1.0, 2.0, 5.0] {
                let x = v * m;
                if x >= min && x <= max {
                    let (xx, yy) = chart.backend_coord(&(x, 0.0));
                    text(
                        root,
                        (xx, yy + 14),
                        &rate_label(x),
                        13,
                        Pos::new(HPos::Center, VPos::Center),
                        &BLACK,
                    )?;
                }
            }
            v *= 10.0;
        }
        let (ax, ay) = chart.backend_coord(&(min, 0.0));
        text(
            root,
            (ax + 300, ay + 36),
            "good replies per second, closed loop (log scale)",
            14,
            Pos::new(HPos::Left, VPos::Center),
            &BLACK,
        )?;
        for (i, row) in s.rows.iter().enumerate() {
            let y_top = n as f64 - i as f64;
            let (_, yy) = chart.backend_coord(&(min, y_top - 0.5));
            text(
                root,
                (label_w - 8, yy),
                &row.name,
                14,
                Pos::new(HPos::Right, VPos::Center),
                &BLACK,
            )?;
            for (j, wl) in b.workloads.iter().enumerate() {
                let Some(t) = b.cell(&row.name, wl).and_then(|c| c.throughput.as_ref()) else {
                    continue;
                };
                let iv = &t.interval;
                let slot = 0.8 / nw as f64;
                let y1 = y_top - 0.1 - slot * j as f64;
                let y0 = y1 - slot * 0.9;
                let mid = (y0 + y1) / 2.0;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(min, y0), (iv.geomean.max(min), y1)],
                    workload_color(j).filled(),
                )))?;
                let whisker = BLACK.stroke_width(2);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(iv.ci_low, mid), (iv.ci_high, mid)],
                    whisker,
                )))?;
                for x in [iv.ci_low, iv.ci_high] {
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(x, y0), (x, y1)],
                        whisker,
                    )))?;
                }
                for win in b
                    .windows
                    .iter()
                    .filter(|x| x.row == row.name && &x.workload == wl)
                {
                    if win.throughput > 0.0 {
                        let (dx, dy) = chart.backend_coord(&(win.throughput, mid));
                        root.draw(&Circle::new((dx, dy), 3, WHITE.filled()))?;
                        root.draw(&Circle::new((dx, dy), 3, BLACK.stroke_width(1)))?;
                    }
                }
                let right = b
                    .windows
                    .iter()
                    .filter(|x| x.row == row.name && &x.workload == wl)
                    .map(|x| x.throughput)
                    .fold(iv.ci_high.max(iv.geomean), f64::max);
                let (mx, my) = chart.backend_coord(&(right, mid));
                text(
                    root,
                    (mx + 9, my),
                    &fmt_qps(iv.geomean),
                    12,
                    Pos::new(HPos::Left, VPos::Center),
                    &BLACK,
                )?;
            }
        }
        legend(
            root,
            (label_w, top + plot_h + 60),
            w - label_w - 20,
            1,
            &keys,
        )?;
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
}

/// The workloads' colours: dark blue and light orange, apart in grey-scale too.
fn workload_color(j: usize) -> RGBColor {
    [
        RGBColor(31, 73, 125),
        RGBColor(240, 160, 60),
        RGBColor(120, 120, 120),
    ][j % 3]
}

/// One curve: (offered, p99, passed) for each step, and the confirmed capacity.
struct Curve {
    points: Vec<(f64, f64, bool)>,
    confirmed: Option<(f64, f64)>,
}

/// The steps of the median repetition of one row (or of pgbench) and workload.
fn curve(steps: &serde_json::Value, key: &str, confirmed: Option<(f64, f64)>) -> Option<Curve> {
    let list = steps.get(key)?.as_array()?;
    // The search's own steps; the confirmation re-runs of a rate are its ring.
    let mut points: Vec<(f64, f64, bool)> = list
        .iter()
        .filter(|st| st.get("confirmation").and_then(|c| c.as_bool()) != Some(true))
        .filter_map(|st| {
            let offered = st.get("offered")?.as_f64()?;
            let p99 = st.get("p99_ms")?.as_f64()?;
            let passed = st.get("passed")?.as_bool()?;
            (offered > 0.0 && p99 > 0.0).then_some((offered, p99, passed))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!points.is_empty()).then_some(Curve { points, confirmed })
}

fn median_rep(w: &WorkloadResult) -> Option<(u32, Option<(f64, f64)>)> {
    let m = w.median_search()?;
    Some((m.repetition, m.offered.zip(m.p99_ms)))
}

/// Chart 2: per workload, p99 (log) against the offered rate (linear) for every row's
/// median repetition: each step a marker (hollow: failed), a line through them, the
/// confirmed capacity ringed, the SLO a red line.
fn curves(s: &Summary, steps: Option<&serde_json::Value>) -> Result<String> {
    let slo = s.environment.slo_p99_ms;
    let nw = s.workloads.len().max(1);
    let (panel_w, panel_h, top) = (620_i32, 480_i32, 50_i32);
    let mut keys = row_keys(s);
    keys.push(Key {
        name: "PostgreSQL alone (pgbench)".into(),
        color: REFERENCE,
        marker: None,
        dashed: true,
        swatch: false,
    });
    let legend_h = legend_rows(keys.len() + 1, 5);
    let w = panel_w * nw as i32;
    let h = top + panel_h + legend_h + 10;
    let empty = serde_json::Value::Null;
    let steps = steps.unwrap_or(&empty);
    // Every panel's curves: (row index or None for pgbench, curve).
    let panels: Vec<Vec<(Option<usize>, Curve)>> = s
        .workloads
        .iter()
        .map(|wname| {
            let mut v: Vec<(Option<usize>, Curve)> = s
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let wl = r.workloads.iter().find(|w| &w.name == wname)?;
                    let (rep, confirmed) = median_rep(wl)?;
                    let key = format!("rep{rep}-{}-{wname}", crate::matrix::slug(&r.name));
                    Some((Some(i), curve(steps, &key, confirmed)?))
                })
                .collect();
            let mut refs: Vec<_> = s
                .reference
                .iter()
                .filter(|r| &r.workload == wname)
                .collect();
            refs.sort_by(|a, b| a.tps.total_cmp(&b.tps));
            if let Some(r) = refs.get(refs.len().saturating_sub(1) / 2) {
                let key = format!("rep{}-pgbench-{wname}", r.repetition);
                if let Some(c) = curve(steps, &key, r.offered.zip(r.p99_ms)) {
                    v.push((None, c));
                }
            }
            v
        })
        .collect();
    let all: Vec<(f64, f64)> = panels
        .iter()
        .flatten()
        .flat_map(|(_, c)| c.points.iter().map(|p| (p.0, p.1)))
        .collect();
    // A linear rate axis: the ladder's upper rows sit within a factor of 3 of each
    // other, which a log axis would crowd together.
    let x_max = all.iter().map(|p| p.0).fold(1000.0_f64, f64::max) * 1.05;
    let x_min = 0.0;
    let y_max = all.iter().map(|p| p.1).fold(slo * 2.0, f64::max) * 1.5;
    let y_min = all.iter().map(|p| p.1).fold(y_max, f64::min).max(0.05) / 1.5;
    let n = s.rows.len();
    let draw = |root: &Area| -> Result<()> {
        let areas = two_panels(
            root,
            &format!("Capacity curves: p99 against the offered rate, the median repetition of each row (SLO {slo:.0} ms)"),
            top,
            legend_h + 10,
            nw,
        )?;
        for ((wname, curves), area) in s.workloads.iter().zip(&panels).zip(&areas) {
            let mut chart =
                panel(area, wname).build_cartesian_2d(x_min..x_max, (y_min..y_max).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("offered rate (requests/s)")
                .y_desc("p99 (ms, log)")
                .x_label_formatter(&|v| rate_label(*v))
                .y_label_formatter(&|v| ms_label(*v))
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(205, 205, 205))
                .draw()?;
            chart.draw_series(DashedLineSeries::new(
                [(x_min, slo), (x_max, slo)],
                8,
                5,
                SLO.stroke_width(2),
            ))?;
            let (sx, sy) = chart.backend_coord(&(x_min, slo));
            text(
                root,
                (sx + 6, sy - 10),
                &format!("SLO {slo:.0} ms"),
                13,
                Pos::new(HPos::Left, VPos::Center),
                &SLO,
            )?;
            for (i, c) in curves {
                let color = i.map_or(REFERENCE, |i| row_color(i, n));
                let line: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.1)).collect();
                match i {
                    Some(_) => {
                        chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
                    }
                    None => {
                        chart.draw_series(DashedLineSeries::new(
                            line,
                            6,
                            4,
                            color.stroke_width(2),
                        ))?;
                    }
                }
                for p in &c.points {
                    let at = chart.backend_coord(&(p.0, p.1));
                    let style = if p.2 {
                        color.filled()
                    } else {
                        color.stroke_width(2)
                    };
                    match i {
                        Some(i) => marker(root, at, *i, 4, style)?,
                        None => root.draw(&Circle::new(at, 3, style))?,
                    }
                }
                if let Some((x, y)) = c.confirmed {
                    // The confirmed rate's recorded p99 (of its re-runs), ringed.
                    let at = chart.backend_coord(&(x, y));
                    match i {
                        Some(i) => marker(root, at, *i, 4, color.filled())?,
                        None => root.draw(&Circle::new(at, 3, color.filled()))?,
                    }
                    root.draw(&Circle::new(at, 9, BLACK.stroke_width(2)))?;
                }
            }
            if curves.is_empty() {
                let (cx, cy) = chart.backend_coord(&(x_max / 2.0, (y_min * y_max).sqrt()));
                text(
                    root,
                    (cx, cy),
                    "no steps kept for this run",
                    16,
                    Pos::new(HPos::Center, VPos::Center),
                    &BLACK,
                )?;
            }
        }
        let mut all_keys = keys.iter().collect::<Vec<_>>();
        let ring = Key {
            name: "ringed: confirmed capacity; hollow: failed step".into(),
            color: BLACK,
            marker: None,
            dashed: false,
            swatch: false,
        };
        all_keys.push(&ring);
        let owned: Vec<Key> = all_keys
            .into_iter()
            .map(|k| Key {
                name: k.name.clone(),
                color: k.color,
                marker: k.marker,
                dashed: k.dashed,
                swatch: k.swatch,
            })
            .collect();
        legend(root, (40, top + panel_h + 16), w - 60, 5, &owned)?;
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
}

/// The median over a row's repetitions of each percentile at the common rate: p50,
/// p90, p99, p99.9 and, where recorded, p99.99; and whether it ran reduced.
fn spectrum(w: &WorkloadResult) -> (Vec<(f64, f64)>, bool) {
    let runs: Vec<&CommonLoad> = w
        .searches
        .iter()
        .filter_map(|x| x.common.as_ref())
        .collect();
    type Pick = fn(&CommonLoad) -> Option<f64>;
    let picks: [(f64, Pick); 5] = [
        (0.5, |c| c.p50_ms),
        (0.9, |c| c.p90_ms),
        (0.99, |c| c.p99_ms),
        (0.999, |c| c.p999_ms),
        (0.9999, |c| c.p9999_ms),
    ];
    let points = picks
        .iter()
        .filter_map(|(p, f)| {
            let v: Vec<f64> = runs.iter().filter_map(|c| f(c)).collect();
            let m = spread(&v)?;
            (m.median > 0.0).then_some(((1.0 / (1.0 - p)).log10(), m.median))
        })
        .collect();
    (points, runs.iter().any(|c| c.reduced))
}

/// A row's index and its points.
type RowLine = (usize, Vec<(f64, f64)>);

/// Chart 3: per workload, the latency percentiles at the common rate, on the usual
/// 1/(1−p) axis, one line per row.
fn latency(s: &Summary) -> Result<String> {
    let nw = s.workloads.len().max(1);
    let (panel_w, panel_h, top) = (620_i32, 460_i32, 50_i32);
    let common = s.matrix["load"]["common_qps"].as_f64();
    let keys: Vec<Key> = row_keys(s)
        .into_iter()
        .zip(&s.rows)
        .map(|(mut k, r)| {
            if r.workloads.iter().any(|w| spectrum(w).1) {
                k.name.push('*');
            }
            k
        })
        .collect();
    let legend_h = legend_rows(keys.len(), 5) + 20;
    let w = panel_w * nw as i32;
    let h = top + panel_h + legend_h + 10;
    let series: Vec<Vec<RowLine>> = s
        .workloads
        .iter()
        .map(|wname| {
            s.rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let w = r.workloads.iter().find(|w| &w.name == wname)?;
                    let (pts, _) = spectrum(w);
                    (!pts.is_empty()).then_some((i, pts))
                })
                .collect()
        })
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flatten()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .collect();
    let y_max = ys.iter().cloned().fold(1.0_f64, f64::max) * 1.5;
    let y_min = ys.iter().cloned().fold(y_max, f64::min).clamp(0.01, 1.0) / 1.5;
    let n = s.rows.len();
    let rate = common.map_or("the common rate".to_string(), |q| {
        format!("{q:.0} requests/s")
    });
    let draw = |root: &Area| -> Result<()> {
        let areas = two_panels(
            root,
            &format!("Latency at {rate}: percentiles of all requests (median of the repetitions)"),
            top,
            legend_h + 10,
            nw,
        )?;
        for ((wname, rows), area) in s.workloads.iter().zip(&series).zip(&areas) {
            let mut chart =
                panel(area, wname).build_cartesian_2d(0.15..4.15, (y_min..y_max).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc("latency (ms, log)")
                .y_label_formatter(&|v| ms_label(*v))
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(205, 205, 205))
                .draw()?;
            for (p, label) in [
                (0.5, "p50"),
                (0.9, "p90"),
                (0.99, "p99"),
                (0.999, "p99.9"),
                (0.9999, "p99.99"),
            ] {
                let x = (1.0_f64 / (1.0 - p)).log10();
                chart.draw_series(LineSeries::new(
                    [(x, y_min), (x, y_max)],
                    RGBColor(215, 215, 215),
                ))?;
                let (xx, yy) = chart.backend_coord(&(x, y_min));
                text(
                    root,
                    (xx, yy + 14),
                    label,
                    13,
                    Pos::new(HPos::Center, VPos::Center),
                    &BLACK,
                )?;
            }
            let (xx, yy) = chart.backend_coord(&(2.0, y_min));
            text(
                root,
                (xx, yy + 34),
                "percentile (axis: 1/(1−p), log)",
                14,
                Pos::new(HPos::Center, VPos::Center),
                &BLACK,
            )?;
            for (i, pts) in rows {
                let color = row_color(*i, n);
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
                for p in pts {
                    marker(root, chart.backend_coord(p), *i, 4, color.filled())?;
                }
            }
        }
        legend(root, (40, top + panel_h + 16), w - 60, 5, &keys)?;
        if keys.iter().any(|k| k.name.ends_with('*')) {
            let y = top + panel_h + 16 + legend_rows(keys.len(), 5) - 6;
            text(
                root,
                (40, y),
                &format!("*: could not sustain {rate}; measured at half its own capacity"),
                13,
                Pos::new(HPos::Left, VPos::Center),
                &BLACK,
            )?;
        }
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
}

/// Chart 4: per workload, each row's CPU per request at the common rate, stacked:
/// server, PostgreSQL, load generator (µs). A bar beyond the axis is cut and labelled.
fn cpu(s: &Summary) -> Result<String> {
    let n = s.rows.len().max(1);
    let nw = s.workloads.len().max(1);
    let (w, label_w, top, band) = (1000_i32, 150_i32, 60_i32, 24_i32);
    let parts = [
        ("server", RGBColor(28, 52, 92)),
        ("PostgreSQL", RGBColor(86, 140, 200)),
        ("load generator (oha)", RGBColor(200, 222, 242)),
    ];
    let keys: Vec<Key> = parts
        .iter()
        .map(|(name, c)| Key {
            name: (*name).to_string(),
            color: *c,
            marker: None,
            dashed: false,
            swatch: true,
        })
        .collect();
    // (row, workload) → µs of each party, medians over repetitions.
    let cost = |wl: &WorkloadResult| -> Option<([f64; 3], bool)> {
        let runs: Vec<&CommonLoad> = wl
            .searches
            .iter()
            .filter_map(|x| x.common.as_ref())
            .collect();
        let med = |f: fn(&CommonLoad) -> Option<f64>| {
            spread(&runs.iter().filter_map(|c| f(c)).collect::<Vec<_>>()).map(|m| m.median)
        };
        // PostgreSQL's or oha's CPU may be unseen on a target: their part is then 0.
        let v = [
            med(|c| c.server_us_per_request)?,
            med(|c| c.postgres_us_per_request).unwrap_or(0.0),
            med(|c| c.oha_us_per_request).unwrap_or(0.0),
        ];
        Some((v, runs.iter().any(|c| c.reduced)))
    };
    let all: Vec<(f64, bool)> = s
        .rows
        .iter()
        .flat_map(|r| &r.workloads)
        .filter_map(|wl| cost(wl).map(|(v, r)| (v.iter().sum::<f64>(), r)))
        .collect();
    // The axis fits the rows measured at the common rate; a reduced row's bar may be cut.
    let full = all
        .iter()
        .filter(|(_, r)| !r)
        .map(|x| x.0)
        .fold(0.0_f64, f64::max);
    let x_max = if full > 0.0 {
        full * 1.35
    } else {
        all.iter().map(|x| x.0).fold(10.0, f64::max) * 1.1
    };
    let panel_h = band * n as i32 + 40;
    let legend_h = legend_rows(keys.len(), 3) + 20;
    let h = top + (panel_h + 30) * nw as i32 + legend_h;
    let common = s.matrix["load"]["common_qps"].as_f64();
    let rate = common.map_or("the common rate".to_string(), |q| {
        format!("{q:.0} requests/s")
    });
    let draw = |root: &Area| -> Result<()> {
        let unseen = if s
            .rows
            .iter()
            .flat_map(|r| &r.workloads)
            .flat_map(|w| &w.searches)
            .filter_map(|x| x.common.as_ref())
            .all(|c| c.postgres_us_per_request.is_none())
        {
            "; PostgreSQL's CPU not measured on this target"
        } else {
            ""
        };
        title(
            root,
            &format!("CPU time per request at {rate} (µs; median of the repetitions{unseen})"),
        )?;
        for (j, wname) in s.workloads.iter().enumerate() {
            let y0 = top + j as i32 * (panel_h + 30);
            let area = root.margin(y0 as u32, (h - y0 - panel_h) as u32, label_w as u32, 40);
            text(
                root,
                (label_w, y0 - 8),
                wname,
                16,
                Pos::new(HPos::Left, VPos::Center),
                &BLACK,
            )?;
            let mut chart = ChartBuilder::on(&area)
                .x_label_area_size(30)
                .y_label_area_size(0)
                .build_cartesian_2d(0.0..x_max, 0.0..n as f64)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_labels(8)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .label_style((FONT, 13))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(205, 205, 205))
                .draw()?;
            for (i, row) in s.rows.iter().enumerate() {
                let y_top = n as f64 - i as f64;
                let (_, yy) = chart.backend_coord(&(0.0, y_top - 0.5));
                let found = row
                    .workloads
                    .iter()
                    .find(|w| &w.name == wname)
                    .and_then(cost);
                // Every row is named, measured at the common rate or not.
                let name = match found {
                    Some((_, true)) => format!("{}*", row.name),
                    _ => row.name.clone(),
                };
                text(
                    root,
                    (label_w - 8, yy),
                    &name,
                    14,
                    Pos::new(HPos::Right, VPos::Center),
                    &BLACK,
                )?;
                let Some((v, _)) = found else {
                    let (nx, ny) = chart.backend_coord(&(0.0, y_top - 0.5));
                    text(
                        root,
                        (nx + 6, ny),
                        "not measured",
                        12,
                        Pos::new(HPos::Left, VPos::Center),
                        &BLACK,
                    )?;
                    continue;
                };
                let mut at = 0.0;
                for (k, part) in v.iter().enumerate() {
                    let end = (at + part).min(x_max);
                    if end > at {
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(at, y_top - 0.85), (end, y_top - 0.15)],
                            parts[k].1.filled(),
                        )))?;
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(at, y_top - 0.85), (end, y_top - 0.15)],
                            WHITE.stroke_width(1),
                        )))?;
                    }
                    at += part;
                }
                let total: f64 = v.iter().sum();
                let shown = total.min(x_max);
                let (tx, ty) = chart.backend_coord(&(shown, y_top - 0.5));
                let label = if total > x_max {
                    format!("→ {total:.0} µs (cut)")
                } else {
                    format!("{total:.0}")
                };
                // White on the dark parts, black on the load generator's pale one.
                let last_dark = v[0] + v[1] >= x_max;
                let (lx, pos, color) = if total > x_max {
                    (
                        tx - 6,
                        Pos::new(HPos::Right, VPos::Center),
                        if last_dark { WHITE } else { BLACK },
                    )
                } else {
                    (tx + 6, Pos::new(HPos::Left, VPos::Center), BLACK)
                };
                text(root, (lx, ty), &label, 12, pos, &color)?;
            }
        }
        let ly = top + (panel_h + 30) * nw as i32;
        legend(root, (label_w, ly), w - label_w - 20, 3, &keys)?;
        if all.iter().any(|x| x.1) {
            text(root, (label_w, ly + legend_rows(keys.len(), 3) - 4), &format!("*: could not sustain {rate}; measured at half its own capacity, so its fixed costs weigh more"), 13, Pos::new(HPos::Left, VPos::Center), &BLACK)?;
        }
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
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
