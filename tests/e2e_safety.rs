//! Nothing lost, nothing escapes: what an unlucky or a hostile user meets, through the
//! binary. gc after a crash, gc and status on folders that are not caches, results that
//! would escape or overwrite, corrupt objects behind published files, data edited in place,
//! symlink loops, `--stage` runs and the messages of bad data.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::Project;

/// A chain of quick real stages: sources over ROCStories, scores, a table.
fn manifest(limits: &[u32], results: &str) -> String {
    let limits: Vec<String> = limits.iter().map(u32::to_string).collect();
    format!(
        "[flow]\nname = \"safety\"\nseed = 7\nresults = \"{results}\"\n\n\
         [stages.real]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"train\"\n\
         limit = [{}]\n\n\
         [stages.score]\nkind = \"score\"\ndata = \"real\"\n\n\
         [stages.table]\nkind = \"table\"\nfrom = \"score\"\n",
        limits.join(", ")
    )
}

/// A private copy of the first `lines` stories, to edit without touching the shared data.
fn private_mirror(data: &Path, lines: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rocstories")).unwrap();
    let text = std::fs::read_to_string(data.join("rocstories/stories.jsonl")).unwrap();
    let head: Vec<&str> = text.lines().take(lines).collect();
    std::fs::write(
        dir.path().join("rocstories/stories.jsonl"),
        head.join("\n") + "\n",
    )
    .unwrap();
    dir
}

fn record_files(p: &Project) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(p.cache_dir().join("records"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Item 1: a run killed after some stages finished; `flow gc` must keep all it finished,
/// and the rerun reuses it.
#[test]
fn gc_after_a_kill_keeps_what_the_killed_run_finished() {
    let data = require_data!();
    let p = Project::new(&data);
    let limits: Vec<u32> = (1..=40).map(|i| 500 + i * 37).collect();
    p.write_manifest(&manifest(&limits, "results"));
    let mut child = p.spawn_run(&["-j", "1"]);
    let start = Instant::now();
    while record_files(&p).len() < 4 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let finished = record_files(&p);
    assert!(
        finished.len() >= 4,
        "the run finished too little before the kill"
    );

    let gc = p.flow(&["gc", "--grace", "0"]);
    assert_eq!(gc.code, Some(0), "{}", gc.show());
    let after = record_files(&p);
    for name in &finished {
        assert!(
            after.contains(name),
            "gc removed {name}, finished by the killed run"
        );
    }
    p.verify_cache();
    let rerun = p.run_ok(&["-j", "1"]);
    assert!(
        rerun.cached >= finished.len(),
        "the rerun recomputed what the killed run finished:\n{}",
        rerun.out.show()
    );
}

/// Every path under `root` with its size and mtime.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// Item 2: gc, status and run refuse a non-empty folder that is not a flow cache, and
/// `gc --dry-run` writes nothing.
#[test]
fn folders_that_are_not_caches_are_refused_and_dry_runs_write_nothing() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(&manifest(&[20], "results"));
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("tmp")).unwrap();
    std::fs::write(home.path().join("tmp/precious.txt"), b"mine").unwrap();
    std::fs::write(home.path().join(".bashrc"), b"mine").unwrap();
    let before = snapshot(home.path());
    let dir = home.path().to_string_lossy().into_owned();
    let m = p.manifest().to_string_lossy().into_owned();
    for args in [
        vec!["gc", "--cache-dir", &dir],
        vec!["gc", "--dry-run", "--cache-dir", &dir],
        vec!["status", &m, "--cache-dir", &dir],
        vec!["run", &m, "--no-progress", "--cache-dir", &dir],
    ] {
        let out = p.flow(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.show());
        assert!(
            out.stderr.contains("is not a flow cache"),
            "{args:?}: {}",
            out.show()
        );
    }
    assert_eq!(
        snapshot(home.path()),
        before,
        "a refused folder was touched"
    );

    // A real cache: the dry run reports, and changes nothing at all.
    p.run_ok(&[]);
    p.write_manifest(&manifest(&[30], "results"));
    let cache_before = snapshot(&p.cache_dir());
    let out = p.flow(&["gc", "--dry-run"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("would remove"), "{}", out.show());
    assert_eq!(snapshot(&p.cache_dir()), cache_before, "gc --dry-run wrote");
}

/// Item 15: `status` writes nothing into the cache (so it works read-only), and a status
/// loop beside gc never fails.
#[test]
fn status_only_reads_and_does_not_race_gc() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(&manifest(&[20, 30], "results"));
    p.run_ok(&[]);
    let _ = std::fs::remove_file(p.cache_dir().join("stat-cache.json"));
    let before = snapshot(&p.cache_dir());
    let out = p.status_text();
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(
        snapshot(&p.cache_dir()),
        before,
        "status wrote into the cache"
    );

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            for _ in 0..15 {
                let out = p.flow(&["gc", "--grace", "0"]);
                assert_eq!(out.code, Some(0), "gc beside status: {}", out.show());
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut runs = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let out = p.status_text();
            assert_eq!(out.code, Some(0), "status beside gc: {}", out.show());
            runs += 1;
        }
        gc.join().unwrap();
        assert!(runs > 0);
    });
}

