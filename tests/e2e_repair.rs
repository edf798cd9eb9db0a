//! Damage and failure: a corrupt or missing output makes its instance stale and the next run
//! repairs it; a stage failing at run time exits 1, names itself, keeps every other result and
//! shows as `failed` until its input is fixed; `flow gc` drops what the manifest no longer
//! points at and keeps the current run fresh.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{
    assert_all_fresh, assert_records_untouched, by_instance, names_where, object_hashes, Pipeline,
    Project,
};

fn overwrite_start(path: &Path, bytes: &[u8]) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn corrupt_and_missing_outputs_are_stale_and_repaired() {
    let data = require_data!();
    let p = Project::new(&data);
    let pipe = Pipeline::new("repair").resolve(&p);
    let dag = p.dag(&pipe.stage_names());
    p.run_ok(&[]);
    let outputs = p.outputs();
    let cache = p.open_cache();

    // Corrupt `gen`'s data (every mix reads it) and delete the output of the last `real`
    // sample (one branch of the fan-out).
    let rows = p.status();
    let corrupt_inst = "gen".to_string();
    let delete_inst = rows
        .iter()
        .rev()
        .find(|r| r.instance.starts_with("real@"))
        .unwrap()
        .instance
        .clone();
    assert_ne!(corrupt_inst, delete_inst);
    let corrupt_hash = outputs[&corrupt_inst].1.values().next().unwrap().clone();
    let delete_hash = outputs[&delete_inst].1.values().next().unwrap().clone();
    assert_ne!(corrupt_hash, delete_hash);
    let corrupt_path = cache.object_path(&corrupt_hash);
    let delete_path = cache.object_path(&delete_hash);
    let corrupt_bytes = std::fs::read(&corrupt_path).unwrap();
    let delete_bytes = std::fs::read(&delete_path).unwrap();
    overwrite_start(&corrupt_path, b"CORRUPTED!");
    assert_eq!(
        std::fs::metadata(&corrupt_path).unwrap().len() as usize,
        corrupt_bytes.len()
    );
    std::fs::remove_file(&delete_path).unwrap();

    // Which instances hold the damaged objects (normally just the two).
    let holders = |hash: &str| -> BTreeSet<String> {
        outputs
            .iter()
            .filter(|(_, (_, outs))| outs.values().any(|h| h == hash))
            .map(|(i, _)| i.clone())
            .collect()
    };
    let corrupt_set = holders(&corrupt_hash);
    let delete_set = holders(&delete_hash);
    let damaged: BTreeSet<String> = corrupt_set.union(&delete_set).cloned().collect();
    let expected_stale = dag.downstream(&damaged);

    let rows = p.status();
    assert_eq!(names_where(&rows, "stale"), expected_stale);
    for r in rows.iter().filter(|r| r.state == "stale") {
        if corrupt_set.contains(&r.instance) {
            assert!(r.reason.contains("corrupt"), "{}: {}", r.instance, r.reason);
        } else if delete_set.contains(&r.instance) {
            assert!(r.reason.contains("missing"), "{}: {}", r.instance, r.reason);
        } else {
            assert!(
                r.reason.contains("is stale"),
                "{}: {}",
                r.instance,
                r.reason
            );
        }
    }
    assert_eq!(
        p.dry_run(&[]).keys().cloned().collect::<BTreeSet<_>>(),
        expected_stale
    );

    // The run repairs exactly the damaged instances; their content is the same, so
    // everything downstream is still cached.
    let before = p.records();
    let r = p.run_ok(&[]);
    assert_eq!(r.ran_names, damaged, "{}", r.out.show());
    assert_all_fresh(&p.status(), "after the repair");
    p.verify_cache();
    assert_eq!(std::fs::read(&corrupt_path).unwrap(), corrupt_bytes);
    assert_eq!(std::fs::read(&delete_path).unwrap(), delete_bytes);
    assert_eq!(
        p.outputs(),
        outputs,
        "same keys and outputs after the repair"
    );
    let damaged_keys: BTreeSet<String> = damaged.iter().map(|i| outputs[i].0.clone()).collect();
    assert_records_untouched(&before, &p.records(), &damaged_keys, "repair run");

    // A leaf (the table when there is one): only it is stale, and only it reruns.
    let leaf = rows.last().unwrap().instance.clone();
    let (leaf_key, leaf_outs) = outputs[&leaf].clone();
    for hash in leaf_outs.values() {
        std::fs::remove_file(cache.object_path(hash)).unwrap();
    }
    let rows = p.status();
    assert_eq!(names_where(&rows, "stale"), [leaf.clone()].into());
    let row = &by_instance(&rows)[&leaf];
    assert!(row.reason.contains("missing"), "{}", row.reason);
    let before = p.records();
    let r = p.run_ok(&[]);
    assert_eq!(r.ran_names, [leaf.clone()].into(), "{}", r.out.show());
    assert_all_fresh(&p.status(), "after repairing the leaf");
    p.verify_cache();
    assert_eq!(p.outputs(), outputs);
    assert_records_untouched(&before, &p.records(), &[leaf_key].into(), "leaf repair");
}

