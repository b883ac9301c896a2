//! The latency percentiles at the common rate.
use super::*;

use anyhow::Result;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::stats::spread;
use crate::results::{CommonLoad, Summary, WorkloadResult};

/// The median over a row's repetitions of each percentile at the common rate: p50,
/// p90, p99, p99.9 and, where recorded, p99.99; and whether it ran reduced.
pub(super) fn spectrum(w: &WorkloadResult) -> (Vec<(f64, f64)>, bool) {
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
pub(super) type RowLine = (usize, Vec<(f64, f64)>);

/// Chart 3: per workload, the latency percentiles at the common rate, on the usual
/// 1/(1−p) axis, one line per row.
pub(super) fn latency(s: &Summary) -> Result<String> {
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