/// Item 3: results never leave the project, and flow never overwrites a file it did not
/// publish; an absolute folder is taken from the command line only.
#[test]
fn results_stay_in_the_project_and_never_overwrite_a_users_file() {
    let data = require_data!();
    let p = Project::new(&data);
    let m = p.manifest().to_string_lossy().into_owned();
    for bad in ["../../x", "/tmp/flow-escape"] {
        p.write_manifest(&manifest(&[20], bad));
        let out = p.flow(&["check", &m]);
        assert_eq!(out.code, Some(2), "{bad}: {}", out.show());
        assert!(out.stderr.contains("flow.results"), "{bad}: {}", out.show());
    }

    // `results = "."` beside a user's own metrics.json: the run computes and caches, then
    // refuses to publish over it, saying so; the file is untouched.
    std::fs::write(p.root.join("metrics.json"), b"my notes").unwrap();
    p.write_manifest(&manifest(&[20], "."));
    let r = p.run(&[]);
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    assert!(
        r.out.stderr.contains("refusing to overwrite"),
        "{}",
        r.out.show()
    );
    assert_eq!(
        std::fs::read(p.root.join("metrics.json")).unwrap(),
        b"my notes"
    );
    assert_eq!(r.ran, 3, "{}", r.out.show());

    // Once the user's file is gone, flow publishes, and later republishes its own files.
    std::fs::rename(p.root.join("metrics.json"), p.root.join("notes.json")).unwrap();
    let r = p.run_ok(&[]);
    assert_eq!(r.ran, 0);
    assert!(p.root.join("metrics.json").is_file());
    p.write_manifest(&manifest(&[20, 25], "."));
    p.run_ok(&[]);

    // An absolute folder, asked for explicitly.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = p.flow(&[
        "run",
        &m,
        "--no-progress",
        "--results-dir",
        &elsewhere.path().to_string_lossy(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(elsewhere.path().join("table/table.csv").is_file());
}

/// Item 5: a byte flipped in the object behind a published file (size and mtime kept) is
/// seen by `status`, recomputed by `run`, and never republished; `status --verify` rehashes.
#[test]
fn a_corrupt_object_behind_a_published_file_is_not_fresh() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(&manifest(&[20, 30], "results"));
    p.run_ok(&[]);
    let table = p.results_dir().join("table/table.csv");
    let good = std::fs::read(&table).unwrap();
    let hash = blake3::hash(&good).to_hex().to_string();
    let object = p
        .cache_dir()
        .join("objects")
        .join(&hash[..2])
        .join(&hash[2..]);
    flip_a_byte_keeping_size_and_mtime(&object);

    let rows = p.status();
    let row = rows.iter().find(|r| r.instance == "table").unwrap();
    assert_eq!(row.state, "stale", "{row:?}");
    assert!(row.reason.contains("corrupt"), "{row:?}");
    assert_eq!(
        row.reason_code.as_deref(),
        Some("output_corrupt"),
        "{row:?}"
    );
    let m = p.manifest().to_string_lossy().into_owned();
    let out = p.flow(&["status", &m, "--verify"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("corrupt"), "{}", out.show());

    let r = p.run_ok(&[]);
    assert!(r.ran_names.contains("table"), "{}", r.out.show());
    assert_eq!(std::fs::read(&table).unwrap(), good);
    p.verify_cache();
}

/// Dates `path` back (or forward) to `when`, keeping its content.
fn set_mtime(path: &Path, when: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn flip_a_byte_keeping_size_and_mtime(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = meta.modified().unwrap();
    let mut perms = meta.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(path, &bytes).unwrap();
    set_mtime(path, mtime);
}

/// Item 5: an external data file edited in place, keeping size and mtime, is stale at once
/// (the stat cache also compares inode and ctime).
#[test]
fn data_edited_in_place_keeping_size_and_mtime_is_stale() {
    let data = require_data!();
    let mirror = private_mirror(&data, 400);
    let p = Project::new(mirror.path());
    p.write_manifest(&manifest(&[20], "results"));
    let stories = mirror.path().join("rocstories/stories.jsonl");
    // Old enough that its hash is memoized.
    let old = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&stories, old);
    p.run_ok(&[]);
    assert!(p.status().iter().all(|r| r.state == "fresh"));
    // Swap two letters of a story: same size, same mtime.
    let text = std::fs::read_to_string(&stories).unwrap();
    let edited = text.replacen("Rick grew up", "Rick greu wp", 1);
    assert_ne!(edited, text, "the first story changed in the data");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&stories, edited).unwrap();
    set_mtime(&stories, old);
    let rows = p.status();
    let real = rows.iter().find(|r| r.stage == "real").unwrap();
    assert_eq!(real.state, "stale", "{rows:?}");
    assert_eq!(real.reason_code.as_deref(), Some("changed"), "{real:?}");
    assert_eq!(real.changes, ["external"], "{real:?}");
}

