//! Drawing a [`Figure`] on any plotters backend.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use plotters_backend::{BackendCoord, DrawingErrorKind};

use crate::histogram::{bin_edges, density};
use crate::{
    Figure, Panel, PanelKind, PlotError, Reference, Result, RightAxis, Series, FOOTER_HEIGHT,
    PANEL_SIZE,
};

/// A legend sample of a dashed line, as wide as the solid ones: two dashes. (A macro: the
/// composed element's type depends on the drawing backend.)
macro_rules! dashed_sample {
    ($at:expr, $c:expr) => {
        EmptyElement::at($at)
            + PathElement::new(vec![(0, 0), (9, 0)], $c.stroke_width(2))
            + PathElement::new(vec![(15, 0), (24, 0)], $c.stroke_width(2))
    };
}

const FONT: &str = "sans-serif";
static DEJAVU: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font checked in with the crate.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU);
    });
}

/// Colour-blind-safe palette (Okabe & Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Viridis from dark purple to green (its light yellow end is left out: unreadable on
/// white), for ordered levels.
const SEQUENTIAL: [RGBColor; 6] = [
    RGBColor(68, 1, 84),
    RGBColor(65, 68, 135),
    RGBColor(42, 120, 142),
    RGBColor(34, 168, 132),
    RGBColor(122, 209, 81),
    RGBColor(189, 223, 38),
];

/// Colour `i` of `n` ordered levels: evenly spaced along [`SEQUENTIAL`].
fn ordered_color(i: usize, n: usize) -> RGBColor {
    if n <= 1 {
        return SEQUENTIAL[0];
    }
    let t = i.min(n - 1) as f64 / (n - 1) as f64 * (SEQUENTIAL.len() - 1) as f64;
    let (k, f) = (t.floor() as usize, t.fract());
    let (a, b) = (SEQUENTIAL[k], SEQUENTIAL[(k + 1).min(SEQUENTIAL.len() - 1)]);
    let mix = |x: u8, y: u8| (f64::from(x) + f * (f64::from(y) - f64::from(x))).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A reference line beside ordered levels: neutral, so it is never one of them.
const REFERENCE_GREY: RGBColor = RGBColor(90, 90, 90);

/// The colours of a lines panel: its series, its references, its right-axis series.
struct Colours {
    ordered: bool,
    series: usize,
    /// The left axis' description in this colour (a lone series'), else black.
    y_ink: Option<RGBColor>,
}

impl Colours {
    fn series(&self, i: usize) -> RGBColor {
        if self.ordered {
            ordered_color(i, self.series)
        } else {
            color(i)
        }
    }

    fn reference(&self, i: usize) -> RGBColor {
        if self.ordered {
            REFERENCE_GREY
        } else {
            color(self.series + i)
        }
    }
}

/// Whether every x is a whole number: ticks between them get no label (steps, epochs).
fn integer_axis(xs: impl Iterator<Item = f64>) -> bool {
    let mut any = false;
    for x in xs {
        if x.fract() != 0.0 {
            return false;
        }
        any = true;
    }
    any
}

pub fn svg(fig: &Figure, path: &Path) -> Result<()> {
    register_font();
    let root = SVGBackend::new(path, fig.size()).into_drawing_area();
    draw(fig, root).map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })
}

/// The PNG's pixels per SVG pixel: print quality (a 2-panel figure is 2560 px wide).
pub const PNG_SCALE: u32 = 2;

