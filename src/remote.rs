//! `flow push`, `flow pull` and `flow run --remote` (read-through): the remote cache of
//! flow-remote, driven and printed.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use flow_cache::Cache;
use flow_engine::project::{default_cache_dir, find_root_from, project_root};
use flow_engine::{evaluate, Registry, Session, State};
use flow_remote::{Options, PullReport, PushReport, Remote, Tally};

use crate::cli::{Dirs, ManifestArgs};
use crate::commands::{env, load, open_cache, Access, Loaded, EXIT_FAILED, EXIT_USAGE};

/// Where the remote cache is (shared by `run`, `push` and `pull`).
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteOpts {
    /// Remote cache, s3://BUCKET[/PREFIX]; `run` pulls the records it needs from it before
    /// computing anything. Credentials, endpoint and region come from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION (README "Sharing a cache")
    #[arg(long, env = "FLOW_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Allow a plain-HTTP endpoint, e.g. a test server on this machine (or AWS_ALLOW_HTTP=true)
    #[arg(long)]
    pub allow_http: bool,
}

/// `flow push` / `flow pull`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Only what this manifest uses (push: its fresh instances; pull: what its plan needs);
    /// without it, every record
    pub manifest: Option<PathBuf>,
    /// With MANIFEST: apply the overrides of `[profile.NAME]`
    #[arg(long, short, requires = "manifest")]
    pub profile: Option<String>,
    #[command(flatten)]
    pub remote: RemoteOpts,
    /// Transfers in flight at once
    #[arg(long, short, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}

fn open_remote(opts: &RemoteOpts, jobs: usize) -> Result<Option<Remote>> {
    let Some(url) = &opts.remote else {
        return Ok(None);
    };
    let remote = Remote::open(
        url,
        Options {
            allow_http: opts.allow_http,
            jobs,
            ..Options::default()
        },
    )?;
    Ok(Some(remote))
}

fn require_remote(args: &TransferArgs) -> Result<Option<Remote>> {
    let remote = open_remote(&args.remote, usize::from(args.jobs))?;
    if remote.is_none() {
        eprintln!("error: no remote: pass --remote s3://BUCKET/PREFIX or set FLOW_REMOTE");
    }
    Ok(remote)
}

/// The cache without a manifest: `--cache-dir`, else `.flow/` of the project around the
/// current folder (as `flow gc`).
fn cache_dir(dirs: &Dirs) -> Result<PathBuf> {
    Ok(match &dirs.cache_dir {
        Some(d) => d.clone(),
        None => {
            let cwd = std::env::current_dir()?;
            default_cache_dir(&find_root_from(&cwd).unwrap_or(cwd))
        }
    })
}

