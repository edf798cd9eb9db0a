//! Distinct-5 over every ROCStories story: flow's implementation against a
//! straightforward Python one (`bench/distinct_baseline.py`), same data, same
//! run. Both time the computation from the (input, target) texts to the value
//! (tokenizing included), not loading the file.
//!
//! `cargo bench -p flow-stages --bench distinct`; the data dir is
//! `FLOW_DATA_DIR` or `shared/data` beside the workspace; `PYTHON` picks the
//! interpreter (default `python3`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flow_stages::data::rocstories;
use flow_stages::dataset::Example;
use flow_stages::score::distinct::{distinct, NgramCount};
use flow_stages::score::tokenize::{Corpus, Tokenizer};

const N: usize = 5;
const RUNS: usize = 21;

fn main() {
    let dir = std::env::var_os("FLOW_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let file = dir.join(rocstories::MIRROR_FILE);
    if !file.is_file() {
        eprintln!("SKIPPED: no stories at {} (set FLOW_DATA_DIR)", file.display());
        return;
    }
    let stories = rocstories::read_mirror(&file).expect("read stories");
    let examples: Vec<Example> = stories.iter().map(|s| s.to_example()).collect();

    let compute = || {
        let corpus = Corpus::build(&examples, |e| [&e.input, &e.target], Tokenizer::Whitespace);
        let all: Vec<usize> = (0..corpus.len()).collect();
        distinct(&corpus, &all, N)
    };
    if std::env::var_os("PHASES").is_some() {
        for _ in 0..5 {
            let f0 = minflt();
            let t = Instant::now();
            let corpus = Corpus::build(&examples, |e| [&e.input, &e.target], Tokenizer::Whitespace);
            let t1 = t.elapsed();
            let f1 = minflt();
            let all: Vec<usize> = (0..corpus.len()).collect();
            let c = distinct(&corpus, &all, N);
            let t2 = t.elapsed();
            let f2 = minflt();
            eprintln!("build {:?} ({} faults) distinct {:?} ({} faults) vocab {} {:?}", t1, f1 - f0, t2 - t1, f2 - f1, corpus.vocab_size, c);
        }
    }
    if std::env::var_os("CPU").is_some() {
        let (c0, t0) = (cpu_ticks(), Instant::now());
        for _ in 0..20 {
            black_box(Corpus::build(&examples, |e| [&e.input, &e.target], Tokenizer::Whitespace));
        }
        let (c1, t1) = (cpu_ticks(), t0.elapsed());
        let corpus = Corpus::build(&examples, |e| [&e.input, &e.target], Tokenizer::Whitespace);
        let all: Vec<usize> = (0..corpus.len()).collect();
        for _ in 0..20 {
            black_box(distinct(&corpus, &all, N));
        }
        let (c2, t2) = (cpu_ticks(), t0.elapsed());
        eprintln!("build cpu {} ms wall {:?}; distinct cpu {} ms wall {:?}", (c1 - c0) * 10 / 20, t1 / 20, (c2 - c1) * 10 / 20, (t2 - t1) / 20);
    }
    let mut result = compute(); // warm-up
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            result = black_box(compute());
            start.elapsed()
        })
        .collect();
    times.sort();
    let rust = times[RUNS / 2].as_secs_f64();

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

    assert_eq!(result, py_count, "n-gram counts differ from the Python baseline");
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
        "  rust    {:8.2} ms  (median of {RUNS}, {} threads; min {:.2} ms)",
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

fn minflt() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}