/// The figure as SVG, rasterized by resvg at [`PNG_SCALE`] with the embedded font, so the
/// PNG is the SVG (plotters' own bitmap backend misplaces text: decimal points at
/// mid-height, split words).
pub fn png(fig: &Figure, path: &Path) -> Result<()> {
    register_font();
    let failed = |message: String| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    };
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, fig.size()).into_drawing_area();
        draw(fig, root).map_err(failed)?;
    }
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_font_data(DEJAVU.to_vec());
    fonts.set_sans_serif_family("DejaVu Sans");
    options.font_family = "DejaVu Sans".into();
    let tree = resvg::usvg::Tree::from_str(&text, &options).map_err(|e| failed(err(e)))?;
    let (w, h) = fig.size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(w * PNG_SCALE, h * PNG_SCALE)
        .ok_or_else(|| failed(format!("cannot allocate a {w}x{h} image")))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    let scale = PNG_SCALE as f32;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(path).map_err(|e| failed(err(e)))
}

type Res = std::result::Result<(), String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(fig: &Figure, root: DrawingArea<DB, Shift>) -> Res {
    root.fill(&WHITE).map_err(err)?;
    let panels = if fig.footer.is_empty() {
        root.clone()
    } else {
        let (panels, foot) = root.split_vertically(PANEL_SIZE.1);
        footer(&foot, &fig.footer)?;
        panels
    };
    let body = if fig.title.is_empty() {
        panels
    } else {
        panels.titled(&fig.title, (FONT, 24)).map_err(err)?
    };
    let areas = body.split_evenly((1, fig.panels.len()));
    for (panel, area) in fig.panels.iter().zip(areas) {
        match &panel.kind {
            PanelKind::Lines {
                series,
                x_ticks,
                right,
                references,
                ordered,
            } => lines(
                &area,
                panel,
                series,
                x_ticks.as_deref(),
                right.as_ref(),
                references,
                Colours {
                    ordered: *ordered,
                    series: series.len(),
                    y_ink: None,
                },
            )?,
            PanelKind::Histogram { samples, bins } => {
                let edges = bin_edges(samples.iter().map(|s| s.values.as_slice()), *bins);
                let series: Vec<Series> = samples
                    .iter()
                    .map(|s| {
                        let points = density(&s.values, &edges)
                            .into_iter()
                            .enumerate()
                            .map(|(i, d)| (edges[i], d))
                            .collect();
                        Series::new(s.label.clone(), points)
                    })
                    .collect();
                histogram(&area, panel, &series, &edges)?;
            }
            PanelKind::Scatter { series } => scatter(&area, panel, series)?,
        }
    }
    root.present().map_err(err)
}

/// The footer line, centred in its strip (smaller type where it is long).
fn footer<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> Res {
    let (w, _) = area.dim_in_pixel();
    // DejaVu Sans averages about 0.55 em a character.
    let fits = (f64::from(w) - 24.0) / (0.55 * text.chars().count().max(1) as f64);
    let size = fits.clamp(9.0, 14.0);
    let ink = BLACK.mix(0.8);
    let style = TextStyle::from((FONT, size))
        .color(&ink)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(text, &style, (w as i32 / 2, FOOTER_HEIGHT as i32 / 2))
        .map_err(err)
}

/// Half the width of an error bar's caps, in pixels.
const CAP: i32 = 5;

/// An error bar: a vertical stem from `ends[0]` to `ends[1]` (data
/// coordinates) with a horizontal cap at each end.
#[derive(Clone)]
struct ErrorBar {
    ends: [(f64, f64); 2],
    style: ShapeStyle,
}

impl<'a> PointCollection<'a, (f64, f64)> for &'a ErrorBar {
    type Point = &'a (f64, f64);
    type IntoIter = &'a [(f64, f64); 2];
    fn point_iter(self) -> Self::IntoIter {
        &self.ends
    }
}

impl<DB: DrawingBackend> Drawable<DB> for ErrorBar {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> std::result::Result<(), DrawingErrorKind<DB::ErrorType>> {
        let (Some(a), Some(b)) = (pos.next(), pos.next()) else {
            return Ok(());
        };
        backend.draw_line(a, b, &self.style)?;
        for (x, y) in [a, b] {
            backend.draw_line((x - CAP, y), (x + CAP, y), &self.style)?;
        }
        Ok(())
    }
}

