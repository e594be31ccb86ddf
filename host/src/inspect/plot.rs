//! PNG charts (plotters, with an embedded DejaVu Sans font so that no system font is needed):
//! a [`Figure`] is panels stacked over one shared x axis (steps), with an optional epoch axis
//! along the top. The run's own plots (`loss.png`, `eval.png`) are made from it in
//! [`crate::inspect::plots`].

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

/// Registers the embedded font as "sans-serif" (once per process).
pub fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// One named curve of (x, y) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (baselines and other reference lines).
    pub dashed: bool,
}

impl Series {
    /// A solid curve.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, dashed: false }
    }

    /// A dashed horizontal line at `y` from `x0` to `x1`.
    pub fn level(name: impl Into<String>, y: f64, x0: f64, x1: f64) -> Series {
        Series { name: name.into(), points: vec![(x0, y), (x1, y)], dashed: true }
    }
}

/// One chart of a figure.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Curves.
    pub series: Vec<Series>,
}

/// Panels stacked over one x axis.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    /// Label of the shared x axis (of the bottom panel).
    pub x_label: String,
    /// Training steps per epoch: when given, every panel gets an epoch axis along its top.
    pub steps_per_epoch: Option<f64>,
    /// The panels, top to bottom (empty ones are left out).
    pub panels: Vec<Panel>,
}

/// The colours of curves and classes, in order (matplotlib's tab10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

/// Width of a figure: the chart and, right of it, the legend.
pub const WIDTH: u32 = 1100;
/// Height of one panel.
pub const PANEL_HEIGHT: u32 = 360;
const LEGEND_WIDTH: u32 = 230;

/// Draws `fig` into a PNG at `path`, [`WIDTH`] pixels wide and [`PANEL_HEIGHT`] high per
/// panel, each panel's legend right of its chart. Writes nothing (and returns `Ok(false)`) when
/// no panel has a finite point.
pub fn figure(path: &Path, fig: &Figure) -> Result<bool> {
    register_font();
    let panels: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| p.series.iter().any(|s| s.points.iter().any(finite)))
        .collect();
    if panels.is_empty() {
        return Ok(false);
    }
    let all = || {
        panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter())
            .filter(|p| finite(p))
    };
    let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    // steps and epochs are whole numbers: no "20.0" on the axis
    let integral = all().all(|p| p.0.fract() == 0.0);
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root =
        BitMapBackend::new(path, (WIDTH, PANEL_HEIGHT * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
        let (area, legend) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
        let pts: Vec<&(f64, f64)> =
            panel.series.iter().flat_map(|s| s.points.iter()).filter(|p| finite(p)).collect();
        let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.08).max(1e-3 * y1.abs().max(1.0));
        let spe = fig.steps_per_epoch.filter(|s| *s > 0.0).unwrap_or(1.0);
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64);
        if fig.steps_per_epoch.is_some() {
            builder.top_x_label_area_size(36);
        }
        // the secondary x axis is the same range in epochs (ticks chosen in epoch units)
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(&e))?
            .set_secondary_coord(x0 / spe..x1 / spe, (y0 - pad)..(y1 + pad));
        let fmt = move |x: &f64| if integral { format!("{x:.0}") } else { format!("{x}") };
        chart
            .configure_mesh()
            .x_desc(&fig.x_label)
            .y_desc(&panel.y_label)
            .x_label_formatter(&fmt)
            .draw()
            .map_err(|e| err(&e))?;
        if fig.steps_per_epoch.is_some() {
            let epoch_fmt =
                |e: &f64| if e.fract() == 0.0 { format!("{e:.0}") } else { format!("{e:.1}") };
            chart
                .configure_secondary_axes()
                .x_desc("epoch")
                .x_labels(10)
                .x_label_formatter(&epoch_fmt)
                .draw()
                .map_err(|e| err(&e))?;
        }
        for (i, s) in panel.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
            let style = c.stroke_width(2);
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(points, 8, 6, style))
                    .map_err(|e| err(&e))?;
            } else if points.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(points[0], 4, c.filled())))
                    .map_err(|e| err(&e))?;
            } else {
                chart.draw_series(LineSeries::new(points, style)).map_err(|e| err(&e))?;
            }
        }
        // the legend, right of the chart: a sample of each line and its name
        for (i, s) in panel.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let y = 56 + 22 * i as i32;
            let sample: Vec<(i32, i32)> =
                if s.dashed { vec![(4, y), (12, y)] } else { vec![(4, y), (28, y)] };
            legend.draw(&PathElement::new(sample, c.stroke_width(3))).map_err(|e| err(&e))?;
            if s.dashed {
                legend
                    .draw(&PathElement::new(vec![(18, y), (28, y)], c.stroke_width(3)))
                    .map_err(|e| err(&e))?;
            }
            legend
                .draw(&Text::new(
                    shorten(&s.name, 27),
                    (36, y - 8),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

/// `s` cut to `n` characters, the last one an ellipsis when it is cut.
pub fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Moving average over `w` points (for a readable loss curve).
pub fn smooth(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let n = (i - lo + 1) as f64;
            (points[i].0, points[lo..=i].iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect()
}

/// Width and height of the PNG at `path`, read from its header; an error when it is not a PNG.
pub fn png_size(path: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
    anyhow::ensure!(
        bytes.len() > 24 && &bytes[..8] == b"\x89PNG\r\n\x1a\n" && &bytes[12..16] == b"IHDR",
        "{} is not a PNG file",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Ok((be(16), be(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_has_one_band_of_height_per_non_empty_panel() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fig.png");
        let curve =
            Series::line("loss", (0..50).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect());
        let fig = Figure {
            x_label: "step".into(),
            steps_per_epoch: Some(10.0),
            panels: vec![
                Panel {
                    title: "a".into(),
                    y_label: "loss".into(),
                    series: vec![curve.clone(), Series::level("base", 0.5, 0.0, 49.0)],
                },
                Panel {
                    title: "empty".into(),
                    y_label: "x".into(),
                    series: vec![Series::line("none", vec![(1.0, f64::NAN)])],
                },
                Panel { title: "b".into(), y_label: "lr".into(), series: vec![curve] },
            ],
        };
        assert!(figure(&p, &fig).unwrap());
        assert_eq!(png_size(&p).unwrap(), (WIDTH, 2 * PANEL_HEIGHT));
        assert!(!figure(&dir.path().join("none.png"), &Figure::default()).unwrap());
        assert!(!dir.path().join("none.png").exists());
        assert_eq!(smooth(&[(0.0, 1.0), (1.0, 3.0)], 2), vec![(0.0, 1.0), (1.0, 2.0)]);
        std::fs::write(dir.path().join("x.png"), b"GIF89a not a png at all").unwrap();
        assert!(png_size(&dir.path().join("x.png")).unwrap_err().to_string().contains("not a PNG"));
    }
}
