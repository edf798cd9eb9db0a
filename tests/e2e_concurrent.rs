//! Four `flow run`s of one manifest at once on one cache: all succeed, nothing is corrupt,
//! every key is computed once, and the results equal a single run's.

mod common;

use std::collections::BTreeSet;

use common::{assert_all_fresh, Pipeline, Project};

const RUNS: usize = 4;

#[test]
fn four_concurrent_runs_share_one_cache_safely() {
    let data = require_data!();

    // A single run, in a cache of its own.
    let single = Project::new(&data);
    let pipe = Pipeline::new("concurrent").resolve(&single);
    let r = single.run_ok(&[]);
    let n = r.ran;
    let want_outputs = single.outputs();
    let want_results = single.results();
    assert_eq!(want_outputs.len(), n);

    // Four at once, on another.
    let p = Project::new(&data);
    p.write_manifest(&pipe.render());
    let children: Vec<_> = (0..RUNS).map(|_| p.spawn_run_captured(&[])).collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for flow run"))
        .collect();
    let mut ran_total = 0;
    let mut ran_names = BTreeSet::new();
    for (i, o) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(0),
            "concurrent run {i} failed:\n{stdout}\n{stderr}"
        );
        let summary = stdout
            .lines()
            .find(|l| l.contains(" ran, "))
            .unwrap_or_else(|| panic!("run {i}: no summary\n{stdout}"));
        let nums: Vec<usize> = summary
            .rsplit_once(": ")
            .unwrap()
            .1
            .split(", ")
            .map(|part| part.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(nums[0] + nums[1], n, "run {i}: {summary}");
        assert_eq!((nums[2], nums[3]), (0, 0), "run {i}: {summary}");
        ran_total += nums[0];
        for line in stderr.lines() {
            if let Some(rest) = line.strip_prefix("  ran  ") {
                let name = rest.rsplit_once(" (").map_or(rest, |(a, _)| a).to_string();
                assert!(
                    ran_names.insert(name.clone()),
                    "{name} was computed by two runs (the key lock should make the others wait \
                     and reuse it)"
                );
            }
        }
    }
    assert_eq!(
        ran_total, n,
        "each instance is computed exactly once over the {RUNS} runs"
    );

    // No corruption: every object verifies, every record parses and points at good objects.
    let (_, records) = p.verify_cache();
    assert_eq!(records, n, "one record per instance");
    assert!(
        p.cache_dir()
            .join("failures")
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "a concurrent run recorded a failure"
    );
    let rows = p.status();
    assert_all_fresh(&rows, "after the concurrent runs");
    assert_eq!(
        p.outputs(),
        want_outputs,
        "keys and output hashes per instance"
    );
    assert_eq!(p.results(), want_results, "published results");

    // And the cache is usable afterwards: nothing left to run.
    let again = p.run_ok(&[]);
    assert_eq!((again.ran, again.cached), (0, n), "{}", again.out.show());
}