/// The error bars of a series' points that have an interval.
fn error_bars(s: &Series, c: RGBColor) -> Vec<ErrorBar> {
    s.points
        .iter()
        .enumerate()
        .filter_map(|(i, &(x, _))| {
            let (lo, hi) = s.interval(i)?;
            Some(ErrorBar {
                ends: [(x, lo), (x, hi)],
                style: c.stroke_width(2),
            })
        })
        .collect()
}

/// A range around `values` with 5% padding (a unit range around one value).
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad)..(hi + pad)
}

fn ys(series: &[Series]) -> impl Iterator<Item = f64> + '_ {
    series.iter().flat_map(|s| s.points.iter().map(|p| p.1))
}

/// Every y a lines panel draws on one axis: points and interval ends.
fn ys_with_intervals(series: &[Series]) -> impl Iterator<Item = f64> + '_ {
    ys(series).chain(
        series
            .iter()
            .flat_map(|s| s.intervals.iter().flatten().flat_map(|&(lo, hi)| [lo, hi])),
    )
}

/// The ends of every error bar of `series`, as two-point lines.
fn bars(series: &[Series]) -> impl Iterator<Item = Vec<(f64, f64)>> + '_ {
    series.iter().flat_map(|s| {
        s.points
            .iter()
            .enumerate()
            .filter_map(|(i, &(x, _))| s.interval(i).map(|(lo, hi)| vec![(x, lo), (x, hi)]))
    })
}

fn xs(series: &[Series]) -> impl Iterator<Item = f64> + '_ {
    series.iter().flat_map(|s| s.points.iter().map(|p| p.0))
}

fn tick_label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

