//! `kill -9` at seeded random points of a run, then a rerun to completion: the cache
//! verifies, nothing finished before a kill is recomputed, and the results equal those of an
//! uninterrupted run in a fresh cache.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{assert_all_fresh, assert_records_untouched, Pipeline, Project, RecordFile, Rng};

const KILLS: usize = 8;

/// Enough instances that kills land mid-run: 6 real samples, `gen`, and (as far as the
/// kinds exist) 18 mixes, 18 scores and a table.
fn pipeline() -> Pipeline {
    let mut p = Pipeline::new("crash");
    p.real_limits = vec![40, 60, 80, 100, 120, 140];
    p.gen_limit = 120;
    p
}

/// Temporary files an atomic write leaves behind when killed between write and rename
/// (`name.tmp<pid>`); not results.
fn is_temp_leftover(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(|e| e.strip_prefix("tmp"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

fn results_without_leftovers(p: &Project) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut results = p.results();
    let leftovers: Vec<PathBuf> = results
        .keys()
        .filter(|k| is_temp_leftover(k))
        .cloned()
        .collect();
    for k in leftovers {
        eprintln!(
            "note: a killed run left the temporary file results/{} in the results folder",
            k.display()
        );
        results.remove(&k);
    }
    results
}

/// SIGKILL via kill(1), then reap (Child::kill, also SIGKILL, in case kill(1) is missing).
fn kill_9(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Checks the cache after a kill and returns the records now present.
fn check_after_kill(
    p: &Project,
    seen: &mut BTreeMap<String, RecordFile>,
    context: &str,
) -> BTreeMap<String, RecordFile> {
    p.verify_cache();
    let now = p.records();
    // A record written by a killed run is whole and must be reused, never recomputed.
    assert_records_untouched(seen, &now, &BTreeSet::new(), context);
    for (k, r) in &now {
        seen.entry(k.clone()).or_insert_with(|| r.clone());
    }
    now
}

#[test]
fn kill_9_at_random_points_then_rerun_gives_the_uninterrupted_results() {
    let data = require_data!();

    // The uninterrupted run, in a fresh cache.
    let reference = Project::new(&data);
    let pipe = pipeline().resolve(&reference);
    let r = reference.run_ok(&[]);
    let n = r.ran;
    assert!(n >= 7, "{}", r.out.show());
    assert_all_fresh(&reference.status(), "reference");
    let want_outputs = reference.outputs();
    let want_results = reference.results();
    assert_eq!(want_outputs.len(), n);
    assert!(want_results.keys().any(|k| k.ends_with("metrics.json")));

    // The killed runs, on another cache.
    let p = Project::new(&data);
    p.write_manifest(&pipe.render());
    let mut rng = Rng::new(0x5eed_c0de);
    let mut seen = BTreeMap::new();
    let mut completed_before_kill = 0;
    for i in 0..KILLS {
        // A seeded kill point: once the cache holds `target` records (somewhere between what
        // is done and the end, so every run gets further than the last), plus 0-30 ms. The
        // first kill comes before any record. One stage at a time (-j 1) spreads the points.
        let done = p.records().len();
        let target = if i == 0 {
            0
        } else {
            done + rng.below((n.saturating_sub(done) * 3 / 4) as u64 + 1) as usize
        };
        let delay = rng.below(30);
        let mut child = p.spawn_run(&["-j", "1"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.records().len() < target
            && matches!(child.try_wait(), Ok(None))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay));
        let finished = matches!(child.try_wait(), Ok(Some(_)));
        if !finished {
            kill_9(&mut child);
        } else {
            completed_before_kill += 1;
        }
        let now = check_after_kill(&p, &mut seen, &format!("kill {i}"));
        eprintln!(
            "kill {i} at {target} records + {delay} ms: {} records{}",
            now.len(),
            if finished { " (run had finished)" } else { "" }
        );
    }
    eprintln!("{completed_before_kill} of {KILLS} runs finished before their kill");

    // Rerun to completion.
    let before_final: BTreeSet<String> = p.records().into_keys().collect();
    let last = p.run_ok(&[]);
    assert_eq!(last.ran + last.cached, n, "{}", last.out.show());
    let after = check_after_kill(&p, &mut seen, "final run");
    let rows = p.status();
    assert_all_fresh(&rows, "after the final run");
    // What ran is exactly what no killed run had finished.
    for row in &rows {
        let key = row.key.as_ref().unwrap();
        assert_eq!(
            last.ran_names.contains(&row.instance),
            !before_final.contains(key),
            "{}: ran in the final run = {}, recorded before it = {}",
            row.instance,
            last.ran_names.contains(&row.instance),
            before_final.contains(key)
        );
    }

    // Same keys and outputs as the uninterrupted run; same published results.
    assert_eq!(
        p.outputs(),
        want_outputs,
        "keys and output hashes per instance"
    );
    assert_eq!(
        results_without_leftovers(&p),
        want_results,
        "published results differ from the uninterrupted run's"
    );
    assert!(
        p.cache_dir()
            .join("failures")
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "a killed run recorded a failure"
    );

    // And it is stable: another run does nothing.
    let again = p.run_ok(&[]);
    assert_eq!((again.ran, again.cached), (0, n), "{}", again.out.show());
    assert_records_untouched(&after, &p.records(), &BTreeSet::new(), "run after recovery");
}

/// Ctrl-C (SIGINT) stops a run cleanly: exit 130 (or 0 if it had finished), nothing
/// finished is lost, and the rerun completes it.
#[test]
fn sigint_keeps_finished_stages() {
    let data = require_data!();
    let p = Project::new(&data);
    let _pipe = pipeline().resolve(&p);
    let mut rng = Rng::new(42);
    let mut seen = BTreeMap::new();
    for i in 0..3 {
        let delay = 150 + rng.below(400);
        let child = p.spawn_run_captured(&[]);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("wait for flow run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // None: the signal came before the handler was installed (killed by SIGINT).
        assert!(
            matches!(out.status.code(), Some(0) | Some(130) | None),
            "interrupted run {i}: {:?}\n{stderr}",
            out.status
        );
        if out.status.code() == Some(130) {
            assert!(stderr.contains("interrupted"), "{stderr}");
        }
        check_after_kill(&p, &mut seen, &format!("SIGINT {i} after {delay} ms"));
    }
    let last = p.run_ok(&[]);
    check_after_kill(&p, &mut seen, "run after SIGINTs");
    assert_eq!(last.ran + last.cached, p.status().len());
    assert_all_fresh(&p.status(), "after the run following SIGINTs");
}
