use std::collections::BTreeMap;

use flow_engine::{StageError, Upstream, Value};
use serde_json::json;

use super::{Plot, CSV_FILE, PNG_FILE, SVG_FILE};
use crate::contracts::dataset::Task;
use crate::contracts::per_example::{self, ExampleLoss, PER_EXAMPLE_FILE};
use crate::contracts::points::POINTS_FILE;
use crate::testutil::{data_upstream, example, inputs, params, run, Ran};

fn up(stage: &str, task: &str, bindings: &[(&str, Value)], metrics: serde_json::Value) -> Upstream {
    let mut metrics = metrics.as_object().unwrap().clone();
    metrics.insert("task".into(), json!(task));
    let suffix: Vec<String> = bindings
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_json()))
        .collect();
    Upstream {
        instance: format!("{stage}@{}", suffix.join(",")),
        bindings: bindings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        files: BTreeMap::new(),
        metrics,
    }
}

fn plot(ins: Vec<(&str, Upstream)>, given: &[(&str, Value)]) -> Result<Ran, StageError> {
    let mut names: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (param, u) in &ins {
        let stage = u.instance.split('@').next().unwrap().to_string();
        let list = names.entry(param).or_default();
        if !list.contains(&stage) {
            list.push(stage);
        }
    }
    let mut all: Vec<(&str, Value)> = names
        .iter()
        .map(|(k, v)| {
            (
                *k,
                Value::from(v.iter().map(String::as_str).collect::<Vec<_>>()),
            )
        })
        .collect();
    all.extend(given.iter().cloned());
    run(&Plot, &params(&Plot, &all), inputs(ins), 1, None)
}

fn csv_rows(ran: &Ran) -> Vec<Vec<String>> {
    std::fs::read_to_string(ran.file(CSV_FILE))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn twin_axis_lines_one_panel_per_task_with_normalized_diversity() {
    let mut ins = Vec::new();
    for (task, stage, div) in [("story", "st", 2.0), ("qa", "qa", 10.0)] {
        for (i, ratio) in [0.0, 0.5, 1.0].into_iter().enumerate() {
            let b = [
                ("ratio", Value::Float(ratio)),
                ("model", Value::from("smollm2")),
            ];
            let loss = 3.0 + ratio;
            ins.push((
                "y",
                up(
                    &format!("{stage}_eval"),
                    task,
                    &b,
                    json!({"test_loss": loss}),
                ),
            ));
            let d = div * (1.0 - 0.25 * i as f64);
            ins.push((
                "y2",
                up(
                    &format!("{stage}_div"),
                    task,
                    &b[..1],
                    json!({"distinct_5": d}),
                ),
            ));
        }
        ins.push((
            "reference",
            up(
                &format!("{stage}_real"),
                task,
                &[],
                json!({"test_loss": 2.5}),
            ),
        ));
    }
    let ran = plot(
        ins,
        &[
            ("x", Value::from(vec!["ratio"])),
            ("series", Value::from(vec!["model"])),
            ("y2_normalize", Value::Bool(true)),
            ("title", Value::from("Fig. 5")),
        ],
    )
    .unwrap();
    assert_eq!(ran.metric("panels"), &json!(2));
    let svg = std::fs::read_to_string(ran.file(SVG_FILE)).unwrap();
    // QA is panel (a), as in the paper.
    let qa = svg.find("Question answering").unwrap();
    let story = svg.find("Story completion").unwrap();
    assert!(qa < story);
    assert!(svg.contains("normalized distinct 5") && svg.contains("model=smollm2"));
    assert!(std::fs::metadata(ran.file(PNG_FILE)).unwrap().len() > 10_000);
    let rows = csv_rows(&ran);
    let right: Vec<f64> = rows
        .iter()
        .filter(|r| r[0].starts_with("Question") && r[2] == "right")
        .map(|r| r[4].parse().unwrap())
        .collect();
    assert_eq!(right, vec![1.0, 0.75, 0.5], "divided by the panel's max");
    let left: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r[0].starts_with("Story") && r[2] == "left")
        .map(|r| (r[3].parse().unwrap(), r[4].parse().unwrap()))
        .collect();
    assert_eq!(left, vec![(0.0, 3.0), (0.5, 3.5), (1.0, 4.0)]);
    assert_eq!(rows.iter().filter(|r| r[2] == "reference").count(), 2);
}