type Chart2d<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    series: &[Series],
    x_ticks: Option<&[String]>,
    right: Option<&RightAxis>,
    references: &[Reference],
    colours: Colours,
) -> Res {
    let x_range = match x_ticks {
        Some(t) => -0.5..(t.len().max(1) as f64 - 0.5),
        None => padded(xs(series).chain(right.into_iter().flat_map(|r| xs(&r.series)))),
    };
    let mut y_range = padded(
        ys_with_intervals(series).chain(references.iter().flat_map(|r| {
            [r.y]
                .into_iter()
                .chain(r.interval.into_iter().flat_map(|(lo, hi)| [lo, hi]))
        })),
    );
    let mut right_range = right.map(|r| padded(ys_with_intervals(&r.series)));
    // Where the legend hides the fewest points, on either axis.
    let unit = |v: f64, r: &Range<f64>| (v - r.start) / (r.end - r.start);
    let scaled = |s: &Series, yr: &Range<f64>| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .map(|&(x, y)| (unit(x, &x_range), unit(y, yr)))
            .collect()
    };
    let scaled_bars = |s: &[Series], yr: &Range<f64>| -> Vec<Vec<(f64, f64)>> {
        bars(s)
            .map(|b| {
                b.into_iter()
                    .map(|(x, y)| (unit(x, &x_range), unit(y, yr)))
                    .collect()
            })
            .collect()
    };
    let mut drawn: Vec<Vec<(f64, f64)>> = series.iter().map(|s| scaled(s, &y_range)).collect();
    drawn.extend(scaled_bars(series, &y_range));
    // A reference line spans the panel.
    drawn.extend(references.iter().map(|r| {
        let y = unit(r.y, &y_range);
        vec![(0.0, y), (1.0, y)]
    }));
    for (r, yr) in right.iter().zip(&right_range) {
        drawn.extend(r.series.iter().map(|s| scaled(s, yr)));
        drawn.extend(scaled_bars(&r.series, yr));
    }
    // The legend's box, as shares of the plot: one row per entry, as wide as the
    // longest label (DejaVu Sans at 13 px: about 7.5 px a character, plus the sample).
    let labels: Vec<&str> = series
        .iter()
        .map(|s| s.label.as_str())
        .chain(references.iter().map(|r| r.label.as_str()))
        .chain(
            right
                .iter()
                .flat_map(|r| r.series.iter().map(|s| s.label.as_str())),
        )
        .collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let legend_w = ((longest as f64 * 7.5 + 50.0) / PLOT_PX.0).clamp(0.25, 0.9);
    let legend_h = ((labels.len() as f64 * 20.0 + 14.0) / PLOT_PX.1).clamp(0.1, 0.85);
    let (mut corner, covered) = emptiest_corner(&drawn, legend_w, legend_h);
    if covered > 0 {
        // Every corner has something drawn in it: make room above the data, as tall as
        // the legend.
        let share = (legend_h / (1.0 - legend_h)).max(HEADROOM);
        let headroom = |r: &mut Range<f64>| r.end += share * (r.end - r.start);
        headroom(&mut y_range);
        right_range.iter_mut().for_each(headroom);
        corner = SeriesLabelPosition::UpperRight;
    }
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64);
    let Some(right) = right else {
        let mut chart = builder
            .build_cartesian_2d(x_range.clone(), y_range)
            .map_err(err)?;
        left_side(
            &mut chart, panel, series, x_ticks, references, &x_range, &colours,
        )?;
        return legend(&mut chart, corner);
    };
    builder.right_y_label_area_size(64);
    // The secondary coordinates must exist before the mesh is drawn, or the
    // left axis' labels are repeated on the right.
    let mut dual = builder
        .build_cartesian_2d(x_range.clone(), y_range)
        .map_err(err)?
        .set_secondary_coord(x_range.clone(), right_range.unwrap_or(0.0..1.0));
    // One right series per left one, several of each (each model's loss
    // and its data's diversity): the same colour, dashed. Otherwise (one of
    // each: two quantities of one model) colours of their own.
    let paired = right.series.len() == series.len() && series.len() > 1;
    let right_colour = |i: usize| match paired {
        true => colours.series(i),
        false => color(series.len() + references.len() + i),
    };
    // Each axis' label in its series' colour where it has one series (a loss on the
    // left, a diversity on the right): which line belongs to which axis at a glance.
    let single = |n: usize, c: RGBColor| (n == 1 && !paired).then_some(c);
    let left_ink = single(series.len(), colours.series(0));
    let right_ink = single(right.series.len(), right_colour(0)).unwrap_or(BLACK);
    let colours = Colours {
        y_ink: left_ink,
        ..colours
    };
    left_side(
        &mut dual, panel, series, x_ticks, references, &x_range, &colours,
    )?;
    let y_fmt = |v: &f64| tick_label(*v);
    dual.configure_secondary_axes()
        .y_desc(&right.label)
        .axis_desc_style(TextStyle::from((FONT, 16)).color(&right_ink))
        .label_style((FONT, 13))
        .y_label_formatter(&y_fmt)
        .draw()
        .map_err(err)?;
    for (i, s) in right.series.iter().enumerate() {
        let c = right_colour(i);
        dual.draw_secondary_series(DashedLineSeries::new(
            s.points.iter().copied(),
            8,
            4,
            c.stroke_width(2),
        ))
        .map_err(err)?
        .label(&s.label)
        .legend(move |at| dashed_sample!(at, c) + TriangleMarker::new((12, 0), 6, c.filled()));
        dual.draw_secondary_series(
            s.points
                .iter()
                .map(|&p| TriangleMarker::new(p, 6, c.filled())),
        )
        .map_err(err)?;
        dual.draw_secondary_series(error_bars(s, c)).map_err(err)?;
    }
    legend(&mut dual, corner)
}

/// Extra height, as a share of the data's, above the data when no corner
/// is free for the legend (at least; a taller legend gets more).
const HEADROOM: f64 = 0.45;

/// About the pixel size of a panel's plotting area (the panel less its caption and
/// axis label areas), for sizing the legend's box.
const PLOT_PX: (f64, f64) = (500.0, 380.0);

