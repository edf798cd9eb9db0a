//! `kill -9` during `generate_stories`, then a rerun: no finished request is lost
//! (every journal line written before the kill is still there and reused) and none is
//! generated twice (no key appears twice; the rerun generates exactly the missing ones).
//! Runs the real SmolLM2-135M-Instruct (resolved from FLOW_MODELS_DIR, an earlier
//! download, or PyPI).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Project;

const MANIFEST: &str = r#"
[flow]
name = "gen-resume"
seed = 3

[models.smollm2]
name = "smollm2-135m-instruct"
format = "gguf"

[generators.local]
backend = "local"
model = "smollm2"
max_tokens = 48
# Two stories at a time, so the kill lands with some finished and some not
# (all six together finish within a few milliseconds of each other).
max_batch = 2

[stages.real]
kind = "source"
dataset = "rocstories"
limit = 20

[stages.pool]
kind = "topics"
generator = "local"
count = 4
per_request = 6
max_tokens = 48
min_yield = 0.0

[stages.stories]
kind = "generate_stories"
generator = "local"
seeds = "real"
topics = "pool"
topic_count = 2
count = 6
seed_stories = 1
max_tokens = 40
max_attempts = 1
min_yield = 0.0
"#;

/// key -> completion JSON, and the number of complete lines.
fn journal(p: &Project) -> (BTreeMap<String, String>, usize) {
    // The base and every writer's segment; a newline after each file keeps a torn last
    // line from running into the next file.
    let dir = p.cache_dir().join("journal/generate");
    let text: String = flow_generate::Journal::files(&dir)
        .unwrap_or_default()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default() + "\n")
        .collect();
    let mut map = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a torn last line
        };
        lines += 1;
        let key = v["key"].as_str().unwrap().to_string();
        assert!(
            map.insert(key.clone(), v["completion"].to_string())
                .is_none(),
            "request {key} was generated twice"
        );
    }
    (map, lines)
}

fn metric(p: &Project, kind: &str, name: &str) -> u64 {
    p.records()
        .values()
        .map(|r| r.record())
        .filter(|r| r.key_fields.kind == kind)
        .map(|r| r.metrics[name].as_u64().unwrap())
        .sum()
}

#[test]
fn kill_9_during_generate_stories_loses_nothing_and_repeats_nothing() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(MANIFEST);

    let mut child = p.spawn_run(&[]);
    let start = Instant::now();
    // Wait until `stories` has journaled at least one request (the topics come first).
    loop {
        let (_, lines) = journal(&p);
        let stories_started = p
            .records()
            .values()
            .any(|r| r.record().key_fields.kind == "topics");
        if stories_started && lines >= 2 + metric(&p, "topics", "generated") as usize {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("flow run ended before it could be killed: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (before, _) = journal(&p);
    assert!(!before.is_empty());

    let r = p.run_ok(&[]);
    assert!(r.ran_names.contains("stories"), "{}", r.out.show());
    let (after, lines) = journal(&p);
    assert_eq!(lines, after.len());
    for (k, v) in &before {
        assert_eq!(
            after.get(k),
            Some(v),
            "a finished request was lost or changed"
        );
    }
    let generated = metric(&p, "generate_stories", "generated");
    let hits = metric(&p, "generate_stories", "journal_hits");
    assert_eq!(
        generated as usize,
        after.len() - before.len(),
        "the rerun generated only what was missing"
    );
    assert!(hits >= 1, "the rerun reused the journaled stories");
    let asked = metric(&p, "generate_stories", "asked");
    assert_eq!(asked, 6);
}
