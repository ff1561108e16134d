//! PNG charts for the benchmarks (plotters, bitmap backend): a figure is a
//! row of panels, each a bar chart or an x/y line chart. Knows nothing
//! about what is measured; callers hand it labelled numbers.
//!
//! Text needs a TrueType font; plotters' `ab_glyph` backend is given
//! DejaVu Sans (Debian's `fonts-dejavu-core`, installed by
//! `scripts/install-deps.sh`) so no fontconfig is needed.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Where the font is looked for unless `ZVIMG_CHART_FONT` names another file.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Pixel size of one panel.
const PANEL: (u32, u32) = (720, 480);

/// A set of bars sharing one axis.
#[derive(Clone, Debug)]
pub struct Bars {
    /// Heading of the panel.
    pub title: String,
    /// Label of the value axis (with its unit).
    pub y_label: String,
    /// (label under the bar, value) in drawing order.
    pub bars: Vec<(String, f64)>,
}

/// One named line of a [`Lines`] panel.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// (x, y) points, drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// Lines on shared x/y axes.
#[derive(Clone, Debug)]
pub struct Lines {
    /// Heading of the panel.
    pub title: String,
    /// Label of the x axis (with its unit).
    pub x_label: String,
    /// Label of the y axis (with its unit).
    pub y_label: String,
    /// The lines, in legend order.
    pub series: Vec<Series>,
    /// Logarithmic x axis (for latencies spanning decades).
    pub log_x: bool,
}

/// One panel of a figure.
#[derive(Clone, Debug)]
pub enum Panel {
    /// A bar chart.
    Bars(Bars),
    /// A line chart.
    Lines(Lines),
}

/// Registers the font once per process; later calls return the first outcome.
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var("ZVIMG_CHART_FONT").unwrap_or_else(|_| DEFAULT_FONT.to_string());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "reading chart font {path}: {e} (install fonts-dejavu-core or set ZVIMG_CHART_FONT)"
            )
        })?;
        // plotters keeps fonts for the life of the process; leaking the one
        // copy is what it asks for.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws `panels` side by side into a PNG at `path`.
pub fn render(path: &Path, panels: &[Panel]) -> anyhow::Result<()> {
    if panels.is_empty() {
        anyhow::bail!("chart {}: nothing to draw", path.display());
    }
    ensure_font()?;
    let width = PANEL.0 * panels.len() as u32;
    let root = BitMapBackend::new(path, (width, PANEL.1)).into_drawing_area();
    let draw_err = |e: &dyn std::fmt::Display| anyhow!("drawing chart {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        match panel {
            Panel::Bars(b) => draw_bars(area, b).map_err(|e| draw_err(&e))?,
            Panel::Lines(l) => draw_lines(area, l).map_err(|e| draw_err(&e))?,
        }
    }
    root.present()
        .map_err(|e| draw_err(&e))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn color(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    PALETTE[i % PALETTE.len()]
}

fn draw_bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    b: &Bars,
) -> DrawResult {
    let n = b.bars.len().max(1);
    let top = b.bars.iter().map(|(_, v)| *v).fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&b.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // A segmented 0..k axis has k + 1 slots; one per bar is 0..n - 1.
        .build_cartesian_2d((0..n.saturating_sub(1).max(1)).into_segmented(), 0.0..top)?;
    let labels: Vec<String> = b.bars.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(&b.y_label)
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, (_, v)) in b.bars.iter().enumerate() {
        let style = color(i).filled();
        chart.draw_series(std::iter::once(
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                style,
            )
            .into_dyn(),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.1}"),
            (SegmentValue::CenterOf(i), *v + top * 0.02),
            ("sans-serif", 14),
        )))?;
    }
    Ok(())
}

fn draw_lines(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    l: &Lines,
) -> DrawResult {
    let points = || l.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) =
        points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = points().fold(0.0f64, |a, p| a.max(p.1));
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&l.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    if l.log_x {
        let x0 = x0.max(1e-3);
        let x1 = x1.max(x0 * 10.0);
        let mut chart = builder.build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(&l.x_label)
            .y_desc(&l.y_label)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, s) in l.series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|&(x, y)| (x.max(x0), y)),
                    c.stroke_width(2),
                ))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    } else {
        let mut chart = builder.build_cartesian_2d(x0.min(0.0)..x1 * 1.05, 0.0..y1)?;
        chart
            .configure_mesh()
            .x_desc(&l.x_label)
            .y_desc(&l.y_label)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, s) in l.series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_png_with_every_panel_kind() {
        if !Path::new(DEFAULT_FONT).exists() && std::env::var_os("ZVIMG_CHART_FONT").is_none() {
            eprintln!("SKIPPED: no font at {DEFAULT_FONT}");
            return;
        }
        let path =
            std::env::temp_dir().join(format!("zvimg-chart-test-{}.png", std::process::id()));
        let panels = [
            Panel::Bars(Bars {
                title: "boot".into(),
                y_label: "s".into(),
                bars: vec![("a".into(), 1.0), ("b".into(), 3.5)],
            }),
            Panel::Lines(Lines {
                title: "growth".into(),
                x_label: "GiB".into(),
                y_label: "s".into(),
                series: vec![Series {
                    name: "x".into(),
                    points: vec![(1.0, 2.0), (2.0, 4.0)],
                }],
                log_x: false,
            }),
            Panel::Lines(Lines {
                title: "cdf".into(),
                x_label: "ms".into(),
                y_label: "%".into(),
                series: vec![Series {
                    name: "y".into(),
                    points: vec![(0.5, 10.0), (20.0, 100.0)],
                }],
                log_x: true,
            }),
        ];
        render(&path, &panels).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    }

    #[test]
    fn empty_figure_is_an_error() {
        let err = render(Path::new("/nonexistent/x.png"), &[]).unwrap_err();
        assert!(err.to_string().contains("nothing to draw"), "{err}");
    }
}
