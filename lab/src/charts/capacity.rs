//! Capacity per row (the SLO search) and throughput per row (the blocks).
use super::*;

use anyhow::Result;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::stats::spread;
use crate::report::fmt_qps;
use crate::results::Summary;

/// Chart 1: horizontal bars of each row's median capacity per workload (log scale),
/// each repetition a dot on its bar, the pgbench capacity a dashed line per workload.
pub(super) fn capacity(s: &Summary) -> Result<String> {
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
pub(super) fn throughput(s: &Summary, b: &crate::blocks::Blocks) -> Result<String> {
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
