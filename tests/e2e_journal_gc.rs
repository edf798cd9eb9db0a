//! `flow gc` compacts the generation journal (`<cache>/journal/generate/journal.jsonl`):
//! a dry run only counts what would go; a real one keeps every readable answer (the last
//! per key) and drops unreadable lines; a journal open in another process is left alone.

mod common;

use std::path::Path;

use common::Project;
use flow_generate::{Completion, Journal};

fn line(key: &str, text: &str) -> String {
    format!(
        "{{\"key\":\"{key}\",\"completion\":{{\"text\":\"{text}\",\"prompt_tokens\":3,\
         \"completion_tokens\":4,\"finish\":\"eos\"}}}}\n"
    )
}

fn gc(p: &Project, dry: bool) -> String {
    let args: &[&str] = if dry {
        &["gc", "--dry-run", "--grace", "0"]
    } else {
        &["gc", "--grace", "0"]
    };
    let out = p.flow(args);
    assert_eq!(out.code, Some(0), "{}", out.show());
    out.stdout
}

/// Key -> answer text, as a reader of the journal sees it (and its unreadable lines).
fn answers(dir: &Path) -> (Vec<(String, String)>, u64) {
    let j = Journal::open(dir).expect("open the journal");
    let mut out: Vec<(String, String)> = ["a", "b", "c", "d"]
        .iter()
        .filter_map(|k| {
            j.get(k)
                .map(|c: &Completion| (k.to_string(), c.text.clone()))
        })
        .collect();
    out.sort();
    (out, j.skipped())
}

#[test]
fn gc_compacts_the_generation_journal() {
    // No data needed: gc only reads the cache.
    let empty = tempfile::tempdir().unwrap();
    let p = Project::new(empty.path());
    drop(p.open_cache());
    let dir = p.cache_dir().join("journal").join("generate");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.jsonl");
    let mut bytes = Vec::new();
    bytes.extend(line("a", "old a").as_bytes());
    bytes.extend(line("b", "b").as_bytes());
    bytes.extend(b"{\"key\":\"x\",\"completion\":\"\xff\xfe\"}\n"); // not UTF-8
    bytes.extend(b"garbage\n"); // not JSON
    bytes.extend(line("a", "new a").as_bytes());
    bytes.extend(line("c", "c").as_bytes());
    bytes.extend(b"{\"key\":\"d\",\"compl"); // torn
    std::fs::write(&path, &bytes).unwrap();
    let (before, skipped) = answers(&dir);
    assert_eq!(skipped, 3);
    assert_eq!(
        before,
        [("a", "new a"), ("b", "b"), ("c", "c")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec()
    );
    // Opening fenced the torn line off with a newline.
    let bytes = std::fs::read(&path).unwrap();

    let out = gc(&p, true);
    assert!(
        out.contains("would drop 4 lines (3 unreadable, 1 superseded); kept 3 answers"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a dry run changes nothing"
    );

    // Open in another process (here: this one): left alone.
    let open = Journal::open(&dir).unwrap();
    let out = gc(&p, false);
    assert!(out.contains("in use, not compacted"), "{out}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    drop(open);

    let out = gc(&p, false);
    assert!(
        out.contains("dropped 4 lines (3 unreadable, 1 superseded); kept 3 answers"),
        "{out}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(answers(&dir), (before, 0));

    let out = gc(&p, false);
    assert!(out.contains("dropped 0 lines"), "{out}");
}