#[test]
fn categorical_x_follows_fan_out_order_and_names_ticks() {
    // QA levels fan out over m_r = 30 .. 0 (Gen-D0 .. Gen-D2 here).
    let ins = [30, 15, 0]
        .into_iter()
        .map(|m| {
            (
                "y",
                up(
                    "qa_eval",
                    "qa",
                    &[("m_r", Value::Int(m))],
                    json!({"test_loss": m as f64}),
                ),
            )
        })
        .collect();
    let ticks = vec!["Gen-D0", "Gen-D1", "Gen-D2"];
    let ran = plot(
        ins,
        &[
            ("x", Value::from(vec!["m_r", "topic_count"])),
            ("x_ticks", Value::from(ticks)),
        ],
    )
    .unwrap();
    let pts: Vec<(String, String)> = csv_rows(&ran)
        .into_iter()
        .map(|r| (r[3].clone(), r[4].clone()))
        .collect();
    assert_eq!(
        pts,
        [("0", "30"), ("1", "15"), ("2", "0")].map(|(a, b)| (a.into(), b.into()))
    );
    let svg = std::fs::read_to_string(ran.file(SVG_FILE)).unwrap();
    assert!(svg.contains("Gen-D2"));
    // Too few tick names is an error that says so.
    let ins = [30, 15, 0]
        .into_iter()
        .map(|m| {
            (
                "y",
                up(
                    "qa_eval",
                    "qa",
                    &[("m_r", Value::Int(m))],
                    json!({"test_loss": 1.0}),
                ),
            )
        })
        .collect();
    let e = plot(
        ins,
        &[
            ("x", Value::from(vec!["m_r"])),
            ("x_ticks", Value::from(vec!["a"])),
        ],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("x_ticks names 1 values") && e.contains("m_r=30"),
        "{e}"
    );
}

#[test]
fn missing_metric_or_binding_names_the_instance() {
    let ins = vec![(
        "y",
        up(
            "ev",
            "qa",
            &[("ratio", Value::Float(0.1))],
            json!({"loss": 1.0}),
        ),
    )];
    let e = plot(ins, &[("x", Value::from(vec!["ratio"]))])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no metric `test_loss`") && e.contains("ev@ratio=0.1") && e.contains("loss"),
        "{e}"
    );
    let ins = vec![("y", up("ev", "qa", &[], json!({"test_loss": 1.0})))];
    let e = plot(ins, &[("x", Value::from(vec!["ratio"]))])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none of the x bindings"), "{e}");
    let ins = vec![(
        "y",
        up(
            "ev",
            "qa",
            &[("ratio", Value::Float(0.1))],
            json!({"test_loss": "NaN"}),
        ),
    )];
    let e = plot(ins, &[("x", Value::from(vec!["ratio"]))])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a finite number"), "{e}");
}

#[test]
fn histogram_of_answer_lengths_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let real = data_upstream(
        dir.path(),
        "qa_real",
        &[
            example("a", Task::Qa, Some("g"), "Who?", "Tom"),
            example("b", Task::Qa, Some("g"), "Where?", "In the old town"),
        ],
    );
    let gen = data_upstream(
        dir.path(),
        "qa_levels@m_r=30",
        &[example(
            "c",
            Task::Qa,
            Some("g"),
            "Why?",
            "Because he was tired",
        )],
    );
    let story = data_upstream(
        dir.path(),
        "stories_real",
        &[example(
            "d",
            Task::Story,
            None,
            "A B C D.",
            "He left the house early",
        )],
    );
    let ran = plot(
        vec![("y", real), ("y", gen), ("y", story)],
        &[
            ("style", Value::from("histogram")),
            ("bins", Value::Int(4)),
            ("series_names", Value::from(vec!["real", "Gen-D0"])),
        ],
    )
    .unwrap();
    assert_eq!(ran.metric("panels"), &json!(2));
    let rows = csv_rows(&ran);
    let labels: Vec<&str> = rows
        .iter()
        .filter(|r| r[0].starts_with("Question"))
        .map(|r| r[1].as_str())
        .collect();
    assert!(labels.contains(&"real") && labels.contains(&"Gen-D0"));
    // Densities integrate to one per sample over the panel's shared bins
    // (1 to 4 words in 4 bins).
    let real: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r[0].starts_with("Question") && r[1] == "real")
        .map(|r| (r[3].parse().unwrap(), r[4].parse().unwrap()))
        .collect();
    assert_eq!(real.len(), 4);
    let width = real[1].0 - real[0].0;
    assert!((width - 0.75).abs() < 1e-12, "{width}");
    let real_mass: f64 = real.iter().map(|p| p.1 * width).sum();
    assert!((real_mass - 1.0).abs() < 1e-9, "{real_mass}");
}

