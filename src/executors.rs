//! `flow run --executor local|slurm|process` (which executor computes the instances a run
//! delegates) and the hidden `flow run-instance` its jobs run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use flow_cache::{Area, Cache, Executed};
use flow_engine::executor::process::ProcessExecutor;
use flow_engine::executor::slurm::SlurmExecutor;
use flow_engine::executor::{Job, Launch, SiteConfig};
use flow_engine::{
    run_instance, CancelToken, Executor, InstanceError, InstanceOptions, InstanceOutcome, Registry,
    Session,
};

use crate::cli::{Dirs, ManifestArgs};
use crate::commands::{
    env, load, open_cache, Access, Loaded, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE,
};

/// Where `flow run` computes instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// In this process (the default)
    Local,
    /// Each delegated instance is a Slurm job (see `--executor-config`)
    Slurm,
    /// Each heavy instance is a child process with one GPU of `--gpus`
    Process,
}

/// The executor options of `flow run`.
#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// Where instances are computed: `local` (in this process), `slurm` (a batch job per
    /// instance, on a cache the nodes share) or `process` (a child process per heavy
    /// instance, one per GPU of --gpus)
    #[arg(
        long,
        value_enum,
        env = "FLOW_EXECUTOR",
        default_value = "local",
        value_name = "EXECUTOR"
    )]
    pub executor: ExecutorKind,
    /// The site config of `--executor slurm` (TOML: resources per stage kind, jobs in
    /// flight, kinds kept local; see README "Running on a cluster")
    #[arg(long, env = "FLOW_EXECUTOR_CONFIG", value_name = "FILE")]
    pub executor_config: Option<PathBuf>,
    /// `--executor process`: the GPUs, one child at a time on each (e.g. `0,1,2,3`); each
    /// child sees its own as CUDA_VISIBLE_DEVICES
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub gpus: Vec<String>,
}

/// `flow run-instance`: the hidden subcommand a job runs.
#[derive(Args, Debug)]
pub struct RunInstanceArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// The instance to compute (its upstream must be in the cache)
    #[arg(long)]
    pub instance: String,
    /// The key the run planned for it; any other key here is refused
    #[arg(long, value_name = "KEY")]
    pub expect_key: String,
    /// Recompute even if the cache holds the key
    #[arg(long)]
    pub force: bool,
    /// Cores to use (default: Slurm's allocation, else all)
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// The executor that started this job (`slurm`, `process`), kept in the record
    #[arg(long, value_name = "EXECUTOR")]
    pub via: Option<String>,
    /// The run that started this job holds the key's lock: do not wait for it
    #[arg(long)]
    pub run_holds_lock: bool,
}

/// The executor `flow run` uses, `None` for local. A problem with the options or the site
/// config is printed; the caller exits 2.
pub enum Built {
    Ok(Option<Arc<dyn Executor>>),
    Invalid,
}

pub fn build(
    registry: &Registry,
    dirs: &Dirs,
    session: &Session<'_>,
    args: &ExecutorArgs,
    jobs: usize,
    cancel: &CancelToken,
) -> Result<Built> {
    if !args.gpus.is_empty() && args.executor != ExecutorKind::Process {
        eprintln!("error: --gpus is for --executor process");
        return Ok(Built::Invalid);
    }
    if let Some(bad) = args
        .gpus
        .iter()
        .find(|g| g.is_empty() || !g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        eprintln!("error: --gpus: `{bad}` is not a GPU id (a list such as 0,1,2,3)");
        return Ok(Built::Invalid);
    }
    let jobs_root = || session.cache.area(Area::Jobs);
    let executor: Arc<dyn Executor> = match args.executor {
        ExecutorKind::Local => return Ok(Built::Ok(None)),
        ExecutorKind::Process => {
            if args.gpus.is_empty() {
                eprintln!(
                    "error: --executor process needs --gpus LIST (e.g. --gpus 0,1): one child \
                     at a time per GPU"
                );
                return Ok(Built::Invalid);
            }
            let threads = (jobs / args.gpus.len()).max(1);
            let launch = launch(dirs, session, std::env::current_exe()?)?;
            Arc::new(ProcessExecutor::new(
                args.gpus.clone(),
                threads,
                launch,
                &jobs_root()?,
            ))
        }
        ExecutorKind::Slurm => {
            let config = match &args.executor_config {
                Some(path) => match SiteConfig::load(path, registry.kinds()) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(Built::Invalid);
                    }
                },
                None => SiteConfig::default(),
            };
            let program = match &config.slurm.flow {
                Some(p) => p.clone(),
                None => std::env::current_exe()?,
            };
            let launch = launch(dirs, session, program)?;
            Arc::new(SlurmExecutor::new(
                config.slurm,
                launch,
                &jobs_root()?,
                cancel.clone(),
            ))
        }
    };
    Ok(Built::Ok(Some(executor)))
}

