//! `--executor slurm`: each delegated instance is a Slurm batch job running
//! `flow run-instance` against the shared cache.
//!
//! A job is a generated script (`<jobs>/<run>/<n>-<instance>.sh`, its log beside it as
//! `<n>-<instance>-<job id>.log`) submitted with `sbatch`, named `flow-<run>-<instance>`,
//! with the resources the site config gives its kind. One poller thread tracks every job in
//! flight with one `squeue --states=all --jobs=...` per interval (and `sacct`, where
//! accounting exists, for a job squeue no longer shows). On Ctrl-C it cancels the run's
//! jobs (`scancel`). Every Slurm command runs under `timeout`: they hang while a daemon is
//! down.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::site::SlurmSettings;
use super::{
    log_tail, safe_name, Executor, Job, JobError, JobFailure, JobFiles, Launch, TAIL_LINES,
};
use crate::stage::{CancelToken, Threads};

/// How long squeue may keep failing before the jobs it cannot see are given up on.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// Polls in a row that must miss a job before it counts as gone from squeue.
const MISSES_TO_GONE: u32 = 3;
/// Job ids per squeue or scancel call.
const IDS_PER_QUERY: usize = 400;
/// sbatch calls at once (a run that starts hundreds of jobs does not fork hundreds of
/// sbatch processes on the login node).
const SUBMITS_AT_ONCE: usize = 8;

/// The Slurm executor (see the module docs).
pub struct SlurmExecutor {
    settings: SlurmSettings,
    launch: Launch,
    files: JobFiles,
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
    /// sbatch calls running now, at most [`SUBMITS_AT_ONCE`].
    submitting: Mutex<usize>,
    slot_freed: Condvar,
}

/// How a job ended, as the poller saw it.
#[derive(Clone, Debug, PartialEq)]
struct End {
    state: String,
    exit: Option<ExitStatus>,
    reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct ExitStatus {
    code: i32,
    signal: i32,
}

struct Watch {
    done: mpsc::Sender<Result<End, String>>,
    misses: u32,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Watch>,
    /// Jobs `scancel` was sent for.
    cancelled: HashSet<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The most jobs in flight at once, and how many were submitted, for the run's note.
    peak: Mutex<usize>,
    submitted: Mutex<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlurmExecutor {
    /// Starts the poller. `jobs_root` holds the run's scripts and logs (the site config's
    /// `job_dir` wins); `cancel` is the run's Ctrl-C.
    pub fn new(
        settings: SlurmSettings,
        launch: Launch,
        jobs_root: &Path,
        cancel: CancelToken,
    ) -> SlurmExecutor {
        let root = settings
            .job_dir
            .clone()
            .unwrap_or_else(|| jobs_root.to_path_buf());
        let files = JobFiles::new(&root);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            peak: Mutex::new(0),
            submitted: Mutex::new(0),
        });
        let poller = {
            let shared = Arc::clone(&shared);
            let slurm = Slurm::from(&settings);
            let interval = Duration::from_secs_f64(settings.poll_interval_s);
            std::thread::Builder::new()
                .name("slurm-poller".into())
                .spawn(move || poll(&shared, &slurm, interval, &cancel))
                .ok()
        };
        SlurmExecutor {
            settings,
            launch,
            files,
            shared,
            poller,
            submitting: Mutex::new(0),
            slot_freed: Condvar::new(),
        }
    }

    /// This run's id, part of every job name (`flow-<id>-<instance>`).
    pub fn run_id(&self) -> &str {
        &self.files.run_id
    }

    /// The most jobs that were in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        *self.shared.peak.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for one of the [`SUBMITS_AT_ONCE`] sbatch slots; freed when dropped.
    fn submit_slot(&self) -> SubmitSlot<'_> {
        let mut n = self.submitting.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= SUBMITS_AT_ONCE {
            n = self.slot_freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        SubmitSlot(self)
    }

    /// The script that runs `job`.
    fn script(&self, job: &Job<'_>) -> String {
        let mut argv = vec![self.launch.program.to_string_lossy().into_owned()];
        argv.extend((self.launch.args)(job, "slurm", None));
        let command: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        format!(
            "#!/bin/sh\n\
             # flow run {run}: computes `{instance}` (key {key}) into the shared cache.\n\
             : \"${{RUST_LOG:=info}}\"\n\
             export RUST_LOG\n\
             exec {command}\n",
            run = self.files.run_id,
            instance = job.instance.replace('\n', " "),
            key = job.key,
            command = command.join(" "),
        )
    }

