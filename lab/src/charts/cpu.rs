//! The CPU per request at the common rate, stacked by party.
use super::*;

use anyhow::Result;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::stats::spread;
use crate::results::{CommonLoad, Summary, WorkloadResult};

/// Chart 4: per workload, each row's CPU per request at the common rate, stacked:
/// server, PostgreSQL, load generator (µs). A bar beyond the axis is cut and labelled.
pub(super) fn cpu(s: &Summary) -> Result<String> {
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
