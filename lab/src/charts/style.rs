//! What every chart shares: colours, markers, panels, legends, labels.
use super::*;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::fmt_qps;
use crate::results::Summary;

pub(super) const FONT: &str = "sans-serif";
pub(super) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Row `i` of `n`'s colour: along viridis from dark violet to green, so that the
/// ladder's order is also an order of lightness (it survives grey-scale printing).
pub(super) fn row_color(i: usize, n: usize) -> RGBColor {
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

pub(super) const REFERENCE: RGBColor = RGBColor(110, 110, 110);
pub(super) const SLO: RGBColor = RGBColor(200, 30, 30);

/// A marker of shape `kind` at a pixel: circle, triangle, square, diamond, cross.
pub(super) fn marker(
    area: &Area,
    at: (i32, i32),
    kind: usize,
    size: i32,
    style: ShapeStyle,
) -> Result<()> {
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
pub(super) fn two_panels<'a>(
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
pub(super) fn panel<'a, 'b>(
    area: &'a Area<'b>,
    workload: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.caption(workload, (FONT, 18))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(56);
    b
}

pub(super) fn text(
    area: &Area,
    at: (i32, i32),
    s: &str,
    size: u32,
    pos: Pos,
    color: &RGBColor,
) -> Result<()> {
    let style = TextStyle::from((FONT, size).into_font())
        .color(color)
        .pos(pos);
    area.draw(&Text::new(s.to_string(), at, style))?;
    Ok(())
}

/// One entry of a legend: a name, its colour, marker and whether its line is dashed.
pub(super) struct Key {
    pub(super) name: String,
    pub(super) color: RGBColor,
    pub(super) marker: Option<usize>,
    pub(super) dashed: bool,
    /// A filled box instead of a line (for bars).
    pub(super) swatch: bool,
}

/// Draws a legend in `columns` columns on a strip of the image (pixel coordinates).
pub(super) fn legend(
    area: &Area,
    origin: (i32, i32),
    width: i32,
    columns: usize,
    keys: &[Key],
) -> Result<()> {
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

pub(super) fn legend_rows(keys: usize, columns: usize) -> i32 {
    keys.div_ceil(columns.max(1)) as i32 * 22 + 16
}

/// A row's name as the legend shows it: `*` when it ran below the common rate.
pub(super) fn row_keys(s: &Summary) -> Vec<Key> {
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

pub(super) fn svg_string(
    draw: impl FnOnce(&Area) -> Result<()>,
    size: (u32, u32),
) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

pub(super) fn title(area: &Area, s: &str) -> Result<()> {
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
pub(super) fn rate_label(v: f64) -> String {
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

pub(super) fn ms_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The workloads' colours: dark blue and light orange, apart in grey-scale too.
pub(super) fn workload_color(j: usize) -> RGBColor {
    [
        RGBColor(31, 73, 125),
        RGBColor(240, 160, 60),
        RGBColor(120, 120, 120),
    ][j % 3]
}