    fn submit(&self, job: &Job<'_>) -> Result<(String, PathBuf), JobError> {
        let start_error = |reason: String| JobError::Start {
            executor: "slurm",
            instance: job.instance.to_string(),
            reason,
        };
        self.files
            .create()
            .map_err(|e| start_error(format!("creating {}: {e}", self.files.dir.display())))?;
        let base = self.files.next_name(job.instance);
        let script = self.files.dir.join(format!("{base}.sh"));
        std::fs::write(&script, self.script(job))
            .map_err(|e| start_error(format!("writing {}: {e}", script.display())))?;
        let log_pattern = self.files.dir.join(format!("{base}-%j.log"));
        let mut args = vec![
            "--parsable".to_string(),
            format!(
                "--job-name=flow-{}-{}",
                self.files.run_id,
                safe_name(job.instance)
            ),
            format!("--output={}", log_pattern.display()),
            "--open-mode=append".to_string(),
            format!("--chdir={}", self.launch.workdir.display()),
        ];
        args.extend(self.settings.resources(job.kind).flags());
        args.push(script.to_string_lossy().into_owned());
        if job.cancel.is_cancelled() {
            return Err(start_error("the run was interrupted first".into()));
        }
        let slurm = Slurm::from(&self.settings);
        let out = {
            let _slot = self.submit_slot();
            slurm.run("sbatch", &args).map_err(start_error)?
        };
        // `--parsable`: `<id>` or `<id>;<cluster>`.
        let id = out
            .lines()
            .last()
            .and_then(|l| l.split(';').next())
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_'))
            .ok_or_else(|| start_error(format!("sbatch printed no job id: {out:?}")))?
            .to_string();
        let log = PathBuf::from(log_pattern.to_string_lossy().replace("%j", &id));
        Ok((id, log))
    }
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn delegates(&self, kind: &str, _threads: Threads) -> bool {
        !self.settings.local_kinds.iter().any(|k| k == kind)
    }

    fn max_jobs(&self) -> usize {
        self.settings.max_jobs
    }

    fn summary(&self) -> Option<String> {
        let submitted = *self
            .shared
            .submitted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (submitted > 0).then(|| {
            format!(
                "slurm: {submitted} job{} named flow-{}-*, at most {} in flight; scripts and \
                 logs in {}",
                if submitted == 1 { "" } else { "s" },
                self.files.run_id,
                self.peak_in_flight(),
                self.files.dir.display()
            )
        })
    }

    fn run(&self, job: &Job<'_>) -> Result<String, JobError> {
        let submitted = Instant::now();
        let (id, log) = self.submit(job)?;
        job.progress.message(&format!("slurm job {id}"));
        tracing::info!("submitted `{}` as slurm job {id}", job.instance);
        let (tx, rx) = mpsc::channel();
        {
            let mut state = self.shared.lock();
            state.jobs.insert(
                id.clone(),
                Watch {
                    done: tx,
                    misses: 0,
                },
            );
            let mut peak = self.shared.peak.lock().unwrap_or_else(|p| p.into_inner());
            *peak = (*peak).max(state.jobs.len());
            *self
                .shared
                .submitted
                .lock()
                .unwrap_or_else(|p| p.into_inner()) += 1;
        }
        let failed = |how: String| {
            JobError::failed(JobFailure {
                executor: "slurm",
                job_id: id.clone(),
                instance: job.instance.to_string(),
                how,
                tail: log_tail(&log, TAIL_LINES),
                log: log.clone(),
            })
        };
        let ended = rx.recv();
        tracing::info!(
            "slurm job {id} for `{}` ended after {:.2} s: {}",
            job.instance,
            submitted.elapsed().as_secs_f64(),
            match &ended {
                Ok(Ok(end)) => end.state.as_str(),
                _ => "not followed",
            }
        );
        match ended {
            Ok(Ok(end)) if end.state == "COMPLETED" => Ok(id),
            Ok(Ok(end)) => Err(failed(describe(&end, job.cancel.is_cancelled()))),
            Ok(Err(why)) => Err(failed(why)),
            Err(_) => Err(failed("was lost: the poller stopped".into())),
        }
    }
}

impl Drop for SlurmExecutor {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

struct SubmitSlot<'a>(&'a SlurmExecutor);

impl Drop for SubmitSlot<'_> {
    fn drop(&mut self) {
        *self.0.submitting.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.slot_freed.notify_one();
    }
}

/// How a job ended, for an error: `ended FAILED (exit code 1)`, ...
fn describe(end: &End, interrupted: bool) -> String {
    let mut out = format!("ended {}", end.state);
    match end.exit {
        Some(e) if e.signal != 0 => out.push_str(&format!(" (killed by signal {})", e.signal)),
        Some(e) if e.code != 0 => out.push_str(&format!(" (exit code {})", e.code)),
        _ => {}
    }
    if !end.reason.is_empty() && end.reason != "None" {
        out.push_str(&format!(", reason {}", end.reason));
    }
    if interrupted && end.state == "CANCELLED" {
        out.push_str(" (this run was interrupted)");
    }
    out
}

