//! `plot`: a figure of gathered stage instances (`figure.svg`, `figure.png`)
//! and the numbers behind it (`figure.csv`).
//!
//! One panel per task, question answering first as in the paper's panel (a);
//! an instance that reports no `task` gets a panel named after its stage.
//! Within a panel, series are keyed by the `series` bindings (e.g. `model`),
//! else by stage (lines) or instance (histograms); `series_names` renames the
//! keys in the order they first appear, which is the manifest's fan-out
//! order. The same rule names categorical x values through `x_ticks`.
//!
//! Styles: `lines` (a metric over a binding, with an optional right axis and
//! reference lines: Fig. 2, 5-9, 12, 13), `histogram` (answer lengths of data
//! stages: Fig. 3), `scatter` (`points.csv` of `tsne` stages: Fig. 4),
//! `curves` (`loss_curve` of `train_lora` stages: Fig. 14).
//!
//! In `lines`, instances that differ only in their `seed` binding are one
//! point at their mean, with its 95% interval as an error bar (a band for a
//! reference line): Student t over the seeds, or with one seed a bootstrap
//! over the test examples where `per_example.csv` is upstream (see
//! `toolkit::replicates`). A footer under the panels says how many seeds and
//! test examples (the `examples` metric) stand behind a point and what the
//! bars are.

use std::collections::BTreeMap;

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Stage, StageError, Upstream,
    Value,
};
use flow_plot::{Figure, Panel, PanelKind, Reference, RightAxis, Sample, Series};
use serde_json::Value as Json;

use crate::contracts::points::POINTS_FILE;
use crate::contracts::{dataset, loss_curve, per_example, points};
use crate::toolkit::params::{count, flag, str_list, string};
use crate::toolkit::replicates::{self, describe_methods, Method};
use crate::toolkit::text::CsvText;

pub const SVG_FILE: &str = "figure.svg";
pub const PNG_FILE: &str = "figure.png";
pub const CSV_FILE: &str = "figure.csv";

pub struct Plot;

const STYLES: &[&str] = &["lines", "histogram", "scatter", "curves"];

