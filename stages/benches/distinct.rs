//! Distinct-5 over every ROCStories story: flow's implementation against a
//! straightforward Python one (`bench/distinct_baseline.py`), same data, same
//! run. Both time the computation from the (input, target) texts to the value
//! (tokenizing included), not loading the file.
//!
//! `cargo bench -p flow-stages --bench distinct`; the data dir is
//! `FLOW_DATA_DIR` or `shared/data` beside the workspace; `PYTHON` picks the
//! interpreter (default `python3`), `BENCH_RUNS` the number of timed Rust runs
//! (default 21).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flow_stages::contracts::dataset::Example;
use flow_stages::kinds::score::distinct::{distinct, NgramCount};
use flow_stages::kinds::score::tokenize::{Corpus, Tokenizer};
use flow_stages::toolkit::corpora::rocstories;

const N: usize = 5;

fn main() {
    let dir = std::env::var_os("FLOW_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let file = dir.join(rocstories::MIRROR_FILE);
    if !file.is_file() {
        let what = format!(
            "no stories at {} (set FLOW_DATA_DIR to a copy of shared/data)",
            file.display()
        );
        // Where the data must be there (the tests' rule), a failure.
        if flow_testkit::data_required() {
            panic!("missing bench input: {what} (FLOW_REQUIRE_DATA or CI is set)");
        }
        eprintln!("SKIPPED: {what}");
        return;
    }
    let stories = rocstories::read_mirror(&file).expect("read stories");
    let examples: Vec<Example> = stories.iter().map(|s| s.to_example()).collect();

    let compute = || {
        let corpus = Corpus::build(&examples, |e| [&e.input, &e.target], Tokenizer::Whitespace);
        let all: Vec<usize> = (0..corpus.len()).collect();
        distinct(&corpus, &all, N)
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21)
        .max(1);
    let mut result = compute(); // warm-up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            result = black_box(compute());
            start.elapsed()
        })
        .collect();
    times.sort();
    let rust = times[runs / 2].as_secs_f64();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/distinct_baseline.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .arg(&script)
        .arg("--data")
        .arg(&dir)
        .arg("--n")
        .arg(N.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "python baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).expect("baseline JSON");
    let py_value = py["value"].as_f64().expect("value");
    let py_seconds = py["seconds"].as_f64().expect("seconds");
    let py_count = NgramCount {
        unique: py["unique"].as_u64().expect("unique"),
        total: py["total"].as_u64().expect("total"),
    };

    assert_eq!(
        result, py_count,
        "n-gram counts differ from the Python baseline"
    );
    assert!(
        (result.value() - py_value).abs() <= 1e-12,
        "Distinct-{N}: rust {} vs python {py_value}",
        result.value()
    );
    println!("Distinct-{N} over {} ROCStories stories", examples.len());
    println!(
        "  value   {:.12} ({} unique of {} {N}-grams), equal to Python's",
        result.value(),
        result.unique,
        result.total
    );
    println!(
        "  rust    {:8.2} ms  (median of {runs}, {} threads; min {:.2} ms)",
        rust * 1e3,
        rayon::current_num_threads(),
        times[0].as_secs_f64() * 1e3
    );
    println!(
        "  python  {:8.2} ms  (median of 3, {})",
        py_seconds * 1e3,
        py["python"].as_str().unwrap_or("?")
    );
    println!("  speedup {:8.1}x", py_seconds / rust);
}