/// Whether a job in `state` has ended (a requeued or preempted-and-requeued job has not).
fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "PREEMPTED"
            | "REVOKED"
            | "SPECIAL_EXIT"
    )
}

/// The poller: one squeue per interval for every job in flight; scancel on Ctrl-C.
fn poll(shared: &Shared, slurm: &Slurm, interval: Duration, cancel: &CancelToken) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let ids: Vec<String> = {
            let state = shared.lock();
            let (state, _) = shared
                .wake
                // Each interval; at once when stopping with nothing left to follow.
                .wait_timeout_while(state, interval, |s| !s.stop || !s.jobs.is_empty())
                .unwrap_or_else(|p| p.into_inner());
            if state.stop && state.jobs.is_empty() {
                return;
            }
            state.jobs.keys().cloned().collect()
        };
        if ids.is_empty() {
            continue;
        }
        if cancel.is_cancelled() {
            let unsent: Vec<String> = {
                let state = shared.lock();
                ids.iter()
                    .filter(|id| !state.cancelled.contains(*id))
                    .cloned()
                    .collect()
            };
            for chunk in unsent.chunks(IDS_PER_QUERY) {
                let shown = format!(
                    "{}{}",
                    chunk[..chunk.len().min(5)].join(", "),
                    if chunk.len() > 5 { ", ..." } else { "" }
                );
                match slurm.run("scancel", chunk) {
                    Ok(_) => tracing::warn!("cancelled {} slurm jobs ({shown})", chunk.len()),
                    Err(e) => tracing::warn!("cancelling slurm jobs {shown}: {e}"),
                }
                shared.lock().cancelled.extend(chunk.iter().cloned());
            }
        }
        let seen = match slurm.squeue(&ids) {
            Ok(seen) => {
                failing_since = None;
                seen
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::warn!("polling slurm jobs: {e}");
                if since.elapsed() >= GIVE_UP_AFTER {
                    let mut state = shared.lock();
                    for (id, w) in state.jobs.drain() {
                        let _ = w.done.send(Err(format!(
                            "could not be followed: squeue failed for {} s ({e}); it may \
                             still run (`scancel {id}`)",
                            GIVE_UP_AFTER.as_secs()
                        )));
                    }
                }
                continue;
            }
        };
        let mut gone = Vec::new();
        {
            let mut state = shared.lock();
            for id in &ids {
                match seen.get(id) {
                    Some(end) if is_final(&end.state) => {
                        if let Some(w) = state.jobs.remove(id) {
                            let _ = w.done.send(Ok(end.clone()));
                        }
                    }
                    Some(_) => {
                        if let Some(w) = state.jobs.get_mut(id) {
                            w.misses = 0;
                        }
                    }
                    None => {
                        if let Some(w) = state.jobs.get_mut(id) {
                            w.misses += 1;
                            if w.misses >= MISSES_TO_GONE {
                                gone.push(id.clone());
                            }
                        }
                    }
                }
            }
        }
        for id in gone {
            // squeue forgets a job some minutes after it ended; accounting remembers.
            let end = slurm.sacct(&id).ok_or_else(|| {
                "left squeue without a final state (slurmctld restarted, or the job ended \
                 longer ago than MinJobAge) and there is no accounting to ask"
                    .to_string()
            });
            if let Some(w) = shared.lock().jobs.remove(&id) {
                let _ = w.done.send(end);
            }
        }
    }
}

/// Runs Slurm's commands, each under `timeout`.
struct Slurm {
    timeout: Duration,
    /// Whether `sacct` works here (unknown until asked; no accounting is common).
    accounting: Mutex<Option<bool>>,
}

impl Slurm {
    fn from(settings: &SlurmSettings) -> Slurm {
        Slurm {
            timeout: Duration::from_secs_f64(settings.command_timeout_s),
            accounting: Mutex::new(None),
        }
    }

    fn output(&self, program: &str, args: &[String]) -> Result<Output, String> {
        Command::new("timeout")
            .arg("--kill-after=5")
            .arg(format!("{:.1}", self.timeout.as_secs_f64()))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running `timeout {program}`: {e}"))
    }

    /// Runs a command: its stdout, or what went wrong.
    fn run(&self, program: &str, args: &[String]) -> Result<String, String> {
        let out = self.output(program, args)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(self.failure(program, &out))
    }