/// Item 10: a symlink loop in the results folder hangs neither `run` nor `status`.
#[test]
fn a_symlink_loop_in_the_results_folder_hangs_nothing() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(&manifest(&[20], "results"));
    p.run_ok(&[]);
    std::os::unix::fs::symlink(p.results_dir(), p.results_dir().join("loop")).unwrap();
    std::os::unix::fs::symlink("..", p.results_dir().join("table/up")).unwrap();
    let m = p.manifest().to_string_lossy().into_owned();
    for args in [
        vec!["run", m.as_str(), "--no-progress", "--force", "table"],
        vec!["status", m.as_str()],
    ] {
        let mut child = p
            .command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{args:?} hung on a symlink loop");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{args:?}: {status}");
    }
}

/// Item 17: `run --stage X` keeps the other instances' metrics in metrics.json.
#[test]
fn a_partial_run_keeps_metrics_json_whole() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(&manifest(&[20, 30], "results"));
    p.run_ok(&[]);
    let whole = std::fs::read_to_string(p.results_dir().join("metrics.json")).unwrap();
    let r = p.run_ok(&["--stage", "score@limit=20", "--force", "score@limit=20"]);
    assert_eq!(r.ran, 1, "{}", r.out.show());
    let after = std::fs::read_to_string(p.results_dir().join("metrics.json")).unwrap();
    assert_eq!(after, whole);
    assert!(after.contains("score@limit=30"));
}