/// Runs `f` on a session of the manifest; `None` when the manifest is invalid (printed).
fn with_session<T>(
    registry: &Registry,
    dirs: &Dirs,
    manifest: PathBuf,
    profile: Option<String>,
    f: impl FnOnce(&Session<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let args = ManifestArgs { manifest, profile };
    let (manifest, plan) = match load(registry, &args)? {
        Loaded::Ok(x) => x,
        Loaded::Invalid => return Ok(None),
    };
    let root = project_root(&manifest.path);
    let cache = open_cache(dirs, &root, Access::ReadWrite)?;
    let env = env(dirs, &manifest, &cache);
    let session = Session::new(&manifest, plan, registry, &cache, env, root);
    f(&session).map(Some)
}

pub fn push(registry: &Registry, dirs: &Dirs, args: TransferArgs) -> Result<ExitCode> {
    let Some(remote) = require_remote(&args)? else {
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let report = match args.manifest {
        Some(manifest) => {
            let pushed = with_session(registry, dirs, manifest, args.profile, |session| {
                let (rows, _) = evaluate(session);
                let keys: Vec<String> = rows
                    .into_iter()
                    .filter(|r| r.state == State::Fresh)
                    .filter_map(|r| r.key)
                    .collect();
                Ok(remote.push(session.cache, Some(&keys))?)
            })?;
            match pushed {
                Some(report) => report,
                None => return Ok(ExitCode::from(EXIT_USAGE)),
            }
        }
        None => {
            let dir = cache_dir(dirs)?;
            if !dir.is_dir() {
                eprintln!(
                    "error: no cache at {} (set --cache-dir or FLOW_CACHE_DIR)",
                    dir.display()
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let cache = Cache::open(&dir)
                .with_context(|| format!("opening the cache at {}", dir.display()))?;
            remote.push(&cache, None)?
        }
    };
    Ok(print_push(&remote, &report))
}

pub fn pull(registry: &Registry, dirs: &Dirs, args: TransferArgs) -> Result<ExitCode> {
    let Some(remote) = require_remote(&args)? else {
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let report = match args.manifest {
        Some(manifest) => {
            let pulled = with_session(registry, dirs, manifest, args.profile, |session| {
                pull_plan(session, &remote, &[], &[])
            })?;
            match pulled {
                Some(report) => report,
                None => return Ok(ExitCode::from(EXIT_USAGE)),
            }
        }
        None => {
            let dir = cache_dir(dirs)?;
            let cache = Cache::open(&dir)
                .with_context(|| format!("opening the cache at {}", dir.display()))?;
            remote.pull(&cache, None)?
        }
    };
    println!("{}", pull_line(&remote, &report));
    for e in &report.failed {
        eprintln!("error: {e}");
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `flow run --remote`: before anything is computed, pulls the records of the plan's
/// instances that are not fresh here (and their objects), level by level, since a key is
/// known only once its inputs are fresh. With `--stage`, only those instances and what they
/// need; `--force`d instances are not pulled. A remote that cannot be reached, or a record
/// that fails verification, is a warning: those instances are computed here.
pub fn read_through(
    session: &Session<'_>,
    opts: &RemoteOpts,
    targets: &[String],
    force: &[String],
    dry_run: bool,
) -> Result<()> {
    let Some(remote) = open_remote(opts, 16)? else {
        return Ok(());
    };
    if dry_run {
        eprintln!("remote {}: nothing pulled in a dry run", remote.url());
        return Ok(());
    }
    match pull_plan(session, &remote, targets, force) {
        Ok(report) => {
            // stderr: stdout keeps the run's own summary. Nothing asked, nothing said.
            let asked = report.pulled.records
                + report.already_here.records
                + report.not_on_remote
                + report.failed.len();
            if asked > 0 {
                eprintln!("{}", pull_line(&remote, &report));
            }
            for e in &report.failed {
                eprintln!("warning: {e}; computing it here");
            }
        }
        Err(e) => eprintln!(
            "warning: remote {} not used: {}",
            remote.url(),
            crate::error_chain(&e)
        ),
    }
    Ok(())
}

/// Pulls what the plan needs until a round pulls nothing new: each round's keys are those
/// of the instances not fresh here whose inputs are (so their key is known).
fn pull_plan(
    session: &Session<'_>,
    remote: &Remote,
    targets: &[String],
    force: &[String],
) -> Result<PullReport> {
    let plan = &session.plan;
    let wanted: Option<BTreeSet<usize>> = (!targets.is_empty()).then(|| {
        let mut todo: Vec<usize> = targets.iter().flat_map(|t| plan.select(t)).collect();
        let mut seen = BTreeSet::new();
        while let Some(i) = todo.pop() {
            if seen.insert(i) {
                todo.extend(plan.instances[i].inputs.values().flatten().copied());
            }
        }
        seen
    });
    let forced: BTreeSet<usize> = force.iter().flat_map(|f| plan.select(f)).collect();
    let mut tried = HashSet::new();
    let mut total = PullReport::default();
    loop {
        let (rows, _) = evaluate(session);
        let keys: Vec<String> = rows
            .into_iter()
            .enumerate()
            .filter(|(i, r)| {
                r.state != State::Fresh
                    && !forced.contains(i)
                    && wanted.as_ref().is_none_or(|w| w.contains(i))
            })
            .filter_map(|(_, r)| r.key)
            .filter(|k| tried.insert(k.clone()))
            .collect();
        if keys.is_empty() {
            break;
        }
        let report = remote.pull(session.cache, Some(&keys))?;
        let progressed = report.pulled.records > 0;
        total.merge(report);
        if !progressed {
            break;
        }
    }
    Ok(total)
}

fn print_push(remote: &Remote, r: &PushReport) -> ExitCode {
    println!(
        "pushed {} to {} in {}; already there: {}",
        tally(&r.pushed),
        remote.url(),
        rate(r.pushed.bytes, r.pushed.objects, r.elapsed),
        tally(&r.already_there),
    );
    for e in &r.failed {
        eprintln!("error: {e}");
    }
    if r.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn pull_line(remote: &Remote, r: &PullReport) -> String {
    format!(
        "pulled {} from {} in {}; already here: {}; not on the remote: {}{}",
        tally(&r.pulled),
        remote.url(),
        rate(r.pulled.bytes, r.pulled.objects, r.elapsed),
        tally(&r.already_here),
        r.not_on_remote,
        if r.failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", r.failed.len())
        }
    )
}

/// `3 records, 7 objects (12.4 MB)`.
fn tally(t: &Tally) -> String {
    format!(
        "{} record{}, {} object{} ({})",
        t.records,
        if t.records == 1 { "" } else { "s" },
        t.objects,
        if t.objects == 1 { "" } else { "s" },
        size(t.bytes)
    )
}

fn size(bytes: u64) -> String {
    match bytes {
        0..10_000 => format!("{bytes} bytes"),
        10_000..10_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        10_000_000..10_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// `1.3 s, 10.9 MB/s, 120 objects/s`.
fn rate(bytes: u64, objects: usize, elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64().max(1e-3);
    format!(
        "{s:.2} s, {:.1} MB/s, {:.0} objects/s",
        bytes as f64 / 1e6 / s,
        objects as f64 / s
    )
}
