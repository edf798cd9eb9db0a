//! `--executor process --gpus 0,1,2,3`: every heavy instance (one that would take more
//! than one core: training, evaluation, embedding, local generation) is computed by a child
//! process of the flow binary (`flow run-instance`) that sees one GPU of the list as its
//! `CUDA_VISIBLE_DEVICES`, so four GPUs train four models at once. Light instances are
//! computed in the run itself. A child's output goes to `<jobs>/<run>/<n>-<instance>.log`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{log_tail, Executor, Job, JobError, JobFailure, JobFiles, Launch, TAIL_LINES};
use crate::stage::Threads;

/// After SIGTERM, how long a child may take to checkpoint and exit before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);

/// The process executor (see the module docs).
pub struct ProcessExecutor {
    launch: Launch,
    files: JobFiles,
    /// GPU ids not given to a child now; one slot each (an id listed twice takes two).
    free: Mutex<Vec<String>>,
    slots: usize,
    /// Cores each child may use.
    threads: usize,
    started: AtomicUsize,
}

impl ProcessExecutor {
    /// One child at a time per entry of `gpus` (non-empty), each with `threads` cores.
    pub fn new(gpus: Vec<String>, threads: usize, launch: Launch, jobs_root: &Path) -> Self {
        let slots = gpus.len().max(1);
        let mut free = gpus;
        // Handed out from the end: the first listed goes first.
        free.reverse();
        ProcessExecutor {
            launch,
            files: JobFiles::new(jobs_root),
            free: Mutex::new(free),
            slots,
            threads: threads.max(1),
            started: AtomicUsize::new(0),
        }
    }

    fn take_gpu(&self) -> Option<String> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, gpu: Option<String>) {
        if let Some(g) = gpu {
            self.free.lock().unwrap_or_else(|p| p.into_inner()).push(g);
        }
    }

    fn spawn(&self, job: &Job<'_>, gpu: Option<&str>) -> Result<(Child, PathBuf), JobError> {
        let start_error = |reason: String| JobError::Start {
            executor: "process",
            instance: job.instance.to_string(),
            reason,
        };
        self.files
            .create()
            .map_err(|e| start_error(format!("creating {}: {e}", self.files.dir.display())))?;
        let log = self
            .files
            .dir
            .join(format!("{}.log", self.files.next_name(job.instance)));
        let out = std::fs::File::create(&log)
            .map_err(|e| start_error(format!("creating {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| start_error(format!("opening {}: {e}", log.display())))?;
        let mut cmd = Command::new(&self.launch.program);
        cmd.args((self.launch.args)(job, "process", Some(self.threads)))
            .current_dir(&self.launch.workdir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if let Some(g) = gpu {
            cmd.env("CUDA_VISIBLE_DEVICES", g);
        }
        if job.cancel.is_cancelled() {
            return Err(start_error("the run was interrupted first".into()));
        }
        let child = cmd
            .spawn()
            .map_err(|e| start_error(format!("starting {}: {e}", self.launch.program.display())))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok((child, log))
    }
}

impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "process"
    }

    fn delegates(&self, _kind: &str, threads: Threads) -> bool {
        threads != Threads::One
    }

    fn max_jobs(&self) -> usize {
        self.slots
    }

    fn summary(&self) -> Option<String> {
        let n = self.started.load(Ordering::Relaxed);
        (n > 0).then(|| {
            format!(
                "process: {n} child process{} on {} GPU slot{}; logs in {}",
                if n == 1 { "" } else { "es" },
                self.slots,
                if self.slots == 1 { "" } else { "s" },
                self.files.dir.display()
            )
        })
    }

    fn run(&self, job: &Job<'_>) -> Result<String, JobError> {
        let gpu = self.take_gpu();
        let spawned = self.spawn(job, gpu.as_deref());
        let (mut child, log) = match spawned {
            Ok(c) => c,
            Err(e) => {
                self.give_back(gpu);
                return Err(e);
            }
        };
        let pid = child.id().to_string();
        job.progress.message(&format!(
            "process {pid}{}",
            gpu.as_deref()
                .map(|g| format!(" on GPU {g}"))
                .unwrap_or_default()
        ));
        let status = wait(&mut child, job);
        self.give_back(gpu);
        let failed = |how: String| {
            JobError::failed(JobFailure {
                executor: "process",
                job_id: pid.clone(),
                instance: job.instance.to_string(),
                how,
                tail: log_tail(&log, TAIL_LINES),
                log: log.clone(),
            })
        };
        match status {
            Ok(s) if s.success() => Ok(pid.clone()),
            Ok(s) => Err(failed(match (s.code(), signal_of(&s)) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                (None, None) => "ended abnormally".into(),
            })),
            Err(e) => Err(failed(format!("could not be waited for: {e}"))),
        }
    }
}

/// Waits for the child; on the run's Ctrl-C asks it to stop (SIGTERM: it checkpoints and
/// exits), and kills it if it has not after [`TERM_GRACE`].
fn wait(child: &mut Child, job: &Job<'_>) -> std::io::Result<std::process::ExitStatus> {
    let mut asked: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if job.cancel.is_cancelled() {
            match asked {
                None => {
                    terminate(child);
                    asked = Some(Instant::now());
                }
                Some(t) if t.elapsed() > TERM_GRACE => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child not yet reaped (so not reused).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child;
    }
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}