    /// What went wrong with a command that failed.
    fn failure(&self, program: &str, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(124) | Some(137) => format!(
                "`{program}` did not answer within {:.0} s (is slurmctld up?)",
                self.timeout.as_secs_f64()
            ),
            Some(127) => format!("`{program}` was not found (is Slurm installed here?)"),
            code => format!(
                "`{program}` failed (exit {}): {}",
                code.map_or("by a signal".into(), |c| c.to_string()),
                stderr.trim()
            ),
        }
    }

    /// The state of each job squeue knows, of `ids`.
    fn squeue(&self, ids: &[String]) -> Result<HashMap<String, End>, String> {
        let mut seen = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let args = vec![
                "--noheader".to_string(),
                "--states=all".to_string(),
                format!("--jobs={}", chunk.join(",")),
                "--Format=JobID:|,State:|,Reason:|,exit_code:|".to_string(),
            ];
            let out = self.output("squeue", &args)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Every id unknown (ended long ago): squeue says so and fails.
            if !out.status.success() && stderr.contains("Invalid job id") {
                continue;
            }
            if !out.status.success() {
                return Err(self.failure("squeue", &out));
            }
            seen.extend(parse_squeue(&String::from_utf8_lossy(&out.stdout)));
        }
        Ok(seen)
    }

    /// How accounting says job `id` ended; `None` without accounting or an answer.
    fn sacct(&self, id: &str) -> Option<End> {
        let mut known = self.accounting.lock().unwrap_or_else(|p| p.into_inner());
        if *known == Some(false) {
            return None;
        }
        let args = vec![
            "--noheader".to_string(),
            "--parsable2".to_string(),
            "--allocations".to_string(),
            format!("--jobs={id}"),
            "--format=JobID,State,ExitCode".to_string(),
        ];
        let out = self.output("sacct", &args).ok()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("accounting storage is disabled") {
            *known = Some(false);
            return None;
        }
        *known = Some(true);
        stdout.lines().find_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            (f.len() >= 3 && f[0] == id).then(|| End {
                // `CANCELLED by 0` -> `CANCELLED`.
                state: f[1].split_whitespace().next().unwrap_or("").to_string(),
                exit: parse_exit(f[2]),
                reason: String::new(),
            })
        })
    }
}

/// `id|STATE|reason|exit|` lines of squeue.
fn parse_squeue(out: &str) -> HashMap<String, End> {
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').map(str::trim).collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some((
                f[0].to_string(),
                End {
                    state: f[1].to_string(),
                    reason: f[2].to_string(),
                    exit: parse_exit(f[3]),
                },
            ))
        })
        .collect()
}

/// Slurm's exit status: `code:signal` (sacct), or a raw wait status (squeue's exit_code).
fn parse_exit(text: &str) -> Option<ExitStatus> {
    let text = text.trim();
    if let Some((code, signal)) = text.split_once(':') {
        return Some(ExitStatus {
            code: code.parse().ok()?,
            signal: signal.parse().ok()?,
        });
    }
    let raw: i32 = text.parse().ok()?;
    Some(ExitStatus {
        code: (raw >> 8) & 0xff,
        signal: raw & 0x7f,
    })
}

/// `text` quoted for sh.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_parse() {
        let seen =
            parse_squeue("12|RUNNING|None|0|\n13|CANCELLED|None|768|\n14|PENDING|Resources|0|\n\n");
        assert_eq!(seen.len(), 3);
        assert_eq!(seen["12"].state, "RUNNING");
        assert_eq!(seen["13"].exit, Some(ExitStatus { code: 3, signal: 0 }));
        assert_eq!(seen["14"].reason, "Resources");
        assert!(is_final("CANCELLED") && is_final("COMPLETED") && is_final("TIMEOUT"));
        assert!(!is_final("RUNNING") && !is_final("COMPLETING") && !is_final("REQUEUED"));
    }

    #[test]
    fn exit_statuses_parse_in_both_forms() {
        assert_eq!(parse_exit("1:0"), Some(ExitStatus { code: 1, signal: 0 }));
        assert_eq!(
            parse_exit("0:15"),
            Some(ExitStatus {
                code: 0,
                signal: 15
            })
        );
        assert_eq!(parse_exit("9"), Some(ExitStatus { code: 0, signal: 9 }));
        assert_eq!(parse_exit("256"), Some(ExitStatus { code: 1, signal: 0 }));
        assert_eq!(parse_exit(""), None);
    }

    #[test]
    fn endings_read_as_sentences() {
        let end = |state: &str, code, signal| End {
            state: state.into(),
            exit: Some(ExitStatus { code, signal }),
            reason: "None".into(),
        };
        assert_eq!(
            describe(&end("FAILED", 2, 0), false),
            "ended FAILED (exit code 2)"
        );
        assert_eq!(
            describe(&end("CANCELLED", 0, 15), true),
            "ended CANCELLED (killed by signal 15) (this run was interrupted)"
        );
        assert_eq!(describe(&end("TIMEOUT", 0, 0), false), "ended TIMEOUT");
    }

    #[test]
    fn shell_quoting_survives_any_name() {
        assert_eq!(shell_quote("/usr/bin/flow"), "/usr/bin/flow");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("mix@ratio=0.4,seed=1"), "mix@ratio=0.4,seed=1");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
