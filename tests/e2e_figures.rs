//! CI reproduces Fig. 5 at the tiny profile from real data, the real SmolLM2-135M-Instruct
//! (generation and LoRA training) and the plot stage: the figure (SVG, PNG), the CSV behind
//! it and the table exist with finite values, and an immediate second run executes nothing.

mod common;

use common::Project;

const FIG5: &str = include_str!("../manifests/fig5.toml");

fn numbers(csv: &str, column: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let i = header
        .iter()
        .position(|c| *c == column)
        .unwrap_or_else(|| panic!("no column `{column}` in {header:?}"));
    lines
        .filter_map(|l| {
            l.split(',')
                .nth(i)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
        })
        .map(|c| c.parse::<f64>().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn fig5_tiny_reproduces_and_a_second_run_executes_nothing() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(FIG5);
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
    assert_eq!(losses.len(), 8, "{table}");
    assert!(losses.iter().all(|v| v.is_finite() && *v > 0.0), "{table}");

    let second = p.run_ok(&["--profile", "tiny"]);
    assert!(
        second.ran_names.is_empty(),
        "a second run executed {:?}",
        second.ran_names
    );
}