/// The corner of the plot (unit coordinates) where a legend box would
/// cover the least of the drawing, and how many samples it would cover:
/// `lines` are sampled along their segments, so a line crossing a corner
/// counts as well as its markers. The upper right on a tie.
fn emptiest_corner(lines: &[Vec<(f64, f64)>], w: f64, h: f64) -> (SeriesLabelPosition, usize) {
    let mut counts = [0usize; 4];
    let mut count = |(x, y): (f64, f64)| {
        let (left, right) = (x < w, x > 1.0 - w);
        let (lower, upper) = (y < h, y > 1.0 - h);
        for (i, inside) in [
            (3, right && upper),
            (2, left && upper),
            (1, right && lower),
            (0, left && lower),
        ] {
            counts[i] += usize::from(inside);
        }
    };
    for line in lines {
        if let [only] = line.as_slice() {
            count(*only);
        }
        for pair in line.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            for k in 0..=16 {
                let t = k as f64 / 16.0;
                count((x0 + t * (x1 - x0), y0 + t * (y1 - y0)));
            }
        }
    }
    use SeriesLabelPosition::*;
    [
        (3, UpperRight),
        (2, UpperLeft),
        (1, LowerRight),
        (0, LowerLeft),
    ]
    .into_iter()
    .min_by_key(|(i, _)| counts[*i])
    .map(|(i, p)| (p, counts[i]))
    .unwrap_or((UpperRight, 0))
}