#[test]
fn scatter_reads_points_and_curves_read_loss_curves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("points.csv");
    std::fs::write(
        &path,
        "series,id,x,y\nreal,a,0.5,1.5\n\"gen,D0\",b,-2,3\nreal,c,1,1\n",
    )
    .unwrap();
    let mut tsne = up("tsne_qa", "qa", &[], json!({}));
    tsne.files.insert(POINTS_FILE.into(), path);
    let ran = plot(vec![("y", tsne)], &[("style", Value::from("scatter"))]).unwrap();
    assert_eq!(ran.metric("series"), &json!(2));
    let rows = std::fs::read_to_string(ran.file(CSV_FILE)).unwrap();
    assert!(rows.contains("\"gen,D0\",point,-2,3"), "{rows}");

    let train = up(
        "train",
        "story",
        &[("ratio", Value::Float(0.2))],
        json!({"loss_curve": [[1, 3.0], [2, 2.5]]}),
    );
    let ran = plot(vec![("y", train)], &[("style", Value::from("curves"))]).unwrap();
    assert!(std::fs::read_to_string(ran.file(CSV_FILE))
        .unwrap()
        .contains(",left,2,2.5"));
    let bad = up("ev", "story", &[], json!({"test_loss": 1.0}));
    let e = plot(vec![("y", bad)], &[("style", Value::from("curves"))])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no `loss_curve`"), "{e}");
}

/// Loss at three ratios over three seeds (values `base + ratio + offset` for
/// offsets -0.1, 0, 0.1), 64 test examples each; a reference over the same
/// seeds. By hand: each point's mean is `base + ratio`, its sd 0.1, and its
/// interval `mean -+ 4.302652729911275 * 0.1 / sqrt(3)` (t(0.975, 2), from
/// tables).
#[test]
fn seeds_average_into_points_with_t_intervals_and_a_footer() {
    let mut ins = Vec::new();
    for (s, offset) in [(1, -0.1), (2, 0.0), (3, 0.1)] {
        for ratio in [0.0, 0.5, 1.0] {
            ins.push((
                "y",
                up(
                    "ev",
                    "story",
                    &[("ratio", Value::Float(ratio)), ("seed", Value::Int(s))],
                    json!({"test_loss": 3.0 + ratio + offset, "examples": 64}),
                ),
            ));
        }
        ins.push((
            "reference",
            up(
                "real",
                "story",
                &[("seed", Value::Int(s))],
                json!({"test_loss": 2.5 + offset, "examples": 64}),
            ),
        ));
    }
    let ran = plot(ins, &[("x", Value::from(vec!["ratio"]))]).unwrap();
    // To look at it: FLOW_PLOT_KEEP=/some/dir cargo test -p flow-stages seeds_average
    if let Some(keep) = std::env::var_os("FLOW_PLOT_KEEP") {
        for f in [SVG_FILE, PNG_FILE] {
            std::fs::copy(ran.file(f), std::path::Path::new(&keep).join(format!("seeds-{f}")))
                .unwrap();
        }
    }
    let text = std::fs::read_to_string(ran.file(CSV_FILE)).unwrap();
    assert!(text.starts_with("panel,series,axis,x,y,ci_low,ci_high\n"));
    let rows = csv_rows(&ran);
    let half = 4.302_652_729_911_275 * 0.1 / 3f64.sqrt();
    let num = |s: &str| s.parse::<f64>().unwrap();
    let left: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "left").collect();
    assert_eq!(left.len(), 3, "one point per ratio: {rows:?}");
    for (r, ratio) in left.iter().zip([0.0, 0.5, 1.0]) {
        let mean = 3.0 + ratio;
        assert_eq!(num(&r[3]), ratio);
        assert!((num(&r[4]) - mean).abs() < 1e-12, "{r:?}");
        assert!((num(&r[5]) - (mean - half)).abs() < 1e-9, "{r:?}");
        assert!((num(&r[6]) - (mean + half)).abs() < 1e-9, "{r:?}");
    }
    let reference: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "reference").collect();
    assert_eq!(reference.len(), 1);
    assert!((num(&reference[0][4]) - 2.5).abs() < 1e-12);
    assert!((num(&reference[0][5]) - (2.5 - half)).abs() < 1e-9);

    let svg = std::fs::read_to_string(ran.file(SVG_FILE)).unwrap();
    assert!(
        svg.contains(
            "3 seeds per point, 64 test examples; bars and bands: 95% CI (Student t over seeds)"
        ),
        "no footer"
    );
    // Three error bars (stem and two caps each) in the series' colour.
    let bars = svg
        .lines()
        .filter(|l| l.trim_start().starts_with("<line") && l.contains("#0072B2"))
        .count();
    assert_eq!(bars, 9);
    assert!(std::fs::metadata(ran.file(PNG_FILE)).unwrap().len() > 10_000);
}