impl Stage for Plot {
    fn kind(&self) -> &'static str {
        "plot"
    }

    fn version(&self) -> u32 {
        // 3: the legend goes to the emptiest corner; a right-axis series
        // matching a left one takes its colour. 4: lines, not only their
        // markers, count in the corner choice; room is made above the data
        // when no corner is free. 5: legend samples drawn like their
        // series (dashes, markers). 6: lines average instances that differ
        // only in `seed`, with 95% intervals as error bars (reference
        // lines: bands) and a footer; figure.csv gains ci_low, ci_high.
        // 7: the PNG is the SVG rasterized at 2x; ordered levels in a
        // sequential scale; whole-number ticks; axis labels in their
        // series' colour; the legend's box sized by its entries.
        7
    }

    fn about(&self) -> &'static str {
        "A figure (SVG, PNG) and its data (CSV) from gathered stage instances: one panel per \
         task; lines over a binding with an optional right axis (seeds averaged, 95% intervals \
         as error bars), length histograms, t-SNE scatter plots or training-loss curves"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice("style", STYLES, "what kind of figure").default("lines"),
            ParamSpec::gather(
                "y",
                "instances drawn on the left axis (lines), or whose data, points or loss \
                 curves are drawn",
            )
            .required(),
            ParamSpec::string("title", "the figure's title").default(""),
            ParamSpec::string("y_metric", "lines: the metric on the left axis")
                .default("test_loss"),
            ParamSpec::string("y_label", "left axis label (default: from the style)"),
            ParamSpec::gather("y2", "lines: instances drawn on a right axis"),
            ParamSpec::string("y2_metric", "lines: the metric on the right axis")
                .default("distinct_5"),
            ParamSpec::string("y2_label", "right axis label (default: `y2_metric`)"),
            ParamSpec::bool(
                "y2_normalize",
                "divide right-axis values by their panel's maximum (the paper's normalized \
                 diversity)",
            )
            .default(false),
            ParamSpec::gather(
                "reference",
                "lines: instances whose `y_metric` is drawn as a horizontal dashed line",
            ),
            ParamSpec::string("reference_label", "legend entry of reference lines")
                .default("real data"),
            ParamSpec::list(
                "x",
                ParamType::Str,
                "lines: bindings that give an instance's x; the first it has counts",
            )
            .default(Vec::<&str>::new()),
            ParamSpec::string("x_label", "x axis label (default: from `x` or the style)"),
            ParamSpec::list(
                "x_ticks",
                ParamType::Str,
                "lines: categorical x; names for the x values in the order they first appear",
            )
            .default(Vec::<&str>::new()),
            ParamSpec::list(
                "series",
                ParamType::Str,
                "bindings whose values split a panel into series (e.g. `model`)",
            )
            .default(Vec::<&str>::new()),
            ParamSpec::list(
                "series_names",
                ParamType::Str,
                "names for a panel's series keys in the order they first appear",
            )
            .default(Vec::<&str>::new()),
            ParamSpec::int("bins", "histogram: number of bins")
                .min(1.0)
                .max(500.0)
                .default(30),
            ParamSpec::choice(
                "length_of",
                &["target", "input"],
                "histogram: which text's length in words",
            )
            .default("target"),
        ]
    }

    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let style = params.str("style").unwrap_or_default();
        let mut problems = Vec::new();
        let has = |k: &str| {
            params
                .get(k)
                .and_then(Value::as_list)
                .is_some_and(|l| !l.is_empty())
        };
        if style == "lines" && !has("x") {
            problems.push(ParamProblem::new(
                "x",
                "is required for style = \"lines\" (the binding on the x axis, e.g. \"ratio\")",
            ));
        }
        if style != "lines" {
            for k in ["y2", "reference"] {
                if params.get(k).is_some() {
                    problems.push(ParamProblem::new(
                        k,
                        format!("only applies to style = \"lines\", not \"{style}\""),
                    ));
                }
            }
        }
        problems
    }

    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let opts = Settings::from_params(ctx.params)?;
        let y = ctx.gathered("y");
        if y.is_empty() {
            return Err(StageError::invalid("`y` gathered no stage instances"));
        }
        let figure = match opts.style.as_str() {
            "lines" => lines(&opts, y, ctx.gathered("y2"), ctx.gathered("reference"))?,
            "histogram" => histogram(&opts, y)?,
            "scatter" => scatter(&opts, y)?,
            "curves" => curves(&opts, y)?,
            other => return Err(StageError::Other(format!("internal: style `{other}`"))),
        };
        let csv = figure_csv(&figure);
        let csv_path = ctx.out_path(CSV_FILE);
        std::fs::write(&csv_path, csv)
            .map_err(|e| StageError::io(format!("write {}", csv_path.display()), e))?;
        let (svg, png) = figure
            .render(ctx.out_dir, "figure")
            .map_err(|e| StageError::invalid(e.to_string()))?;
        let series: usize = figure.panels.iter().map(series_count).sum();
        ctx.log(format!(
            "{} panel(s), {series} series: {}",
            figure.panels.len(),
            figure
                .panels
                .iter()
                .map(|p| p.title.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Outcome::default()
            .published(SVG_FILE, svg)
            .published(PNG_FILE, png)
            .published(CSV_FILE, csv_path)
            .metric("panels", figure.panels.len() as u64)
            .metric("series", series as u64))
    }
}

