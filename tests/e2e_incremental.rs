//! Incremental runs: an unchanged manifest runs nothing, a changed parameter reruns exactly
//! what depends on it (and status and `--dry-run` say so beforehand), `--stage` runs only a
//! stage and its upstream, `--force` reruns a fresh stage.

mod common;

use std::collections::BTreeSet;

use common::{
    assert_all_fresh, assert_records_untouched, by_instance, names_where, Pipeline, Project,
};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Checks that status lists exactly `expected` as stale, `changed` with a reason naming
/// what changed and the rest of `expected` because an input is stale or changed; that
/// `--dry-run` plans the same set; then runs and checks that exactly that set ran and that
/// no other record was rewritten.
fn expect_exact_rerun(
    p: &Project,
    expected: &BTreeSet<String>,
    changed: &BTreeSet<String>,
    changed_reason: &dyn Fn(&str, &str) -> bool,
    context: &str,
) {
    let rows = p.status();
    let stale = names_where(&rows, "stale");
    assert_eq!(&stale, expected, "{context}: stale set in `flow status`");
    assert!(names_where(&rows, "failed").is_empty(), "{context}");
    for r in rows.iter().filter(|r| r.state == "stale") {
        if changed.contains(&r.instance) {
            assert!(
                changed_reason(&r.instance, &r.reason),
                "{context}: unexpected reason for {}: {}",
                r.instance,
                r.reason
            );
        } else {
            assert!(
                (r.reason.contains("input `") && r.reason.contains("is stale"))
                    || (r.reason.contains("input `") && r.reason.contains("changed")),
                "{context}: {} should be stale because of an input, says: {}",
                r.instance,
                r.reason
            );
        }
    }

    let planned = p.dry_run(&[]);
    assert_eq!(
        planned.keys().cloned().collect::<BTreeSet<_>>(),
        *expected,
        "{context}: `flow run --dry-run` plans another set"
    );
    // `-n` is `--dry-run`, as in make and git.
    let m = p.manifest().to_string_lossy().into_owned();
    let long = p.flow(&["run", &m, "--dry-run", "--no-progress"]);
    let short = p.flow(&["run", &m, "-n", "--no-progress"]);
    assert_eq!(
        (short.code, &short.stdout),
        (long.code, &long.stdout),
        "{context}"
    );
    // A dry run runs nothing.
    assert_eq!(names_where(&p.status(), "stale"), *expected, "{context}");

    let before = p.records();
    let fresh_keys: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.state == "fresh")
        .filter_map(|r| r.key.clone())
        .collect();
    let r = p.run_ok(&[]);
    assert_eq!(
        r.ran,
        expected.len(),
        "{context}: ran count\n{}",
        r.out.show()
    );
    assert_eq!(&r.ran_names, expected, "{context}: instances that ran");
    assert_eq!(
        r.cached,
        rows.len() - expected.len(),
        "{context}: cached count"
    );
    let fresh_before: std::collections::BTreeMap<_, _> = before
        .into_iter()
        .filter(|(k, _)| fresh_keys.contains(k))
        .collect();
    assert_records_untouched(&fresh_before, &p.records(), &BTreeSet::new(), context);
    assert_all_fresh(&p.status(), context);
}

#[test]
fn unchanged_manifest_runs_nothing_and_a_change_reruns_exactly_its_downstream() {
    let data = require_data!();
    let p = Project::new(&data);
    let mut pipe = Pipeline::new("incremental").resolve(&p);
    let dag = p.dag(&pipe.stage_names());
    let all = dag.all();

    // Never run: everything stale, `never run` for the roots; the dry run plans everything.
    let rows = p.status();
    assert_eq!(names_where(&rows, "stale"), all);
    for r in &rows {
        if dag.inputs[&r.instance].is_empty() {
            assert_eq!(r.reason, "never run", "{}", r.instance);
        } else {
            assert!(
                r.reason.contains("is stale"),
                "{}: {}",
                r.instance,
                r.reason
            );
        }
    }
    assert_eq!(p.dry_run(&[]).keys().cloned().collect::<BTreeSet<_>>(), all);

    // First run: everything runs.
    let first = p.run_ok(&[]);
    assert_eq!(first.ran, all.len(), "{}", first.out.show());
    assert_eq!(first.ran_names, all);
    assert_eq!(first.cached, 0);
    let rows = p.status();
    assert_all_fresh(&rows, "after the first run");
    let keys_first = by_instance(&rows);
    let records_first = p.records();
    assert!(records_first.len() >= all.len());
    p.verify_cache();

    // Unchanged: nothing runs, no record is rewritten, the keys stay.
    assert!(p.dry_run(&[]).is_empty());
    let second = p.run_ok(&[]);
    assert_eq!(
        (second.ran, second.cached),
        (0, all.len()),
        "{}",
        second.out.show()
    );
    assert!(second.ran_names.is_empty());
    assert_records_untouched(&records_first, &p.records(), &BTreeSet::new(), "rerun");
    assert_eq!(p.records().len(), records_first.len());
    assert_eq!(by_instance(&p.status()), keys_first);

    // One parameter of a non-fanned stage: `gen` and everything downstream of it.
    let old_limit = pipe.gen_limit;
    pipe.gen_limit = old_limit - 20;
    p.write_manifest(&pipe.render());
    let gen = set(&["gen"]);
    let expected = dag.downstream(&gen);
    let want = format!(
        "parameter `limit` changed from {old_limit} to {}",
        pipe.gen_limit
    );
    expect_exact_rerun(
        &p,
        &expected,
        &gen,
        &|_, reason| reason.contains(&want),
        "gen.limit changed",
    );

    // One value of a fanned-out list: the new instance (never run under that name) and
    // everything downstream of it; its siblings stay cached.
    let fanned_stage = if pipe.has("mix") { "mix" } else { "real" };
    let old_names: BTreeSet<String> = dag.all();
    if pipe.has("mix") {
        let last = pipe.ratios.len() - 1;
        pipe.ratios[last] = 0.6;
    } else {
        let last = pipe.real_limits.len() - 1;
        pipe.real_limits[last] += 7;
    }
    p.write_manifest(&pipe.render());
    let dag2 = p.dag(&pipe.stage_names());
    let new_instances: BTreeSet<String> = dag2
        .all()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{fanned_stage}@")) && !old_names.contains(n))
        .collect();
    assert!(
        !new_instances.is_empty(),
        "the changed value renames instances"
    );
    let expected = dag2.downstream(&new_instances);
    assert!(expected.len() < dag2.all().len());
    expect_exact_rerun(
        &p,
        &expected,
        &new_instances,
        &|_, reason| reason == "never run",
        "one fanned-out value changed",
    );

    // Back to a value run before: its results are still cached, nothing runs.
    pipe.gen_limit = old_limit;
    p.write_manifest(&pipe.render());
    let back = p.status();
    let gen_row = &by_instance(&back)["gen"];
    assert_eq!(
        gen_row.state, "fresh",
        "gen back at its old limit is cached"
    );
    assert_eq!(gen_row.key, keys_first["gen"].key);
}