/// One seed with each instance's `per_example.csv` upstream: the interval is
/// a bootstrap over its test examples, and the footer says so; an instance
/// without the file gets no interval.
#[test]
fn one_seed_bootstraps_the_test_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut ins = Vec::new();
    for (k, ratio) in [0.0, 0.5, 1.0].into_iter().enumerate() {
        let rows: Vec<ExampleLoss> = (0..30)
            .map(|i| ExampleLoss {
                id: format!("s{i}"),
                loss: 3.0 + ratio + ((i * 7 + k) % 11) as f64 * 0.1,
                tokens: 2 + i % 4,
            })
            .collect();
        let mean = per_example::token_weighted_mean(&rows);
        let mut u = up(
            "ev",
            "story",
            &[("ratio", Value::Float(ratio))],
            json!({"test_loss": mean, "examples": 30}),
        );
        if ratio < 1.0 {
            let path = dir.path().join(format!("{k}.csv"));
            per_example::write(&path, &rows).unwrap();
            u.files.insert(PER_EXAMPLE_FILE.into(), path);
        }
        ins.push(("y", u));
    }
    let run_plot = |ins: Vec<(&str, Upstream)>| {
        plot(ins, &[("x", Value::from(vec!["ratio"]))]).unwrap()
    };
    let ran = run_plot(ins.clone());
    let rows = csv_rows(&ran);
    for r in &rows[..2] {
        let (y, lo, hi): (f64, f64, f64) =
            (r[4].parse().unwrap(), r[5].parse().unwrap(), r[6].parse().unwrap());
        assert!(lo < y && y < hi && hi - lo < 0.5, "{r:?}");
    }
    assert_eq!((rows[2][5].as_str(), rows[2][6].as_str()), ("", ""));
    let svg = std::fs::read_to_string(ran.file(SVG_FILE)).unwrap();
    assert!(
        svg.contains(
            "1 seed per point, 30 test examples; bars: 95% CI (bootstrap over test examples, \
             4000 resamples)"
        ),
        "footer"
    );
    // Seeded: the same figure data again.
    let again = run_plot(ins);
    assert_eq!(
        std::fs::read_to_string(again.file(CSV_FILE)).unwrap(),
        std::fs::read_to_string(ran.file(CSV_FILE)).unwrap()
    );
}

#[test]
fn without_seeds_or_examples_there_is_no_interval_and_no_footer() {
    let ins = [0.0, 1.0]
        .into_iter()
        .map(|r| {
            (
                "y",
                up(
                    "ev",
                    "qa",
                    &[("ratio", Value::Float(r))],
                    json!({"test_loss": 1.0 + r}),
                ),
            )
        })
        .collect();
    let ran = plot(ins, &[("x", Value::from(vec!["ratio"]))]).unwrap();
    for r in csv_rows(&ran) {
        assert_eq!((r[5].as_str(), r[6].as_str()), ("", ""), "{r:?}");
    }
    let svg = std::fs::read_to_string(ran.file(SVG_FILE)).unwrap();
    assert!(!svg.contains("95% CI"));
}