/// The parameters of a `plot` stage, read once.
struct Settings {
    style: String,
    title: String,
    y_metric: String,
    y_label: Option<String>,
    y2_metric: String,
    y2_label: Option<String>,
    y2_normalize: bool,
    reference_label: String,
    x: Vec<String>,
    x_label: Option<String>,
    x_ticks: Vec<String>,
    series: Vec<String>,
    series_names: Vec<String>,
    bins: usize,
    length_of: String,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        let s = |k: &str| p.str(k).map(str::to_string);
        Ok(Settings {
            style: string(p, "style")?,
            title: string(p, "title")?,
            y_metric: string(p, "y_metric")?,
            y_label: s("y_label"),
            y2_metric: string(p, "y2_metric")?,
            y2_label: s("y2_label"),
            y2_normalize: flag(p, "y2_normalize")?,
            reference_label: string(p, "reference_label")?,
            x: str_list(p, "x")?,
            x_label: s("x_label"),
            x_ticks: str_list(p, "x_ticks")?,
            series: str_list(p, "series")?,
            series_names: str_list(p, "series_names")?,
            bins: count(p, "bins")?,
            length_of: string(p, "length_of")?,
        })
    }

    /// The key of the series an instance belongs to.
    fn series_key(&self, up: &Upstream, default: &str) -> String {
        let values: Vec<String> = self
            .series
            .iter()
            .filter_map(|b| binding(up, b).map(|v| format!("{b}={}", show(v))))
            .collect();
        if values.is_empty() {
            default.to_string()
        } else {
            values.join(", ")
        }
    }
}

fn binding<'a>(up: &'a Upstream, name: &str) -> Option<&'a Value> {
    up.bindings.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn show(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_json().to_string(),
    }
}

fn stage_of(up: &Upstream) -> &str {
    up.instance.split('@').next().unwrap_or(&up.instance)
}

/// The panel an instance belongs to: its task, else its stage.
fn panel_key(up: &Upstream) -> String {
    match up.metrics.get("task").and_then(Json::as_str) {
        Some(task) => task.to_string(),
        None => stage_of(up).to_string(),
    }
}

fn panel_title(key: &str) -> String {
    match key {
        "qa" => "Question answering (NarrativeQA)".into(),
        "story" => "Story completion (ROCStories)".into(),
        other => other.to_string(),
    }
}

/// Panels in a stable order: QA, stories, then the rest as first seen.
fn panel_order(keys: &mut [String]) {
    let rank = |k: &String| match k.as_str() {
        "qa" => 0,
        "story" => 1,
        _ => 2,
    };
    keys.sort_by_key(rank);
}

/// Keys in order of first appearance, and their display names.
#[derive(Default)]
struct Ordered {
    keys: Vec<String>,
}

impl Ordered {
    fn index(&mut self, key: &str) -> usize {
        match self.keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key.to_string());
                self.keys.len() - 1
            }
        }
    }

    /// Whether the keys are levels of one numeric binding (`m_r=25`, `ratio=0.5`), drawn
    /// in an ordered colour scale.
    fn numeric(&self) -> bool {
        self.keys.len() > 1
            && self.keys.iter().all(|k| {
                k.split_once('=')
                    .is_some_and(|(b, v)| !b.contains(", ") && v.parse::<f64>().is_ok())
            })
    }

    fn name(&self, i: usize, names: &[String]) -> String {
        names
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.keys[i].clone())
    }
}

fn metric(up: &Upstream, name: &str, what: &str) -> Result<f64, StageError> {
    let v = up.metrics.get(name).ok_or_else(|| {
        let mut have: Vec<&str> = up
            .metrics
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k.as_str())
            .collect();
        have.sort_unstable();
        StageError::invalid(format!(
            "{what}: instance `{}` has no metric `{name}` (its numeric metrics: {})",
            up.instance,
            have.join(", ")
        ))
    })?;
    v.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
        StageError::invalid(format!(
            "{what}: metric `{name}` of `{}` is {v}, not a finite number",
            up.instance
        ))
    })
}

/// Per panel: series keys in order, and each series' values.
type Grouped<T> = BTreeMap<String, (Ordered, BTreeMap<usize, Vec<T>>)>;

/// One gathered instance's value, before replicates are averaged.
struct Raw<'a> {
    x: f64,
    v: f64,
    up: &'a Upstream,
}

/// A panel's values before they become series.
#[derive(Default)]
struct PanelData<'a> {
    left: BTreeMap<usize, Vec<Raw<'a>>>,
    left_keys: Ordered,
    right: BTreeMap<usize, Vec<Raw<'a>>>,
    right_keys: Ordered,
    x_values: Ordered,
    references: Vec<(String, Vec<Raw<'a>>)>,
}