#[test]
fn stage_runs_only_it_and_its_upstream() {
    let data = require_data!();
    let p = Project::new(&data);
    let pipe = Pipeline::new("stage-select").resolve(&p);
    let dag = p.dag(&pipe.stage_names());

    // One instance of the deepest fanned-out data stage.
    let stage = if pipe.has("mix") { "mix" } else { "real" };
    let target = dag
        .all()
        .into_iter()
        .find(|n| n.starts_with(&format!("{stage}@")))
        .expect("a fanned-out instance");
    let expected = dag.upstream(&set(&[&target]));
    assert!(expected.len() < dag.all().len());
    assert_eq!(
        p.dry_run(&["--stage", &target])
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        expected,
        "dry run of --stage {target}"
    );
    let r = p.run_ok(&["--stage", &target]);
    assert_eq!(r.ran_names, expected, "--stage {target}\n{}", r.out.show());
    assert_eq!((r.ran, r.cached), (expected.len(), 0));
    let rows = p.status();
    assert_eq!(names_where(&rows, "fresh"), expected);
    for r in rows.iter().filter(|r| !expected.contains(&r.instance)) {
        assert_eq!(r.state, "stale", "{}", r.instance);
    }

    // A whole stage: all its instances and their upstream; what already ran is cached.
    let stage_all: BTreeSet<String> = dag
        .all()
        .into_iter()
        .filter(|n| n == stage || n.starts_with(&format!("{stage}@")))
        .collect();
    let up = dag.upstream(&stage_all);
    let r = p.run_ok(&["--stage", stage]);
    let want: BTreeSet<String> = up.difference(&expected).cloned().collect();
    assert_eq!(r.ran_names, want, "--stage {stage}\n{}", r.out.show());
    assert_eq!(r.cached, expected.len());
    assert_eq!(names_where(&p.status(), "fresh"), up);

    // An unknown stage is a usage error naming it.
    let m = p.manifest().to_string_lossy().into_owned();
    let out = p.flow(&["run", &m, "--no-progress", "--stage", "nosuch"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(out.stderr.contains("nosuch"), "{}", out.show());

    // The rest.
    let r = p.run_ok(&[]);
    assert_eq!(r.ran, dag.all().len() - up.len());
    assert_all_fresh(&p.status(), "after the full run");
}

#[test]
fn force_reruns_a_fresh_stage_and_nothing_else() {
    let data = require_data!();
    let p = Project::new(&data);
    let pipe = Pipeline::new("force").resolve(&p);
    let dag = p.dag(&pipe.stage_names());
    p.run_ok(&[]);
    let rows = p.status();
    assert_all_fresh(&rows, "after the first run");
    let before = p.records();
    let outputs_before = p.outputs();
    let gen_key = by_instance(&rows)["gen"].key.clone().unwrap();

    assert_eq!(
        p.dry_run(&["--force", "gen"]),
        [("gen".to_string(), "forced".to_string())].into(),
    );
    let r = p.run_ok(&["--force", "gen"]);
    assert_eq!(r.ran_names, set(&["gen"]), "{}", r.out.show());
    // Same content, so everything downstream stays cached.
    assert_eq!((r.ran, r.cached), (1, dag.all().len() - 1));
    let after = p.records();
    let old = before[&gen_key].record();
    let new = after[&gen_key].record();
    assert!(
        new.started_unix > old.started_unix,
        "the forced stage's record was not rewritten"
    );
    assert_eq!(
        old.outputs, new.outputs,
        "a forced rerun gives the same outputs"
    );
    assert_records_untouched(&before, &after, &set(&[&gen_key]), "--force gen");
    assert_eq!(p.outputs(), outputs_before);
    assert_all_fresh(&p.status(), "after --force");

    // A whole fanned-out stage can be forced too.
    let real: BTreeSet<String> = dag
        .all()
        .into_iter()
        .filter(|n| n.starts_with("real@"))
        .collect();
    let r = p.run_ok(&["--force", "real"]);
    assert_eq!(r.ran_names, real, "{}", r.out.show());
    assert_all_fresh(&p.status(), "after --force real");
}
