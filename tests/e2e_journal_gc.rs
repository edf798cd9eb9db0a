//! `flow gc` compacts the generation journal (`<cache>/journal/generate/`): the base
//! `journal.jsonl` (an old cache's single file) and one segment per writer. A dry run only
//! counts what would go; a real one merges the base and every finished segment (its writer's
//! process gone, or another host's unchanged for `--grace`) into a new base, keeping every
//! readable answer (the last per key), dropping unreadable lines and deleting the merged
//! segments; a segment whose process still runs is left alone, and still read. A compaction
//! that finds `journal.lock` held leaves the journal alone.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::Project;
use flow_generate::{Completion, Finish, Journal};

/// Set in the child that writes one segment and exits: the journal's folder.
const CHILD: &str = "FLOW_E2E_JOURNAL_GC_CHILD";

fn line(key: &str, text: &str) -> String {
    format!(
        "{{\"key\":\"{key}\",\"completion\":{{\"text\":\"{text}\",\"prompt_tokens\":3,\
         \"completion_tokens\":4,\"finish\":\"eos\"}}}}\n"
    )
}

fn completion(text: &str) -> Completion {
    Completion {
        text: text.into(),
        prompt_tokens: 3,
        completion_tokens: 4,
        finish: Finish::Eos,
    }
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

const KEYS: [&str; 6] = ["a", "b", "c", "d", "e", "live"];

/// Key -> answer text, as a reader of the journal sees it (and its unreadable lines).
fn answers(dir: &Path) -> (Vec<(String, String)>, u64) {
    let j = Journal::open(dir).expect("open the journal");
    let mut out: Vec<(String, String)> = KEYS
        .iter()
        .filter_map(|k| {
            j.get(k)
                .map(|c: &Completion| (k.to_string(), c.text.clone()))
        })
        .collect();
    out.sort();
    (out, j.skipped())
}

/// Every file of the folder (name -> bytes).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    Journal::files(dir)
        .unwrap()
        .into_iter()
        .filter(|p| !p.ends_with("journal.jsonl"))
        .collect()
}

#[test]
fn gc_merges_finished_journal_segments_and_leaves_live_ones() {
    if let Some(dir) = std::env::var_os(CHILD) {
        // Another process (on this host) that answered one request and ended.
        let mut j = Journal::open(Path::new(&dir)).unwrap();
        j.append("e", &completion("e from a process that ended"))
            .unwrap();
        return;
    }
    // No data needed: gc only reads the cache.
    let empty = tempfile::tempdir().unwrap();
    let p = Project::new(empty.path());
    drop(p.open_cache());
    let dir = p.cache_dir().join("journal").join("generate");
    std::fs::create_dir_all(&dir).unwrap();

    // An old cache's single file, now the base.
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
    // A writer in a process that ended.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "gc_merges_finished_journal_segments_and_leaves_live_ones",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    assert!(child.status.success(), "{child:?}");
    let ended = segments(&dir);
    assert_eq!(ended.len(), 1, "the child wrote one segment");
    // Another host's segment (its processes cannot be seen from here): by its age.
    let remote = dir.join("journal.another-host.4242.1-0.jsonl");
    std::fs::write(&remote, line("d", "d from another host")).unwrap();
    File::options()
        .write(true)
        .open(&remote)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    // A writer of this process, running (open in another process than gc).
    let mut live = Journal::open(&dir).unwrap();
    live.append("live", &completion("live")).unwrap();
    let live_segment = live.segment().unwrap().to_path_buf();

    let (before, skipped) = answers(&dir);
    assert_eq!(skipped, 3);
    assert_eq!(
        before,
        [
            ("a", "new a"),
            ("b", "b"),
            ("c", "c"),
            ("d", "d from another host"),
            ("e", "e from a process that ended"),
            ("live", "live"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    );
    // Opening changed nothing (no fence, no file, no lock).
    let untouched = files(&dir);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    let out = gc(&p, true);
    assert!(
        out.contains(
            "would drop 4 lines (3 unreadable, 1 superseded); kept 5 answers; \
             would merge 2 finished segments, left 1 live"
        ),
        "{out}"
    );
    assert_eq!(files(&dir), untouched, "a dry run changes nothing");

    // Another compaction at work: left alone.
    let held = File::create(dir.join("journal.lock")).unwrap();
    held.lock().unwrap();
    let out = gc(&p, false);
    assert!(
        out.contains("another compaction holds it, not compacted"),
        "{out}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(ended[0].exists() && remote.exists());
    drop(held);

    let out = gc(&p, false);
    assert!(
        out.contains(
            "dropped 4 lines (3 unreadable, 1 superseded); kept 5 answers; \
             merged 2 finished segments, left 1 live"
        ),
        "{out}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        !ended[0].exists() && !remote.exists(),
        "merged, then deleted"
    );
    assert_eq!(segments(&dir), std::slice::from_ref(&live_segment));
    assert_eq!(answers(&dir), (before.clone(), 0), "no answer lost");

    // The running writer goes on in its own segment, still read.
    live.append("f", &completion("f")).unwrap();
    assert_eq!(live.segment().unwrap(), live_segment);
    assert_eq!(Journal::open(&dir).unwrap().get("f").unwrap().text, "f");
    let out = gc(&p, false);
    assert!(
        out.contains(
            "dropped 0 lines (0 unreadable, 0 superseded); kept 5 answers; \
             merged 0 finished segments, left 1 live"
        ),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // A torn line in a segment is skipped and counted like one in the base.
    File::options()
        .append(true)
        .open(&live_segment)
        .unwrap()
        .write_all(b"{\"key\":\"g\",\"comp")
        .unwrap();
    assert_eq!(answers(&dir).1, 1);
    drop(live);
}
