//! Plots as PNG and SVG (pure Rust, plotters with an embedded DejaVu Sans font): reliability
//! diagrams, per-class accuracy against class index with the training counts, and per-class
//! dispersion against class index.
//!
//! Each plot function writes `<stem>.png` and `<stem>.svg` (the suffix appended to the stem's
//! name, the folder created when missing), atomically, and returns the two paths.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::classification::Bin;
use crate::error::{MetricsError, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Size of every plot in pixels.
pub const SIZE: (u32, u32) = (800, 500);

/// The caption's font size for `title`: 22 pixels, smaller for a title too long for the plot's
/// width at that size (DejaVu Sans is about 0.56 em wide a character on average), 10 at least.
fn caption_size(title: &str) -> u32 {
    let fits = (SIZE.0 - 24) as f64 / (0.56 * title.chars().count().max(1) as f64);
    (fits.floor() as u32).clamp(10, 22)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws `draw` into `<stem>.png` and `<stem>.svg`; returns both paths. Both files are drawn in
/// a temporary sibling directory (named like every temporary of `lt_core::atomic`, so a killed
/// writer's leftovers are cleaned later) and renamed into place, so a failure (a full disk) never
/// leaves a truncated plot under the final name.
fn both(
    stem: &Path,
    draw: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> DrawResult + Copy,
    draw_svg: impl Fn(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> Result<Vec<PathBuf>> {
    register_font();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| MetricsError::Io { path, error }
    };
    // Appended, not `with_extension`: a stem may hold a dot (`reliability-srepr-lambda0.3`).
    let with = |ext: &str| {
        let mut name = stem.as_os_str().to_os_string();
        name.push(ext);
        PathBuf::from(name)
    };
    let (png, svg) = (with(".png"), with(".svg"));
    let tmp = lt_core::atomic::temp_sibling(&png);
    // A folder that cannot be made is the plot's error, not its temporary's.
    std::fs::create_dir_all(&tmp).map_err(io(&png))?;
    let name = |p: &Path| tmp.join(p.file_name().unwrap_or_default());
    let (png_tmp, svg_tmp) = (name(&png), name(&svg));
    let err = |p: &Path, e: Box<dyn std::error::Error>| MetricsError::Plot {
        path: p.to_path_buf(),
        detail: e.to_string(),
    };
    let drawn = (|| {
        {
            let root = BitMapBackend::new(&png_tmp, SIZE).into_drawing_area();
            draw(&root).map_err(|e| err(&png, e))?;
            root.present().map_err(|e| err(&png, Box::new(e)))?;
        }
        {
            let root = SVGBackend::new(&svg_tmp, SIZE).into_drawing_area();
            draw_svg(&root).map_err(|e| err(&svg, e))?;
            root.present().map_err(|e| err(&svg, Box::new(e)))?;
        }
        for (from, to) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
            std::fs::rename(from, to).map_err(io(to))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    drawn.map(|_| vec![png, svg])
}

fn reliability_on<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, bins: &[Bin], title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", caption_size(title)))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart.configure_mesh().x_desc("confidence").y_desc("accuracy").label_style(("sans-serif", 14)).draw()?;
    chart.draw_series(
        bins.iter()
            .filter(|b| b.count > 0)
            .map(|b| Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], PALETTE[0].mix(0.7).filled())),
    )?;
    chart.draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
        Rectangle::new(
            [(b.lo, b.accuracy.min(b.confidence)), (b.hi, b.accuracy.max(b.confidence))],
            PALETTE[1].mix(0.35).filled(),
        )
    }))?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(1)))?;
    Ok(())
}

/// A reliability diagram: accuracy per confidence bin (bars), the gap to the mean confidence
/// (shaded) and the diagonal.
pub fn reliability_diagram(bins: &[Bin], title: &str, stem: &Path) -> Result<Vec<PathBuf>> {
    let (b2, t2) = (bins.to_vec(), title.to_string());
    both(stem, |r| reliability_on(r, bins, title), move |r| reliability_on(r, &b2, &t2))
}

/// One line of a per-class plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Value per class (`None`: no data).
    pub values: Vec<Option<f64>>,
}

fn per_class_on<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[Series],
    counts: &[usize],
    title: &str,
    y_desc: &str,
    y_max: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let c = counts.len().max(1);
    let max_count = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", caption_size(title)))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(c as f64 - 0.5), 0f64..y_max)?
        .set_secondary_coord(-0.5f64..(c as f64 - 0.5), (1f64..max_count * 1.5).log_scale());
    chart
        .configure_mesh()
        .x_desc("class index (sorted by training count)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        // Classes are whole numbers, counts too.
        .x_labels(c.min(20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("training images")
        .label_style(("sans-serif", 14))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .draw()?;
    chart.draw_secondary_series(counts.iter().enumerate().map(|(i, &n)| {
        Rectangle::new(
            [(i as f64 - 0.4, 1.0), (i as f64 + 0.4, (n as f64).max(1.0))],
            RGBColor(200, 200, 200).mix(0.6).filled(),
        )
    }))?;
    for (k, s) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> =
            s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i as f64, v))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))?;
    }
    // Lower left: the head classes, where a long-tailed model's accuracy is high, leave it free
    // (the tail, on the right, is what the plot is read for).
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Per-class values (e.g. accuracy) against class index, with the training counts as bars on a
/// log-scaled secondary axis: the long tail made visible.
pub fn per_class(
    series: &[Series],
    counts: &[usize],
    title: &str,
    y_desc: &str,
    y_max: f64,
    stem: &Path,
) -> Result<Vec<PathBuf>> {
    let (s2, c2, t2, d2) = (series.to_vec(), counts.to_vec(), title.to_string(), y_desc.to_string());
    both(
        stem,
        |r| per_class_on(r, series, counts, title, y_desc, y_max),
        move |r| per_class_on(r, &s2, &c2, &t2, &d2, y_max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short title keeps the full size; a long one shrinks to fit the width, down to 10.
    #[test]
    fn a_long_caption_shrinks_to_fit_the_plot() {
        assert_eq!(caption_size("SWA LA: reliability"), 22);
        let long = "SWA SRepr, frozen teacher, LA on the student: reliability (3 seed(s), 3000 test predictions pooled)";
        let size = caption_size(long);
        assert!(
            size < 22 && size as f64 * 0.56 * long.chars().count() as f64 <= (SIZE.0 - 24) as f64,
            "{size}"
        );
        assert_eq!(caption_size(&"x".repeat(1000)), 10);
    }
}
