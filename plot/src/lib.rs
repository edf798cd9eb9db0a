//! Figures for flow, drawn with plotters as SVG and PNG.
//!
//! A [`Figure`] is a row of panels; each panel is a line chart (optionally
//! with a right-hand axis, as the paper draws test loss and diversity
//! together), a histogram of several samples, or a scatter plot. Line points
//! may carry an interval (drawn as an error bar with caps) and reference
//! lines a band; a footer line under the panels says what they mean. The
//! font is embedded (DejaVu Sans), so a figure looks the same on a machine
//! without system fonts.

mod draw;
mod histogram;

use std::path::{Path, PathBuf};

pub use draw::PNG_SCALE;
pub use histogram::{bin_edges, density};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("figure has no panels")]
    Empty,
    #[error("panel `{panel}`: {problem}")]
    Data { panel: String, problem: String },
    #[error("draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, PlotError>;

/// A row of panels under one title, with an optional footer line under them
/// (e.g. "3 seeds per point; bars: 95% CI (Student t over seeds)"; empty:
/// none).
#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub footer: String,
}

#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: PanelKind,
}

#[derive(Clone, Debug)]
pub enum PanelKind {
    /// Lines with markers. With `x_ticks`, x values are positions 0, 1, ...
    /// into those category names.
    Lines {
        series: Vec<Series>,
        x_ticks: Option<Vec<String>>,
        right: Option<RightAxis>,
        /// Horizontal dashed lines on the left axis (e.g. the model trained
        /// on real data).
        references: Vec<Reference>,
        /// The series are ordered levels (Gen-D1, D3, D5; shares): drawn in
        /// a sequential colour scale in their order, references in grey.
        ordered: bool,
    },
    /// Overlaid densities of samples over shared bins.
    Histogram { samples: Vec<Sample>, bins: usize },
    /// Points only.
    Scatter { series: Vec<Series> },
}

/// A second y axis on the right, drawn with dashed lines.
#[derive(Clone, Debug)]
pub struct RightAxis {
    pub label: String,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Per point, an interval `(low, high)` of its y drawn as an error bar
    /// with caps (lines only); empty: none, else one entry per point.
    pub intervals: Vec<Option<(f64, f64)>>,
}

impl Series {
    /// A series without intervals.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            intervals: Vec::new(),
        }
    }

    /// The interval of point `i`, if any.
    pub fn interval(&self, i: usize) -> Option<(f64, f64)> {
        self.intervals.get(i).copied().flatten()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub label: String,
    pub y: f64,
    /// An interval `(low, high)` of `y`, drawn as a light band across the panel.
    pub interval: Option<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub label: String,
    pub values: Vec<f64>,
}

/// Pixel size of one panel.
pub const PANEL_SIZE: (u32, u32) = (640, 480);

/// Pixel height of the footer line, when there is one.
pub const FOOTER_HEIGHT: u32 = 30;

impl Figure {
    fn check(&self) -> Result<()> {
        if self.panels.is_empty() {
            return Err(PlotError::Empty);
        }
        for p in &self.panels {
            let bad = |problem: &str| PlotError::Data {
                panel: p.title.clone(),
                problem: problem.to_string(),
            };
            let finite = |s: &[Series]| {
                s.iter()
                    .flat_map(|s| &s.points)
                    .all(|(x, y)| x.is_finite() && y.is_finite())
            };
            let ordered = |lo: f64, hi: f64| lo.is_finite() && hi.is_finite() && lo <= hi;
            let intervals_ok = |s: &[Series]| {
                s.iter().all(|s| {
                    (s.intervals.is_empty() || s.intervals.len() == s.points.len())
                        && s.intervals
                            .iter()
                            .flatten()
                            .all(|&(lo, hi)| ordered(lo, hi))
                })
            };
            match &p.kind {
                PanelKind::Lines {
                    series,
                    right,
                    references,
                    ..
                } => {
                    if series.iter().all(|s| s.points.is_empty()) {
                        return Err(bad("no points"));
                    }
                    if !finite(series) || !right.as_ref().is_none_or(|r| finite(&r.series)) {
                        return Err(bad("a value is not finite"));
                    }
                    let all_ok = intervals_ok(series)
                        && right.as_ref().is_none_or(|r| intervals_ok(&r.series))
                        && references.iter().all(|r| {
                            r.y.is_finite() && r.interval.is_none_or(|(lo, hi)| ordered(lo, hi))
                        });
                    if !all_ok {
                        return Err(bad(
                            "an interval is not finite, has low > high, or intervals and points \
                             differ in number",
                        ));
                    }
                }
                PanelKind::Scatter { series } => {
                    if series.iter().all(|s| s.points.is_empty()) {
                        return Err(bad("no points"));
                    }
                    if !finite(series) {
                        return Err(bad("a value is not finite"));
                    }
                }
                PanelKind::Histogram { samples, bins } => {
                    if *bins == 0 {
                        return Err(bad("bins must be at least 1"));
                    }
                    if samples.iter().all(|s| s.values.is_empty()) {
                        return Err(bad("no values"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Pixel size of the whole figure (the footer adds its line).
    pub fn size(&self) -> (u32, u32) {
        let footer = if self.footer.is_empty() {
            0
        } else {
            FOOTER_HEIGHT
        };
        (
            PANEL_SIZE.0 * self.panels.len().max(1) as u32,
            PANEL_SIZE.1 + footer,
        )
    }

    /// Writes `<stem>.svg` and `<stem>.png` into `dir`; returns both paths.
    pub fn render(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        self.check()?;
        let svg = dir.join(format!("{stem}.svg"));
        let png = dir.join(format!("{stem}.png"));
        draw::svg(self, &svg)?;
        draw::png(self, &png)?;
        Ok((svg, png))
    }
}

#[cfg(test)]
mod tests;