/// A data dir holding the first `lines` stories of the real mirror.
fn small_mirror(data: &Path, dir: &Path, lines: usize) {
    let text = std::fs::read_to_string(data.join("rocstories/stories.jsonl")).unwrap();
    let head: String = text.lines().take(lines).map(|l| format!("{l}\n")).collect();
    std::fs::create_dir_all(dir.join("rocstories")).unwrap();
    std::fs::write(dir.join("rocstories/stories.jsonl"), head).unwrap();
}

#[test]
fn a_failed_stage_exits_1_keeps_the_rest_and_succeeds_once_fixed() {
    let data = require_data!();
    // The run reads a small copy of the mirror: about 500 test stories, too few for `big`.
    let scratch = tempfile::tempdir().unwrap();
    let mirror = scratch.path().join("data");
    small_mirror(&data, &mirror, 2000);
    let p = Project::new(&mirror);
    let mut pipe = Pipeline::new("failure");
    pipe.extra = "[stages.big]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"test\"\n\
                  limit = 1000\n\n"
        .to_string();
    if common::kinds().has("score") {
        pipe.extra += "[stages.big_score]\nkind = \"score\"\ndata = \"big\"\n\n";
    }
    let pipe = pipe.resolve(&p);
    let dag = p.dag(&pipe.stage_names());
    let all = dag.all();
    let blocked = dag.downstream(&["big".to_string()].into());
    let m = p.manifest().to_string_lossy().into_owned();

    let r = p.run(&[]);
    assert_eq!(
        r.out.code,
        Some(1),
        "a failed stage exits 1:\n{}",
        r.out.show()
    );
    assert_eq!(r.failed, 1, "{}", r.out.show());
    assert_eq!(r.skipped, blocked.len() - 1, "{}", r.out.show());
    assert_eq!(r.ran, all.len() - blocked.len());
    assert!(
        r.out.stderr.contains("error: stage `big` failed"),
        "the error names the instance:\n{}",
        r.out.show()
    );
    assert!(r.out.stderr.contains("limit = 1000"), "{}", r.out.show());

    // Status: `big` failed with its error, what reads it stale, everything else fresh.
    let rows = p.status();
    let row = &by_instance(&rows)["big"];
    assert_eq!(row.state, "failed");
    assert!(row.reason.contains("limit = 1000"), "{}", row.reason);
    assert!(row.key.is_some());
    for r in &rows {
        if blocked.contains(&r.instance) && r.instance != "big" {
            assert_eq!(r.state, "stale", "{}", r.instance);
            assert!(r.reason.contains("`big`"), "{}: {}", r.instance, r.reason);
        } else if r.instance != "big" {
            assert_eq!(r.state, "fresh", "{}: {}", r.instance, r.reason);
        }
    }
    let text = p.status_text();
    assert!(
        text.stdout
            .lines()
            .any(|l| l.contains("failed") && l.contains("big") && l.contains("limit = 1000")),
        "{}",
        text.show()
    );
    let show = p.flow(&["show", &m, "big", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert!(
        shown[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("limit = 1000")),
        "{}",
        show.show()
    );

    // Running again without a fix: the others stay cached, `big` fails again.
    let before = p.records();
    let r = p.run(&[]);
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    assert_eq!(
        (r.ran, r.cached, r.failed),
        (0, all.len() - blocked.len(), 1),
        "{}",
        r.out.show()
    );
    assert_records_untouched(
        &before,
        &p.records(),
        &BTreeSet::new(),
        "rerun with failure",
    );
    p.verify_cache();

    // Fix the input: the full mirror has enough test stories. Every source reads it, so
    // everything is stale now (an external input changed), and the run succeeds.
    std::fs::copy(
        data.join("rocstories/stories.jsonl"),
        mirror.join("rocstories/stories.jsonl"),
    )
    .unwrap();
    let rows = p.status();
    let row = &by_instance(&rows)["big"];
    assert_eq!(row.state, "stale", "{}", row.reason);
    // The reason names what changed since the failed run.
    assert!(
        row.reason.contains("external input") && row.reason.contains("stories.jsonl"),
        "{}",
        row.reason
    );
    let r = p.run_ok(&[]);
    assert_eq!(r.ran, all.len(), "{}", r.out.show());
    assert_all_fresh(&p.status(), "after fixing the input");
    p.verify_cache();
}

/// Keys of the records and the objects they reference (outputs and used inputs).
fn referenced(p: &Project, keys: &BTreeSet<String>) -> BTreeSet<String> {
    let records = p.records();
    let mut out = BTreeSet::new();
    for k in keys {
        let rec = records[k].record();
        out.extend(rec.outputs.values().map(|o| o.hash.clone()));
        for ins in rec.key_fields.inputs.values().flatten() {
            out.extend(ins.outputs.values().cloned());
        }
    }
    out
}

fn gc(p: &Project, dry: bool) -> (usize, usize) {
    let args: &[&str] = if dry {
        &["gc", "--dry-run", "--grace", "0"]
    } else {
        &["gc", "--grace", "0"]
    };
    let out = p.flow(args);
    assert_eq!(out.code, Some(0), "{}", out.show());
    // `removed 3 records and 4 objects (0.1 MB), ...`
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    let num_before = |w: &str| -> usize {
        let i = words
            .iter()
            .position(|x| *x == w)
            .unwrap_or_else(|| panic!("no `{w}` in gc output: {}", out.show()));
        words[i - 1].parse().unwrap()
    };
    (num_before("records"), num_before("objects"))
}

#[test]
fn gc_drops_what_the_changed_manifest_no_longer_uses() {
    let data = require_data!();
    let p = Project::new(&data);
    let mut pipe = Pipeline::new("gc").resolve(&p);
    p.run_ok(&[]);
    let old_keys: BTreeSet<String> = p.outputs().into_values().map(|(k, _)| k).collect();

    pipe.gen_limit -= 20;
    p.write_manifest(&pipe.render());
    p.run_ok(&[]);
    let new_outputs = p.outputs();
    let new_keys: BTreeSet<String> = new_outputs.values().map(|(k, _)| k.clone()).collect();
    let gone: BTreeSet<String> = old_keys.difference(&new_keys).cloned().collect();
    assert!(!gone.is_empty());
    let all_records: BTreeSet<String> = p.records().into_keys().collect();
    assert_eq!(all_records, old_keys.union(&new_keys).cloned().collect());
    let keep_objects = referenced(&p, &new_keys);
    let all_objects = object_hashes(&p.cache_dir());
    let drop_objects: BTreeSet<String> = all_objects.difference(&keep_objects).cloned().collect();

    // A dry run says what would go and deletes nothing.
    assert_eq!(gc(&p, true), (gone.len(), drop_objects.len()));
    assert_eq!(p.records().len(), all_records.len());
    assert_eq!(object_hashes(&p.cache_dir()), all_objects);

    let before = p.records();
    assert_eq!(gc(&p, false), (gone.len(), drop_objects.len()));
    let after = p.records();
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), new_keys);
    assert_eq!(object_hashes(&p.cache_dir()), keep_objects);
    assert_records_untouched(&before, &after, &gone, "gc");
    p.verify_cache();
    assert_all_fresh(&p.status(), "after gc");
    assert_eq!(p.outputs(), new_outputs);
    let r = p.run_ok(&[]);
    assert_eq!(
        r.ran,
        0,
        "gc removed something the current run needs\n{}",
        r.out.show()
    );

    // Nothing more to collect.
    assert_eq!(gc(&p, false), (0, 0));
}

