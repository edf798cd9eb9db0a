//! Where a ready instance is computed.
//!
//! `flow run` keeps the plan, the ready queue, status and publishing; an [`Executor`]
//! decides where each ready instance is computed. Without one (`local`, the default) the
//! run computes it in a thread of its own. With one, the instances it
//! [delegates](Executor::delegates) go to jobs that each compute exactly one instance into
//! the shared cache (`flow run-instance`, see [`crate::instance`]) and exit: child processes
//! of the flow binary, one per GPU ([`process::ProcessExecutor`]), or Slurm jobs
//! ([`slurm::SlurmExecutor`]). The job's success is its record in the cache; the run holds
//! the key's lock while the job runs, so two runs on one cache never compute a key twice.

pub mod process;
pub mod site;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stage::{CancelToken, Progress, Threads};

pub use site::{SiteConfig, SiteError, SlurmResources, SlurmSettings};

/// One instance for a job to compute.
pub struct Job<'a> {
    /// The instance name, e.g. `train@seed=2`.
    pub instance: &'a str,
    /// Its stage kind (site configs size jobs per kind).
    pub kind: &'a str,
    /// The key the run computed for it: the job refuses to compute anything else.
    pub key: &'a str,
    /// Recompute even if the cache holds the key (`--force`).
    pub force: bool,
    /// Cores the run would give it locally.
    pub threads: usize,
    /// The run's Ctrl-C: a job still running is cancelled.
    pub cancel: &'a CancelToken,
    /// The instance's progress bar (the job's state goes there).
    pub progress: &'a dyn Progress,
}

/// Why a job did not compute its instance. Each names the job and the instance; a job
/// that ran says how it ended and shows the tail of its log.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("could not start the {executor} job for `{instance}`: {reason}")]
    Start {
        executor: &'static str,
        instance: String,
        reason: String,
    },
    #[error("{0}")]
    Failed(Box<JobFailure>),
}

/// A job that ran and did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("{executor} job {job_id} for `{instance}` {how}{}", tail_block(.log, .tail))]
pub struct JobFailure {
    pub executor: &'static str,
    pub job_id: String,
    pub instance: String,
    /// How it ended: `ended FAILED (exit code 1)`, `exited with code 1`, ...
    pub how: String,
    pub log: PathBuf,
    /// The last lines of its log.
    pub tail: String,
}

impl JobError {
    pub fn failed(failure: JobFailure) -> JobError {
        JobError::Failed(Box::new(failure))
    }
}

fn tail_block(log: &Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!(" (log {}: empty)", log.display())
    } else {
        format!("; the end of its log {}:\n{}", log.display(), indent(tail))
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where instances are computed, beside the run (see the module docs).
pub trait Executor: Send + Sync {
    /// What records and messages call it: `slurm`, `process`.
    fn name(&self) -> &'static str;
    /// Whether an instance of `kind` that would take `threads` cores goes to a job; the
    /// others are computed in the run itself.
    fn delegates(&self, kind: &str, threads: Threads) -> bool;
    /// Jobs in flight at most.
    fn max_jobs(&self) -> usize;
    /// Computes `job` in a job and blocks until the job ended: its id once it exited
    /// successfully (the run then reads the instance's record from the cache).
    fn run(&self, job: &Job<'_>) -> Result<String, JobError>;
    /// A line for the end of the run (jobs started, where their logs are), if any started.
    fn summary(&self) -> Option<String> {
        None
    }
}

/// How a job invokes the flow binary to compute one instance: the program (the same path
/// on every node) and its arguments for a job.
pub struct Launch {
    pub program: PathBuf,
    /// The arguments for one job, `via` naming the executor (`slurm`, `process`) and
    /// `threads` the cores to use if the executor decides them (else the job decides).
    #[allow(clippy::type_complexity)]
    pub args: Box<dyn Fn(&Job<'_>, &str, Option<usize>) -> Vec<String> + Send + Sync>,
    /// The folder jobs start in.
    pub workdir: PathBuf,
}

/// Where a run's job scripts and logs go: `<jobs>/<run id>/`, created on first use.
pub struct JobFiles {
    pub dir: PathBuf,
    /// A short id of this run, in job names and the folder name.
    pub run_id: String,
    next: AtomicU64,
}

impl JobFiles {
    /// A folder for a new run under `root` (the cache's jobs area, or a site's `job_dir`).
    pub fn new(root: &Path) -> JobFiles {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = blake3::Hasher::new();
        h.update(&nanos.to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        let run_id = h.finalize().to_hex()[..8].to_string();
        JobFiles {
            dir: root.join(&run_id),
            run_id,
            next: AtomicU64::new(1),
        }
    }

    /// A base name for the files of the next job of `instance`: `<n>-<instance>`, the
    /// instance name reduced to characters safe in file and job names.
    pub fn next_name(&self, instance: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{n:04}-{}", safe_name(instance))
    }

    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }
}

/// `name` with every character outside `[A-Za-z0-9._=@+-]` (and `,`, which separates names
/// in Slurm's lists) replaced by `_`, cut to 120 bytes.
pub fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=@+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(120);
    out
}

/// The last `lines` lines of a log file (at most 64 KiB read), empty if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines of a log kept in an error.
pub const TAIL_LINES: usize = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_keep_what_slurm_and_file_systems_accept() {
        assert_eq!(safe_name("train@seed=2"), "train@seed=2");
        assert_eq!(
            safe_name("mix@ratio=0.4,seed=1/x y"),
            "mix@ratio=0.4_seed=1_x_y"
        );
        assert_eq!(safe_name(&"a".repeat(300)).len(), 120);
    }

    #[test]
    fn a_log_tail_is_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let text: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 38\nline 39\nline 40");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 3), "");
    }

    #[test]
    fn job_errors_name_the_job_and_show_the_log() {
        let e = JobError::failed(JobFailure {
            executor: "slurm",
            job_id: "42".into(),
            instance: "train".into(),
            how: "ended FAILED (exit code 1)".into(),
            log: PathBuf::from("/c/jobs/x/0001-train-42.log"),
            tail: "loading\nerror: out of memory".into(),
        });
        let text = e.to_string();
        assert!(text.starts_with("slurm job 42 for `train` ended FAILED (exit code 1)"));
        assert!(text.contains("    | error: out of memory"), "{text}");
    }

    #[test]
    fn job_files_number_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let files = JobFiles::new(dir.path());
        assert_eq!(files.run_id.len(), 8);
        assert_eq!(files.next_name("a b"), "0001-a_b");
        assert_eq!(files.next_name("c"), "0002-c");
    }
}
