//! CI reproduces Fig. 5 at the tiny profile from real data, the real SmolLM2-135M-Instruct
//! (generation and LoRA training, two seeds) and the plot stage: the figure (SVG, PNG), the
//! CSV behind it, the table, its summary over seeds and the findings with their verdicts
//! exist with finite values, and an immediate second run executes nothing.

mod common;

use common::Project;

const FIG5: &str = include_str!("../manifests/fig5.toml");

/// The fields of one CSV line (RFC 4180 quotes: instance names hold commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                out.last_mut().unwrap().push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn numbers(csv: &str, column: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let header = fields(lines.next().unwrap_or_default());
    let i = header
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no column `{column}` in {header:?}"));
    lines
        .filter_map(|l| fields(l).get(i).filter(|c| !c.is_empty()).cloned())
        .map(|c| c.parse::<f64>().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn fig5_tiny_reproduces_and_a_second_run_executes_nothing() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(FIG5);
    common::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/common"),
        &p.root.join("common"),
    );
    let first = p.run_ok(&["--profile", "tiny"]);
    assert!(first.ran_names.contains("fig5"), "{}", first.out.show());

    let fig = p.results_dir().join("fig5/fig5");
    let png = std::fs::read(fig.join("figure.png")).expect("figure.png");
    assert_eq!(&png[1..4], b"PNG");
    let svg = std::fs::read_to_string(fig.join("figure.svg")).expect("figure.svg");
    assert!(svg.contains("Question answering") && svg.contains("Story completion"));
    let csv = std::fs::read_to_string(fig.join("figure.csv")).expect("figure.csv");
    let ys = numbers(&csv, "y");
    // Both panels: 4 ratios of test loss and of diversity each.
    assert_eq!(ys.len(), 16, "{csv}");
    assert!(ys.iter().all(|v| v.is_finite()), "{csv}");

    let table = std::fs::read_to_string(p.results_dir().join("fig5/fig5_table/table.csv"))
        .expect("table.csv");
    let losses = numbers(&table, "test_loss");
    // 4 ratios x 2 seeds x 2 tasks.
    assert_eq!(losses.len(), 16, "{table}");
    assert!(losses.iter().all(|v| v.is_finite() && *v > 0.0), "{table}");

    // Two seeds per training: the summary has a mean and a Student-t interval per group.
    let summary = std::fs::read_to_string(p.results_dir().join("fig5/fig5_table/summary.csv"))
        .expect("summary.csv");
    let means = numbers(&summary, "test_loss_mean");
    assert_eq!(means.len(), 8, "{summary}");
    for column in ["test_loss_mean", "test_loss_ci_low", "test_loss_ci_high"] {
        let values = numbers(&summary, column);
        assert!(values.iter().all(|v| v.is_finite()), "{column}: {summary}");
    }
    assert!(numbers(&summary, "n").contains(&2.0), "{summary}");

    let findings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.results_dir().join("fig5/fig5_findings/findings.json"))
            .expect("findings.json"),
    )
    .expect("findings.json is JSON");
    let list = findings["findings"].as_array().expect("a list of findings");
    assert_eq!(list.len(), 2, "{findings}");
    for f in list {
        let verdict = f["verdict"].as_str().unwrap_or_default();
        assert!(
            ["agrees", "disagrees", "inconclusive"].contains(&verdict),
            "{f}"
        );
        let results = f["results"].as_array().expect("results");
        assert!(!results.is_empty(), "{f}");
        for r in results {
            let value = r
                .get("estimate")
                .or_else(|| r.get("rho"))
                .and_then(|v| v.as_f64());
            assert!(value.is_some_and(f64::is_finite), "{r}");
        }
    }

    let second = p.run_ok(&["--profile", "tiny"]);
    assert!(
        second.ran_names.is_empty(),
        "a second run executed {:?}",
        second.ran_names
    );
}