/// How jobs run `flow run-instance` for this run: the same manifest, profile, cache and
/// input folders, as absolute paths.
fn launch(dirs: &Dirs, session: &Session<'_>, program: PathBuf) -> Result<Launch> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let manifest = std::fs::canonicalize(&session.manifest.path)
        .with_context(|| format!("resolving {}", session.manifest.path.display()))?;
    let mut global = vec![
        "--cache-dir".to_string(),
        session.cache.root().to_string_lossy().into_owned(),
    ];
    for (flag, dir) in [
        ("--data-dir", &dirs.data_dir),
        ("--models-dir", &dirs.models_dir),
    ] {
        if let Some(d) = dir {
            global.push(flag.to_string());
            global.push(absolute(d).to_string_lossy().into_owned());
        }
    }
    let profile = session.plan.profile.clone();
    let manifest = manifest.to_string_lossy().into_owned();
    let args = move |job: &Job<'_>, via: &str, threads: Option<usize>| {
        let mut a = global.clone();
        a.extend(["run-instance".to_string(), manifest.clone()]);
        if let Some(p) = &profile {
            a.extend(["--profile".to_string(), p.clone()]);
        }
        a.extend([
            "--instance".to_string(),
            job.instance.to_string(),
            "--expect-key".to_string(),
            job.key.to_string(),
            "--via".to_string(),
            via.to_string(),
            "--run-holds-lock".to_string(),
        ]);
        if job.force {
            a.push("--force".to_string());
        }
        if let Some(t) = threads {
            a.extend(["--jobs".to_string(), t.to_string()]);
        }
        a
    };
    Ok(Launch {
        program,
        args: Box::new(args),
        workdir: std::env::current_dir()?,
    })
}

static CANCEL: OnceLock<CancelToken> = OnceLock::new();

/// SIGTERM (Slurm's scancel, a requeue, the run's Ctrl-C) and SIGINT stop the stage at its
/// next check; a training checkpoints first.
fn stop_on_signals(cancel: &CancelToken) {
    let _ = CANCEL.set(cancel.clone());
    #[cfg(unix)]
    {
        extern "C" fn on_signal(_: libc::c_int) {
            // Async-signal-safe: an atomic load and an atomic store.
            if let Some(c) = CANCEL.get() {
                c.cancel();
            }
        }
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only touches atomics; installed before any stage runs.
        unsafe {
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
    }
}

/// The cores Slurm gave this job, if it is one.
fn slurm_cpus() -> Option<usize> {
    ["SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"]
        .iter()
        .find_map(|v| {
            let text = std::env::var(v).ok()?;
            // `SLURM_JOB_CPUS_PER_NODE` may read `4(x2)`.
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok().filter(|&n| n > 0)
        })
}

fn hostname() -> Option<String> {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// `flow run-instance`: computes one instance into the cache (see flow_engine::instance).
pub fn run_instance_command(
    registry: &Registry,
    dirs: &Dirs,
    args: RunInstanceArgs,
) -> Result<ExitCode> {
    let cancel = CancelToken::default();
    stop_on_signals(&cancel);
    let (manifest, plan) = match load(registry, &args.manifest)? {
        Loaded::Ok(x) => x,
        Loaded::Invalid => return Ok(ExitCode::from(EXIT_USAGE)),
    };
    let root = flow_engine::project::project_root(&manifest.path);
    let cache: Cache = open_cache(dirs, &root, Access::ReadWrite)?;
    let env = env(dirs, &manifest, &cache);
    let session = Session::new(&manifest, plan, registry, &cache, env, root);
    let threads = args
        .jobs
        .or_else(slurm_cpus)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let gpus = var("CUDA_VISIBLE_DEVICES");
    let executed = args.via.as_deref().map(|via| Executed {
        kind: via.to_string(),
        job_id: match via {
            "slurm" => var("SLURM_JOB_ID").unwrap_or_else(|| "?".into()),
            _ => std::process::id().to_string(),
        },
        host: hostname(),
        gpus: gpus.clone(),
    });
    let shown = |v: Option<String>| v.unwrap_or_else(|| "(unset)".into());
    let seen = format!(
        "CUDA_VISIBLE_DEVICES={} SLURM_JOB_GPUS={}; {threads} threads",
        shown(gpus),
        shown(var("SLURM_JOB_GPUS")),
    );
    let who = match &executed {
        Some(e) => format!(
            "{} job {} on {}",
            e.kind,
            e.job_id,
            e.host.as_deref().unwrap_or("?")
        ),
        None => "flow run-instance".to_string(),
    };
    eprintln!(
        "flow run-instance: `{}` as {who}, the run's key {}; {seen}",
        args.instance, args.expect_key
    );
    let opts = InstanceOptions {
        instance: args.instance.clone(),
        expect_key: Some(args.expect_key.clone()),
        force: args.force,
        threads,
        cancel: cancel.clone(),
        executed,
        run_holds_lock: args.run_holds_lock,
        preamble: vec![format!("computed by {who}: {seen}")],
    };
    match run_instance(&session, &opts) {
        Ok(InstanceOutcome::Computed(r)) => {
            eprintln!(
                "flow run-instance: computed `{}` in {:.1}s; its record is {}",
                r.instance,
                r.duration_s,
                cache
                    .root()
                    .join("records")
                    .join(format!("{}.json", r.key))
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(InstanceOutcome::Cached(r)) => {
            eprintln!(
                "flow run-instance: `{}` was already in the cache (key {})",
                r.instance, r.key
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(match e {
                _ if cancel.is_cancelled() => EXIT_INTERRUPTED,
                InstanceError::UnknownInstance { .. } | InstanceError::KeyMismatch { .. } => {
                    EXIT_USAGE
                }
                _ => EXIT_FAILED,
            }))
        }
    }
}