/// Results of a fan-out value that was removed from the manifest are no longer pointed at by
/// it, so gc drops them.
#[test]
fn gc_drops_the_results_of_a_removed_fan_out_value() {
    let data = require_data!();
    let p = Project::new(&data);
    let mut pipe = Pipeline::new("gc-fanout").resolve(&p);
    p.run_ok(&[]);
    let old: BTreeMap<String, (String, BTreeMap<String, String>)> = p.outputs();

    let removed_limit = pipe.real_limits.pop().unwrap();
    p.write_manifest(&pipe.render());
    p.run_ok(&[]);
    let current: BTreeSet<String> = p.outputs().into_values().map(|(k, _)| k).collect();
    let removed: BTreeMap<String, String> = old
        .iter()
        .filter(|(_, (k, _))| !current.contains(k))
        .map(|(i, (k, _))| (i.clone(), k.clone()))
        .collect();
    assert!(
        removed
            .keys()
            .any(|i| i == &format!("real@limit={removed_limit}")),
        "{removed:?}"
    );

    gc(&p, false);
    let left: BTreeSet<String> = p.records().into_keys().collect();
    let kept: Vec<&String> = removed
        .iter()
        .filter(|(_, k)| left.contains(*k))
        .map(|(i, _)| i)
        .collect();
    assert!(
        kept.is_empty(),
        "gc kept the records of instances the manifest no longer has: {kept:?}"
    );
    assert_eq!(left, current);
    assert_all_fresh(&p.status(), "after gc");
}
