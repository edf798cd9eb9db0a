//! Engine overhead on a generated manifest of 1,000 stage instances:
//! `flow status` (goal < 50 ms) and a no-op `flow run` (goal < 100 ms),
//! measured side by side with `flow check` (parse + validate + plan only) and
//! the bare cost of starting the binary (`flow --version`).
//!
//! Run: `cargo bench --bench engine` (needs the data mirror: FLOW_DATA_DIR or
//! ../shared/data).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 15;

fn data_dir() -> Option<PathBuf> {
    std::env::var_os("FLOW_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")))
        .filter(|p| p.join("rocstories/stories.jsonl").is_file())
}

/// 10 sources x 100 mix ratios = 1,000 mix instances (+ 10 sources + 1 real pool).
fn manifest() -> String {
    let limits: Vec<String> = (1..=10).map(|i| (i * 20).to_string()).collect();
    let ratios: Vec<String> = (0..100)
        .map(|i| format!("{:.2}", i as f64 / 100.0))
        .collect();
    format!(
        "[flow]\nname = \"bench1000\"\nseed = 1\n\n\
         [stages.pool]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"test\"\nlimit = 400\n\n\
         [stages.real]\nkind = \"source\"\ndataset = \"rocstories\"\nlimit = [{}]\n\n\
         [stages.mix]\nkind = \"mix\"\nreal = \"real\"\ngenerated = \"pool\"\nratio = [{}]\n",
        limits.join(", "),
        ratios.join(", ")
    )
}

fn flow(dir: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(args)
        .current_dir(dir)
        .env("FLOW_DATA_DIR", data)
        .env_remove("RUST_LOG")
        .output()
        .expect("flow runs");
    assert!(
        out.status.success(),
        "flow {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn median_ms(dir: &Path, data: &Path, args: &[&str]) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            flow(dir, data, args);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn main() {
    let Some(data) = data_dir() else {
        eprintln!("skipped: no data mirror (set FLOW_DATA_DIR)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
    std::fs::write(dir.path().join("m.toml"), manifest()).expect("write");
    let d = dir.path();
    let first = Instant::now();
    flow(d, &data, &["run", "m.toml", "--no-progress"]);
    eprintln!(
        "first run (computes 1,011 instances): {:.1} s",
        first.elapsed().as_secs_f64()
    );
    let status = flow(d, &data, &["status", "m.toml", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let n = rows.as_array().map_or(0, Vec::len);
    let fresh = rows
        .as_array()
        .map_or(0, |r| r.iter().filter(|x| x["state"] == "fresh").count());
    assert_eq!(n, fresh, "every instance must be fresh before timing");

    let start = median_ms(d, &data, &["--version"]);
    let check = median_ms(d, &data, &["check", "m.toml"]);
    let st = median_ms(d, &data, &["status", "m.toml"]);
    let noop = median_ms(d, &data, &["run", "m.toml", "--no-progress"]);
    println!("instances: {n}");
    println!("process start (flow --version): {start:7.1} ms");
    println!("flow check (parse+plan):        {check:7.1} ms");
    println!(
        "flow status:                    {st:7.1} ms   goal 50 ms  -> {:.2}x of goal",
        st / 50.0
    );
    println!(
        "flow run (no-op):               {noop:7.1} ms   goal 100 ms -> {:.2}x of goal",
        noop / 100.0
    );
}
