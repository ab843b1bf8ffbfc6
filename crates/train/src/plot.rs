//! PNG line charts of run metrics (plotters, bitmap backend, a bundled DejaVu Sans Mono so the
//! text renders on machines without fonts).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono.ttf");

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; registration fails only on malformed bytes.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named series of (x, y) points, optionally with a shaded band (y low, y high) at each
/// point (mean ± standard error across seeds).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64)>>,
}

impl Series {
    /// A plain line.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, band: None }
    }

    /// A line of means with a band of ± one standard error: points are (x, mean, stderr).
    pub fn with_band(name: impl Into<String>, points: &[(f64, f64, f64)]) -> Self {
        Series { name: name.into(), points: points.iter().map(|p| (p.0, p.1)).collect(), band: Some(points.iter().map(|p| (p.1 - p.2, p.1 + p.2)).collect()) }
    }
}

/// Draws `series` into `path` (800x450 PNG) with a title and axis labels. Vertical dashed lines
/// mark `boundaries` (stage starts).
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], boundaries: &[f64]) -> anyhow::Result<()> {
    ensure_font();
    let banded = series.iter().filter_map(|s| Some(s.points.iter().zip(s.band.as_ref()?).flat_map(|(p, b)| [(p.0, b.0), (p.0, b.1)]).collect::<Vec<_>>())).flatten();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).chain(banded).filter(|p| p.1.is_finite()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let (x1, y0, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, (y0 - pad).min(if y0 >= 0.0 { 0.0 } else { y0 - pad }), y1 + pad);
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart =
        ChartBuilder::on(&root).caption(title, ("sans-serif", 22)).margin(12).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(x0..x1, y0..y1).map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 14)).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    for &b in boundaries {
        chart.draw_series(DashedLineSeries::new(vec![(b, y0), (b, y1)], 6, 4, BLACK.mix(0.4).stroke_width(1))).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        if let Some(band) = &s.band {
            // The band's outline: the upper edge left to right, then the lower edge back.
            let upper = s.points.iter().zip(band).map(|(p, b)| (p.0, b.1));
            let lower = s.points.iter().zip(band).rev().map(|(p, b)| (p.0, b.0));
            let outline: Vec<(f64, f64)> = upper.chain(lower).filter(|p| p.1.is_finite()).collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .draw_series(LineSeries::new(s.points.iter().copied().filter(|p| p.1.is_finite()), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Moving average over `window` points (the last `window` values), for noisy per-step series.
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(window.saturating_sub(1));
            let slice = &points[lo..=i];
            (x, slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64)
        })
        .collect()
}