/// Item 16: bad data is named with its file and line; an empty file is an error, not a
/// table of zeros; an OS error's cause is printed once.
#[test]
fn bad_data_and_os_errors_are_reported_once_with_their_place() {
    let data = require_data!();
    let mirror = private_mirror(&data, 200);
    let p = Project::new(mirror.path());
    p.write_manifest(&manifest(&[20], "results"));
    let stories = mirror.path().join("rocstories/stories.jsonl");
    let text = std::fs::read(&stories).unwrap();
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    lines[2].insert(10, 0xff);
    std::fs::write(&stories, lines.join(&b'\n')).unwrap();
    let r = p.run(&[]);
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    assert!(r.out.stderr.contains("stories.jsonl:3"), "{}", r.out.show());
    assert!(r.out.stderr.contains("not UTF-8"), "{}", r.out.show());

    std::fs::write(&stories, b"").unwrap();
    let r = p.run(&[]);
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    assert!(
        r.out.stderr.contains("holds no records"),
        "{}",
        r.out.show()
    );

    let out = p.flow(&["status", "no-such-manifest.toml"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        out.show()
    );
}

/// Items 8, 9: numbers past their bounds and plans past the instance limit are refused by
/// `flow check` with a located error, never a panic or an abort.
#[test]
fn huge_numbers_and_plans_are_refused_by_check() {
    let data = require_data!();
    let p = Project::new(&data);
    let m = p.manifest().to_string_lossy().into_owned();
    let cases = [
        (
            "[generators.g]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             model = \"m\"\ntimeout_s = 1e300\n\n\
             [stages.topics]\nkind = \"topics\"\ngenerator = \"g\"\n",
            "timeout_s",
        ),
        (
            "[generators.g]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             model = \"m\"\n\n\
             [stages.topics]\nkind = \"topics\"\ngenerator = \"g\"\ncount = 9223372036854775807\n",
            "stages.topics.count",
        ),
    ];
    for (stages, key) in cases {
        p.write_manifest(&format!("[flow]\nname = \"n\"\n\n{stages}"));
        let out = p.flow(&["check", &m]);
        assert_eq!(out.code, Some(2), "{key}: {}", out.show());
        assert!(out.stderr.contains(key), "{key}: {}", out.show());
        assert!(!out.stderr.contains("panicked"), "{}", out.show());
    }
    // 10^7 instances: refused at once, not after exhausting memory.
    let values: Vec<String> = (1..=216).map(|i| (1000 + i).to_string()).collect();
    let list = values.join(", ");
    p.write_manifest(&format!(
        "[flow]\nname = \"n\"\n\n[stages.real]\nkind = \"source\"\ndataset = \"rocstories\"\n\
         limit = [{list}]\n\n[stages.score]\nkind = \"score\"\ndata = \"real\"\nn = [{}]\n\n\
         [stages.kl]\nkind = \"score\"\ndata = \"score\"\nn = [{}]\n",
        (1..=216)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        (1..=216)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let out = p.flow(&["check", &m]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(out.stderr.contains("max_instances"), "{}", out.show());
}

/// Item 4: fan-out values holding `,` `=` `/` give every instance its own name, its own
/// entry in the refs and its own results folder.
#[test]
fn fan_out_values_never_share_a_name_or_a_folder() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(
        "[flow]\nname = \"names\"\nseed = 7\nresults = \"results\"\n\n\
         [stages.real]\nkind = \"source\"\ndataset = \"rocstories\"\nlimit = 20\n\n\
         [stages.score]\nkind = \"score\"\ndata = \"real\"\n\n\
         [stages.table]\nkind = \"table\"\nfrom = \"score\"\n\
         group_by = [[\"x/y\"], [\"x_y\"], [\"a,group_by=b\"], [\"a\"]]\n",
    );
    let r = p.run_ok(&[]);
    assert_eq!(r.ran, 6, "{}", r.out.show());
    let tables: Vec<_> = p
        .status()
        .into_iter()
        .filter(|row| row.stage == "table")
        .collect();
    let names: std::collections::BTreeSet<&str> =
        tables.iter().map(|r| r.instance.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(tables.iter().all(|r| r.state == "fresh"), "{tables:?}");
    let folders: Vec<_> = std::fs::read_dir(p.results_dir().join("table"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("table.csv").is_file())
        .collect();
    assert_eq!(folders.len(), 4);
}
