//! A curve (`[scale]`): four panels against the axis, one line per series (and
//! workload): the saturation throughput, the p99 at the fixed rate, the CPU per
//! request at the fixed rate by party, and the server's resident memory; every point
//! the geometric mean over blocks with its 95% interval.
use super::*;

use anyhow::Result;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::blocks::{CellResult, Interval};
use crate::results::Summary;
use crate::scale::{Axis, Point};

/// One line of a panel: its key and its points (x, centre, low, high).
struct Line {
    key: usize,
    dashed: bool,
    points: Vec<(f64, f64, f64, f64)>,
}

type Pick = fn(&CellResult) -> Option<Interval>;

/// The chart of a curve: 2 × 2 panels and a legend of its series.
pub(super) fn scale(s: &Summary, axis: Axis, points: &[Point]) -> Result<String> {
    let workloads: Vec<&str> = {
        let mut v: Vec<&str> = points.iter().map(|p| p.workload).collect();
        v.dedup();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut series: Vec<(String, &str)> = Vec::new();
    for p in points {
        if !series
            .iter()
            .any(|(n, w)| *n == p.series && *w == p.workload)
        {
            series.push((p.series.clone(), p.workload));
        }
    }
    let name = |(n, w): &(String, &str)| {
        if workloads.len() > 1 {
            format!("{n} · {w}")
        } else {
            n.clone()
        }
    };
    let lines = |pick: Pick, dashed: bool| -> Vec<Line> {
        series
            .iter()
            .enumerate()
            .map(|(k, (n, w))| {
                let mut pts: Vec<(f64, f64, f64, f64)> = points
                    .iter()
                    .filter(|p| &p.series == n && p.workload == *w)
                    .filter_map(|p| {
                        let i = pick(p.cell)?;
                        Some((p.x, i.geomean, i.ci_low, i.ci_high))
                    })
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    key: k,
                    dashed,
                    points: pts,
                }
            })
            .collect()
    };
    let throughput = lines(|c| c.throughput.as_ref().map(|t| t.interval), false);
    let p99 = lines(|c| c.fixed.as_ref()?.p99_ms, false);
    let mut cpu = lines(|c| c.fixed.as_ref()?.server_us_per_request, false);
    cpu.extend(lines(|c| c.fixed.as_ref()?.postgres_us_per_request, true));
    let mut memory = lines(|c| c.fixed.as_ref()?.server_rss_mib, false);
    memory.extend(lines(|c| c.server_rss_mib, true));
    let fixed = points
        .iter()
        .find_map(|p| p.cell.fixed.as_ref().map(|f| f.offered_qps));
    let at = fixed.map_or("the fixed rate".into(), |q| format!("{q:.0}/s"));
    let n = series.len();
    let mut keys: Vec<Key> = series
        .iter()
        .enumerate()
        .map(|(i, sr)| Key {
            name: name(sr),
            color: row_color(i, n.max(2)),
            marker: Some(i),
            dashed: false,
            swatch: false,
        })
        .collect();
    keys.push(Key {
        name: "dashed: PostgreSQL (CPU); closed-loop windows (memory)".into(),
        color: REFERENCE,
        marker: None,
        dashed: true,
        swatch: false,
    });
    let (pw, ph, top) = (560_i32, 380_i32, 50_i32);
    let legend_h = legend_rows(keys.len(), 2);
    let (w, h) = (pw * 2, top + ph * 2 + legend_h + 10);
    let xs: Vec<f64> = points.iter().map(|p| p.x).collect();
    let (x_lo, x_hi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    let matrix = s.environment.matrix_file.clone();
    let draw = |root: &Area| -> Result<()> {
        title(
            root,
            &format!(
                "{matrix}: one build along {} (geometric mean over blocks, 95% interval)",
                axis.label()
            ),
        )?;
        let body = root.margin(top as u32, (legend_h + 10) as u32, 0, 0);
        let areas = body.split_evenly((2, 2));
        let panels: [(&str, &str, bool, &[Line]); 4] = [
            (
                "saturation throughput (closed loop)",
                "requests/s",
                false,
                &throughput,
            ),
            (&format!("p99 at {at} (open loop)"), "ms (log)", true, &p99),
            (
                &format!("CPU per request at {at}"),
                "µs per request",
                false,
                &cpu,
            ),
            (
                "server resident memory (peak per window)",
                "MiB",
                false,
                &memory,
            ),
        ];
        for (area, (caption, unit, log_y, ls)) in areas.iter().zip(panels) {
            curve_panel(root, area, caption, unit, log_y, axis, (x_lo, x_hi), ls, n)?;
        }
        legend(root, (40, top + ph * 2 + 16), w - 60, 2, &keys)?;
        Ok(())
    };
    svg_string(draw, (w as u32, h as u32))
}

/// One panel: every line with its markers and interval bars.
#[allow(clippy::too_many_arguments)]
fn curve_panel(
    root: &Area,
    area: &Area,
    caption: &str,
    unit: &str,
    log_y: bool,
    axis: Axis,
    (x_lo, x_hi): (f64, f64),
    lines: &[Line],
    n: usize,
) -> Result<()> {
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().flat_map(|p| [p.2, p.3]))
        .filter(|y| y.is_finite() && *y > 0.0)
        .collect();
    if ys.is_empty() {
        text(
            area,
            (40, 60),
            &format!("{caption}: not measured"),
            14,
            Pos::new(HPos::Left, VPos::Center),
            &BLACK,
        )?;
        return Ok(());
    }
    let y_hi = ys.iter().copied().fold(0.0, f64::max) * 1.15;
    // A log axis spans a decade at least, so that it has labels.
    let y_lo = if log_y {
        (ys.iter().copied().fold(f64::INFINITY, f64::min) / 1.3).min(y_hi / 10.0)
    } else {
        0.0
    };
    let y_label = |v: &f64| {
        if *v >= 100.0 {
            format!("{v:.0}")
        } else if *v >= 1.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    let x_label = |v: &f64| {
        if *v >= 1e6 {
            format!("{:.0}M", v / 1e6)
        } else if *v >= 1e3 {
            format!("{:.0}k", v / 1e3)
        } else {
            format!("{v}")
        }
    };
    let mut b = ChartBuilder::on(area);
    b.caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60);
    // One drawing routine over both coordinate kinds.
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(axis.label())
                .y_desc(unit)
                .x_label_formatter(&x_label)
                .x_labels(8)
                .y_labels(8)
                .y_label_formatter(&y_label)
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(205, 205, 205))
                .draw()?;
            for l in lines {
                let color = row_color(l.key, n.max(2));
                let style = color.stroke_width(2);
                let pts: Vec<(f64, f64)> = l.points.iter().map(|p| (p.0, p.1)).collect();
                if l.dashed {
                    for pair in pts.windows(2) {
                        let (a, b) = (chart.backend_coord(&pair[0]), chart.backend_coord(&pair[1]));
                        for k in 0..8 {
                            let f = |t: f64| {
                                (
                                    a.0 + ((b.0 - a.0) as f64 * t) as i32,
                                    a.1 + ((b.1 - a.1) as f64 * t) as i32,
                                )
                            };
                            let t0 = f64::from(k) / 8.0;
                            root.draw(&PathElement::new(vec![f(t0), f(t0 + 1.0 / 16.0)], style))?;
                        }
                    }
                } else {
                    chart.draw_series(LineSeries::new(pts.clone(), style))?;
                }
                for p in &l.points {
                    chart.draw_series(LineSeries::new(
                        [(p.0, p.2), (p.0, p.3)],
                        color.stroke_width(1),
                    ))?;
                    let fill = if l.dashed {
                        ShapeStyle {
                            filled: false,
                            ..color.stroke_width(1)
                        }
                    } else {
                        color.filled()
                    };
                    marker(root, chart.backend_coord(&(p.0, p.1)), l.key, 4, fill)?;
                }
            }
        }};
    }
    let (xa, xb) = if axis.logarithmic() {
        (x_lo / 1.5, x_hi * 1.5)
    } else {
        (0.0, x_hi * 1.1)
    };
    match (axis.logarithmic(), log_y) {
        (true, true) => {
            draw!(b.build_cartesian_2d((xa..xb).log_scale(), (y_lo..y_hi).log_scale())?)
        }
        (true, false) => draw!(b.build_cartesian_2d((xa..xb).log_scale(), y_lo..y_hi)?),
        (false, true) => draw!(b.build_cartesian_2d(xa..xb, (y_lo..y_hi).log_scale())?),
        (false, false) => draw!(b.build_cartesian_2d(xa..xb, y_lo..y_hi)?),
    }
    Ok(())
}