/// Mesh, left-axis series and reference lines.
fn left_side<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart2d<'a, DB>,
    panel: &Panel,
    series: &[Series],
    x_ticks: Option<&[String]>,
    references: &[Reference],
    x_range: &Range<f64>,
    colours: &Colours,
) -> Res {
    let y_ink = colours.y_ink;
    let integers = integer_axis(xs(series));
    let tick_names = |v: &f64| -> String {
        match x_ticks {
            Some(t) => {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < t.len() {
                    t[i as usize].clone()
                } else {
                    String::new()
                }
            }
            // Float steps land near, not on, whole numbers.
            None if integers => match (v - v.round()).abs() < 1e-6 {
                true => tick_label(v.round()),
                false => String::new(),
            },
            None => tick_label(*v),
        }
    };
    let y_fmt = |v: &f64| tick_label(*v);
    let ink = y_ink.unwrap_or(BLACK);
    let mut mesh = chart.configure_mesh();
    // A coloured y description is drawn on its own below (the mesh draws both
    // descriptions in one style).
    let y_desc = if y_ink.is_some() {
        ""
    } else {
        panel.y_label.as_str()
    };
    mesh.x_desc(&panel.x_label)
        .y_desc(y_desc)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .x_label_formatter(&tick_names)
        .y_label_formatter(&y_fmt)
        .light_line_style(WHITE.mix(0.0));
    if let Some(t) = x_ticks {
        // Ticks at every half step: the integer ones carry the names.
        mesh.x_labels(t.len() * 2 + 1);
    }
    mesh.draw().map_err(err)?;
    if y_ink.is_some() {
        // The y axis again (the same labels, drawn over themselves) with its description.
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(&panel.y_label)
            .axis_desc_style(TextStyle::from((FONT, 16)).color(&ink))
            .label_style((FONT, 13))
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(err)?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = colours.series(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(&s.label)
            .legend(move |at| {
                EmptyElement::at(at)
                    + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(2))
                    + Circle::new((12, 0), 4, c.filled())
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
        chart.draw_series(error_bars(s, c)).map_err(err)?;
    }
    for (i, r) in references.iter().enumerate() {
        let c = colours.reference(i);
        if let Some((lo, hi)) = r.interval {
            // A light band under the line: the reference's interval.
            let band = [(x_range.start, lo), (x_range.end, hi)];
            chart
                .draw_series([Rectangle::new(band, c.mix(0.15).filled())])
                .map_err(err)?;
        }
        let ends = [(x_range.start, r.y), (x_range.end, r.y)];
        chart
            .draw_series(DashedLineSeries::new(ends, 6, 4, c.stroke_width(2)))
            .map_err(err)?
            .label(&r.label)
            .legend(move |at| dashed_sample!(at, c));
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    corner: SeriesLabelPosition,
) -> Res {
    chart
        .configure_series_labels()
        .position(corner)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)
}

/// A panel with numeric axes, its caption and its mesh drawn.
fn numeric_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    panel: &Panel,
    x: Range<f64>,
    y: Range<f64>,
) -> std::result::Result<Chart2d<'a, DB>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    let fmt = |v: &f64| tick_label(*v);
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    series: &[Series],
    edges: &[f64],
) -> Res {
    let width = edges[1] - edges[0];
    let x_range = edges[0]..edges[edges.len() - 1];
    let top = ys(series).fold(0.0f64, f64::max).max(1e-12) * 1.08;
    let mut chart = numeric_chart(area, panel, x_range, 0.0..top)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(
                s.points.iter().map(|&(x0, d)| {
                    Rectangle::new([(x0, 0.0), (x0 + width, d)], c.mix(0.25).filled())
                }),
            )
            .map_err(err)?;
        // The outline as a step line, so overlapping samples stay readable.
        let mut step = Vec::with_capacity(s.points.len() * 2 + 2);
        step.push((edges[0], 0.0));
        for &(x0, d) in &s.points {
            step.push((x0, d));
            step.push((x0 + width, d));
        }
        step.push((edges[edges.len() - 1], 0.0));
        chart
            .draw_series(LineSeries::new(step, c.stroke_width(2)))
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    series: &[Series],
) -> Res {
    let mut chart = numeric_chart(area, panel, padded(xs(series)), padded(ys(series)))?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 2, c.mix(0.6).filled())),
            )
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long legend's box reaches further into the plot, so it covers what a short
    /// one's would not.
    #[test]
    fn a_taller_legend_covers_more() {
        let point = vec![vec![(0.55, 0.5)]];
        assert_eq!(emptiest_corner(&point, 0.4, 0.25).1, 0);
        assert_eq!(emptiest_corner(&point, 0.9, 0.85).1, 1);
    }

    #[test]
    fn the_legend_goes_where_the_least_is_drawn() {
        let pos = |lines: &[&[(f64, f64)]]| {
            let lines: Vec<Vec<(f64, f64)>> = lines.iter().map(|l| l.to_vec()).collect();
            // The box of a two- or three-entry legend.
            let (corner, covered) = emptiest_corner(&lines, 0.4, 0.25);
            format!("{corner:?} {covered}")
        };
        // A line falling from the upper left: the upper right is empty.
        assert_eq!(
            pos(&[&[(0.0, 0.9), (0.5, 0.5), (1.0, 0.1)]]),
            "UpperRight 0"
        );
        // A line across the top: a lower corner.
        assert_eq!(
            pos(&[&[(0.1, 0.9), (0.9, 0.9)], &[(0.2, 0.2)]]),
            "LowerRight 0"
        );
        // Only the upper right is taken.
        assert_eq!(pos(&[&[(0.9, 0.9), (0.8, 0.8)]]), "UpperLeft 0");
        // Two lines crossing (fig. 5's loss rising, diversity falling): every
        // corner holds an end point, so none is free (the caller then makes
        // room above the data).
        let crossing = pos(&[
            &[(0.0, 0.0), (0.1, 0.05), (0.5, 0.45), (1.0, 1.0)],
            &[(0.0, 1.0), (0.1, 1.0), (0.5, 0.85), (1.0, 0.0)],
        ]);
        assert!(!crossing.ends_with(" 0"), "{crossing}");
        assert_eq!(pos(&[]), "UpperRight 0");
    }
}
