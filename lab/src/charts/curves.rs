//! p99 against the offered rate, from the search's steps.
use super::*;

use anyhow::Result;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::results::{Summary, WorkloadResult};

/// One curve: (offered, p99, passed) for each step, and the confirmed capacity.
pub(super) struct Curve {
    pub(super) points: Vec<(f64, f64, bool)>,
    pub(super) confirmed: Option<(f64, f64)>,
}

/// The steps of the median repetition of one row (or of pgbench) and workload.
pub(super) fn curve(
    steps: &serde_json::Value,
    key: &str,
    confirmed: Option<(f64, f64)>,
) -> Option<Curve> {
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

pub(super) fn median_rep(w: &WorkloadResult) -> Option<(u32, Option<(f64, f64)>)> {
    let m = w.median_search()?;
    Some((m.repetition, m.offered.zip(m.p99_ms)))
}

/// Chart 2: per workload, p99 (log) against the offered rate (linear) for every row's
/// median repetition: each step a marker (hollow: failed), a line through them, the
/// confirmed capacity ringed, the SLO a red line.
pub(super) fn curves(s: &Summary, steps: Option<&serde_json::Value>) -> Result<String> {
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