/// What the drawn means stand on, for the footer.
#[derive(Default)]
struct Evidence {
    /// Replicates (seeds) behind each point or reference.
    seeds: Vec<usize>,
    methods: Vec<Method>,
    /// The `examples` metric of the instances that report one.
    examples: Vec<u64>,
    any_seed: bool,
    banded: bool,
}

impl Evidence {
    /// "3 seeds per point, 64 test examples; bars: 95% CI (Student t over
    /// seeds)"; empty where nothing has a seed or an interval.
    fn footer(&self) -> String {
        let ci = describe_methods(self.methods.iter().copied());
        if !self.any_seed && ci.is_none() {
            return String::new();
        }
        let range = |v: &[u64]| {
            let lo = v.iter().min().copied().unwrap_or(0);
            let hi = v.iter().max().copied().unwrap_or(0);
            (
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                },
                hi,
            )
        };
        let seeds: Vec<u64> = self.seeds.iter().map(|&n| n as u64).collect();
        let (n, most) = range(&seeds);
        let mut parts = vec![format!(
            "{n} seed{} per point",
            if most == 1 { "" } else { "s" }
        )];
        if !self.examples.is_empty() {
            parts[0].push_str(&format!(", {} test examples", range(&self.examples).0));
        }
        match ci {
            Some(ci) => {
                let drawn = if self.banded {
                    "bars and bands"
                } else {
                    "bars"
                };
                parts.push(format!("{drawn}: {ci}"));
            }
            None => parts.push("no intervals".into()),
        }
        parts.join("; ")
    }
}

/// A drawn point: x, the mean y, and its interval.
type Point = (f64, f64, Option<(f64, f64)>);

/// The points of one series (or a reference): instances that differ only in
/// `seed` become one point at their mean, with its interval (see
/// `toolkit::replicates`); `by_seed` false keeps every instance a point.
fn average<'a>(
    raws: Vec<Raw<'a>>,
    metric: &str,
    by_seed: bool,
    evidence: &mut Evidence,
) -> Result<Vec<Point>, StageError> {
    // (group name, replicates); without `by_seed`, one instance a group.
    let mut groups: Vec<(String, Vec<Raw<'a>>)> = Vec::new();
    for raw in raws {
        if !by_seed {
            groups.push((raw.up.instance.clone(), vec![raw]));
            continue;
        }
        let name = replicates::group_name(raw.up);
        match groups.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.1.push(raw),
            None => groups.push((name, vec![raw])),
        }
    }
    let wants_examples = metric == per_example::METRIC || metric == per_example::EXP_METRIC;
    let mut out = Vec::with_capacity(groups.len());
    for (name, members) in groups {
        let values: Vec<f64> = members.iter().map(|r| r.v).collect();
        let examples = match &members[..] {
            [only] if wants_examples => per_example::read_upstream(only.up)?,
            _ => None,
        };
        let e = replicates::estimate(&name, metric, &values, examples.as_deref());
        evidence.seeds.push(e.n);
        evidence.methods.push(e.method);
        for r in &members {
            evidence.any_seed |= replicates::has_seed(r.up);
            if let Some(n) = r.up.metrics.get("examples").and_then(Json::as_u64) {
                evidence.examples.push(n);
            }
        }
        out.push((members[0].x, e.mean, e.ci));
    }
    Ok(out)
}

fn lines(
    o: &Settings,
    y: &[Upstream],
    y2: &[Upstream],
    reference: &[Upstream],
) -> Result<Figure, StageError> {
    let mut panels: BTreeMap<String, PanelData> = BTreeMap::new();
    let categorical = !o.x_ticks.is_empty();
    // Seeds are averaged unless they are what the figure is drawn over.
    let by_seed =
        !o.x.iter()
            .chain(&o.series)
            .any(|b| replicates::is_seed_label(b));
    let x_of = |up: &Upstream, panel: &mut PanelData| -> Result<f64, StageError> {
        let (name, v) =
            o.x.iter()
                .find_map(|b| binding(up, b).map(|v| (b, v)))
                .ok_or_else(|| {
                    StageError::invalid(format!(
                        "instance `{}` has none of the x bindings {:?} (its bindings: {})",
                        up.instance,
                        o.x,
                        up.bindings
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
        if categorical {
            return Ok(panel.x_values.index(&format!("{name}={}", show(v))) as f64);
        }
        v.as_f64().ok_or_else(|| {
            StageError::invalid(format!(
                "x binding `{name}` of `{}` is {}, not a number; give `x_ticks` for \
                 categorical values",
                up.instance,
                show(v)
            ))
        })
    };
    for up in y {
        let panel = panels.entry(panel_key(up)).or_default();
        let x = x_of(up, panel)?;
        let v = metric(up, &o.y_metric, "y")?;
        let i = panel.left_keys.index(&o.series_key(up, stage_of(up)));
        panel.left.entry(i).or_default().push(Raw { x, v, up });
    }
    for up in y2 {
        let panel = panels.entry(panel_key(up)).or_default();
        let x = x_of(up, panel)?;
        let v = metric(up, &o.y2_metric, "y2")?;
        let i = panel.right_keys.index(&o.series_key(up, stage_of(up)));
        panel.right.entry(i).or_default().push(Raw { x, v, up });
    }
    for up in reference {
        let panel = panels.entry(panel_key(up)).or_default();
        let v = metric(up, &o.y_metric, "reference")?;
        let key = o.series_key(up, "");
        let label = if key.is_empty() {
            o.reference_label.clone()
        } else {
            format!("{} ({key})", o.reference_label)
        };
        let raw = Raw { x: 0.0, v, up };
        match panel.references.iter_mut().find(|r| r.0 == label) {
            Some(r) => r.1.push(raw),
            None => panel.references.push((label, vec![raw])),
        }
    }
    if categorical {
        if let Some((name, p)) = panels
            .iter()
            .find(|(_, p)| p.x_values.keys.len() > o.x_ticks.len())
        {
            return Err(StageError::invalid(format!(
                "x_ticks names {} values but panel `{name}` has {} ({})",
                o.x_ticks.len(),
                p.x_values.keys.len(),
                p.x_values.keys.join(", ")
            )));
        }
    }
    let y_label = o
        .y_label
        .clone()
        .unwrap_or_else(|| o.y_metric.replace('_', " "));
    let y2_label = o.y2_label.clone().unwrap_or_else(|| {
        let base = o.y2_metric.replace('_', " ");
        if o.y2_normalize {
            format!("normalized {base}")
        } else {
            base
        }
    });
    let x_label = o.x_label.clone().unwrap_or_else(|| o.x.join(" / "));
    let mut keys: Vec<String> = panels.keys().cloned().collect();
    panel_order(&mut keys);
    let mut evidence = Evidence::default();
    let mut out = Vec::new();
    for key in keys {
        let mut p = panels.remove(&key).unwrap_or_default();
        let mut to_series = |map: BTreeMap<usize, Vec<Raw>>,
                             keys: &Ordered,
                             metric: &str|
         -> Result<Vec<Series>, StageError> {
            map.into_iter()
                .map(|(i, raws)| {
                    let mut points = average(raws, metric, by_seed, &mut evidence)?;
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let intervals = if points.iter().any(|p| p.2.is_some()) {
                        points.iter().map(|p| p.2).collect()
                    } else {
                        Vec::new()
                    };
                    Ok(Series {
                        label: keys.name(i, &o.series_names),
                        points: points.iter().map(|p| (p.0, p.1)).collect(),
                        intervals,
                    })
                })
                .collect()
        };
        let left = to_series(std::mem::take(&mut p.left), &p.left_keys, &o.y_metric)?;
        if left.is_empty() {
            return Err(StageError::invalid(format!(
                "panel `{key}` has right-axis or reference values but nothing from `y`"
            )));
        }
        let mut right = to_series(std::mem::take(&mut p.right), &p.right_keys, &o.y2_metric)?;
        if o.y2_normalize {
            let max = right
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(f64::NEG_INFINITY, f64::max);
            if max > 0.0 {
                for s in &mut right {
                    for pt in &mut s.points {
                        pt.1 /= max;
                    }
                    for (lo, hi) in s.intervals.iter_mut().flatten() {
                        *lo /= max;
                        *hi /= max;
                    }
                }
            }
        }
        // A lone right series is named by its axis; several say which they are.
        if right.len() == 1 {
            right[0].label = y2_label.clone();
        } else {
            for r in &mut right {
                r.label = format!("{}, {y2_label}", r.label);
            }
        }
        let mut left = left;
        // A lone series no `series` binding split off is named by its axis.
        if left.len() == 1 && !left[0].label.contains('=') {
            left[0].label = y_label.clone();
        }
        let mut references = Vec::new();
        for (label, raws) in std::mem::take(&mut p.references) {
            for (_, y, interval) in average(raws, &o.y_metric, by_seed, &mut evidence)? {
                evidence.banded |= interval.is_some();
                references.push(Reference {
                    label: label.clone(),
                    y,
                    interval,
                });
            }
        }
        out.push(Panel {
            title: panel_title(&key),
            x_label: x_label.clone(),
            y_label: y_label.clone(),
            kind: PanelKind::Lines {
                series: left,
                x_ticks: categorical.then(|| o.x_ticks.clone()),
                right: (!right.is_empty()).then(|| RightAxis {
                    label: y2_label.clone(),
                    series: right,
                }),
                references,
                ordered: p.left_keys.numeric(),
            },
        });
    }
    Ok(Figure {
        title: o.title.clone(),
        panels: out,
        footer: evidence.footer(),
    })
}

fn histogram(o: &Settings, y: &[Upstream]) -> Result<Figure, StageError> {
    let mut panels: Grouped<f64> = BTreeMap::new();
    for up in y {
        let examples = dataset::read_upstream(up)?;
        let task = dataset::common_task(&examples, &format!("`{}`", up.instance))?;
        let key = task
            .map(|t| t.as_str().to_string())
            .unwrap_or_else(|| stage_of(up).to_string());
        let (keys, samples) = panels.entry(key).or_default();
        let i = keys.index(&o.series_key(up, &up.instance));
        let values = samples.entry(i).or_default();
        values.extend(examples.iter().map(|e| {
            let text = if o.length_of == "input" {
                &e.input
            } else {
                &e.target
            };
            text.split_whitespace().count() as f64
        }));
    }
    let mut keys: Vec<String> = panels.keys().cloned().collect();
    panel_order(&mut keys);
    let panels = keys
        .into_iter()
        .map(|key| {
            let (names, samples) = panels.remove(&key).unwrap_or_default();
            Panel {
                title: panel_title(&key),
                x_label: o
                    .x_label
                    .clone()
                    .unwrap_or_else(|| format!("{} length (words)", o.length_of)),
                y_label: o.y_label.clone().unwrap_or_else(|| "density".into()),
                kind: PanelKind::Histogram {
                    samples: samples
                        .into_iter()
                        .map(|(i, values)| Sample {
                            label: names.name(i, &o.series_names),
                            values,
                        })
                        .collect(),
                    bins: o.bins,
                },
            }
        })
        .collect();
    Ok(Figure {
        title: o.title.clone(),
        panels,
        footer: String::new(),
    })
}

fn scatter(o: &Settings, y: &[Upstream]) -> Result<Figure, StageError> {
    let mut panels = Vec::new();
    let mut ups: Vec<&Upstream> = y.iter().collect();
    ups.sort_by_key(|up| match panel_key(up).as_str() {
        "qa" => 0,
        "story" => 1,
        _ => 2,
    });
    for up in ups {
        let mut names = Ordered::default();
        let mut by_series: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, x, y) in points::read(up.file(POINTS_FILE)?)? {
            let i = names.index(&series);
            by_series.entry(i).or_default().push((x, y));
        }
        panels.push(Panel {
            title: panel_title(&panel_key(up)),
            x_label: o.x_label.clone().unwrap_or_else(|| "t-SNE 1".into()),
            y_label: o.y_label.clone().unwrap_or_else(|| "t-SNE 2".into()),
            kind: PanelKind::Scatter {
                series: by_series
                    .into_iter()
                    .map(|(i, points)| Series::new(names.name(i, &o.series_names), points))
                    .collect(),
            },
        });
    }
    Ok(Figure {
        title: o.title.clone(),
        panels,
        footer: String::new(),
    })
}

fn curves(o: &Settings, y: &[Upstream]) -> Result<Figure, StageError> {
    let mut panels: Grouped<(f64, f64)> = BTreeMap::new();
    for up in y {
        let points = loss_curve::read(up)?;
        let (keys, series) = panels.entry(panel_key(up)).or_default();
        let i = keys.index(&o.series_key(up, &up.instance));
        series.entry(i).or_default().extend(points);
    }
    let mut keys: Vec<String> = panels.keys().cloned().collect();
    panel_order(&mut keys);
    let panels = keys
        .into_iter()
        .map(|key| {
            let (names, series) = panels.remove(&key).unwrap_or_default();
            Panel {
                title: panel_title(&key),
                x_label: o.x_label.clone().unwrap_or_else(|| "step".into()),
                y_label: o.y_label.clone().unwrap_or_else(|| "training loss".into()),
                kind: PanelKind::Lines {
                    series: series
                        .into_iter()
                        .map(|(i, points)| Series::new(names.name(i, &o.series_names), points))
                        .collect(),
                    x_ticks: None,
                    right: None,
                    references: vec![],
                    ordered: names.numeric(),
                },
            }
        })
        .collect();
    Ok(Figure {
        title: o.title.clone(),
        panels,
        footer: String::new(),
    })
}

fn series_count(p: &Panel) -> usize {
    match &p.kind {
        PanelKind::Lines { series, right, .. } => {
            series.len() + right.as_ref().map_or(0, |r| r.series.len())
        }
        PanelKind::Histogram { samples, .. } => samples.len(),
        PanelKind::Scatter { series } => series.len(),
    }
}

/// `panel,series,axis,x,y,ci_low,ci_high`: every point drawn (histograms:
/// bin start and density, after the raw values are binned the same way as
/// in the figure), with its 95% interval where it has one (lines).
fn figure_csv(fig: &Figure) -> String {
    let mut out = CsvText::new(["panel", "series", "axis", "x", "y", "ci_low", "ci_high"]);
    // References have no x, points without an interval no bounds: those
    // cells stay empty.
    let mut put =
        |panel: &str, series: &str, axis: &str, x: Option<f64>, y: f64, ci: Option<(f64, f64)>| {
            let x = x.map(|x| x.to_string()).unwrap_or_default();
            let (lo, hi) = ci.map_or((String::new(), String::new()), |(lo, hi)| {
                (lo.to_string(), hi.to_string())
            });
            out.row([panel, series, axis, &x, &y.to_string(), &lo, &hi]);
        };
    for p in &fig.panels {
        match &p.kind {
            PanelKind::Lines {
                series,
                right,
                references,
                ..
            } => {
                for s in series {
                    for (i, &(x, y)) in s.points.iter().enumerate() {
                        put(&p.title, &s.label, "left", Some(x), y, s.interval(i));
                    }
                }
                for s in right.iter().flat_map(|r| &r.series) {
                    for (i, &(x, y)) in s.points.iter().enumerate() {
                        put(&p.title, &s.label, "right", Some(x), y, s.interval(i));
                    }
                }
                for r in references {
                    put(&p.title, &r.label, "reference", None, r.y, r.interval);
                }
            }
            PanelKind::Histogram { samples, bins } => {
                let edges =
                    flow_plot::bin_edges(samples.iter().map(|s| s.values.as_slice()), *bins);
                for s in samples {
                    for (i, d) in flow_plot::density(&s.values, &edges).iter().enumerate() {
                        put(&p.title, &s.label, "density", Some(edges[i]), *d, None);
                    }
                }
            }
            PanelKind::Scatter { series } => {
                for s in series {
                    for &(x, y) in &s.points {
                        put(&p.title, &s.label, "point", Some(x), y, None);
                    }
                }
            }
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests;
