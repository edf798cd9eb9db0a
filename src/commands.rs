//! One function per subcommand: load, call the libraries, print.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use flow_cache::Cache;
use flow_engine::project::{default_cache_dir, find_root_from, project_root};
use flow_engine::{
    evaluate, plan, CancelToken, Env, LoadError, Manifest, ManifestErrors, Registry, RunOptions,
    Session, State,
};

use crate::cli::{
    Cli, Command, Dirs, GcArgs, KindsArgs, ManifestArgs, RunArgs, ShowArgs, StatusArgs,
};

/// Exit codes: 0 done, 1 a stage failed, 2 bad input, 130 interrupted.
pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let mut registry = Registry::new();
    flow_stages::register_all(&mut registry);
    match cli.command {
        Command::Run(args) => run(&registry, &cli.dirs, args),
        Command::Status(args) => status(&registry, &cli.dirs, args),
        Command::Show(args) => show(&registry, &cli.dirs, args),
        Command::Check(args) => check(&registry, args),
        Command::Gc(args) => gc(&cli.dirs, args),
        Command::Kinds(args) => kinds(&registry, args),
        Command::Push(args) => crate::remote::push(&registry, &cli.dirs, args),
        Command::Pull(args) => crate::remote::pull(&registry, &cli.dirs, args),
        Command::RunInstance(args) => {
            crate::executors::run_instance_command(&registry, &cli.dirs, args)
        }
    }
}

/// A manifest problem is printed with its snippets; the caller exits with 2.
pub(crate) enum Loaded<T> {
    Ok(T),
    Invalid,
}

fn print_invalid(errors: &ManifestErrors) {
    eprint!("{}", errors.render());
    let n = errors.diagnostics.len();
    eprintln!(
        "error: {n} problem{} in {}",
        if n == 1 { "" } else { "s" },
        errors.path.display()
    );
}

pub(crate) fn load(
    registry: &Registry,
    args: &ManifestArgs,
) -> Result<Loaded<(Manifest, flow_engine::Plan)>> {
    let manifest = match Manifest::load(&args.manifest, registry) {
        Ok(m) => m,
        Err(LoadError::Invalid(errors)) => {
            print_invalid(&errors);
            return Ok(Loaded::Invalid);
        }
        Err(e) => return Err(e.into()),
    };
    match plan(&manifest, registry, args.profile.as_deref()) {
        Ok(p) => Ok(Loaded::Ok((manifest, p))),
        Err(errors) => {
            print_invalid(&errors);
            Ok(Loaded::Invalid)
        }
    }
}

/// How a command uses the cache: `status` and `show` only read it, so they work on a
/// read-only or full disk and never race gc over the files they would write.
#[derive(Clone, Copy)]
pub(crate) enum Access {
    ReadWrite,
    ReadOnly,
}

pub(crate) fn open_cache(dirs: &Dirs, root: &Path, access: Access) -> Result<Cache> {
    let dir = dirs
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(root));
    let cache = match access {
        Access::ReadWrite => Cache::open(&dir),
        Access::ReadOnly => Cache::open_read_only(&dir),
    };
    cache.with_context(|| format!("opening the cache at {}", dir.display()))
}

pub(crate) fn env(dirs: &Dirs, manifest: &Manifest, cache: &Cache) -> Env {
    Env {
        data_dir: dirs.data_dir.clone(),
        models_dir: dirs.models_dir.clone(),
        manifest_dir: manifest
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        cache_dir: cache.root().to_path_buf(),
    }
}

macro_rules! session {
    ($registry:expr, $dirs:expr, $args:expr, $access:expr, $manifest:ident, $cache:ident, $session:ident) => {
        let (manifest_, plan_) = match load($registry, $args)? {
            Loaded::Ok(x) => x,
            Loaded::Invalid => return Ok(ExitCode::from(EXIT_USAGE)),
        };
        let $manifest = manifest_;
        let root = project_root(&$manifest.path);
        let $cache = open_cache($dirs, &root, $access)?;
        let env = env($dirs, &$manifest, &$cache);
        let mut $session = Session::new(&$manifest, plan_, $registry, &$cache, env, root);
        $session.results_override = $dirs.results_dir.clone();
    };
}

fn run(registry: &Registry, dirs: &Dirs, args: RunArgs) -> Result<ExitCode> {
    session!(
        registry,
        dirs,
        &args.manifest,
        Access::ReadWrite,
        manifest,
        cache,
        session
    );
    let cancel = CancelToken::default();
    {
        let cancel = cancel.clone();
        // First Ctrl-C: finish cleanly (running stages stop at their next
        // check, finished ones stay cached). Second: leave at once.
        let _ = ctrlc::set_handler(move || {
            if cancel.is_cancelled() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            eprintln!("\ninterrupted: stopping after running stages notice; press Ctrl-C again to quit now");
            cancel.cancel();
        });
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // `--remote`: pull what the plan needs before anything is computed.
    crate::remote::read_through(
        &session,
        &args.remote,
        &args.stages,
        &args.force,
        args.dry_run,
    )?;
    let executor =
        match crate::executors::build(registry, dirs, &session, &args.executor, jobs, &cancel)? {
            crate::executors::Built::Ok(e) => e,
            crate::executors::Built::Invalid => return Ok(ExitCode::from(EXIT_USAGE)),
        };
    let opts = RunOptions {
        jobs,
        targets: args.stages,
        force: args.force,
        dry_run: args.dry_run,
        cancel,
        progress: !args.no_progress,
        executor,
    };
    let report = match flow_engine::run(&session, &opts) {
        Ok(r) => r,
        Err(flow_engine::RunError::UnknownTarget { name, help }) => {
            eprintln!(
                "error: no stage or instance named `{name}` in {}{}",
                manifest.path.display(),
                help.map(|h| format!("; {h}")).unwrap_or_default()
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    if args.dry_run {
        if report.planned.is_empty() {
            println!("nothing to run: everything is fresh");
        }
        for (name, reason) in &report.planned {
            println!("would run {name}: {reason}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} ran, {} cached, {} failed, {} skipped",
        manifest.name,
        report.ran.len(),
        report.cached.len(),
        report.failed.len(),
        report.skipped.len()
    );
    if let Some(line) = opts.executor.as_ref().and_then(|e| e.summary()) {
        eprintln!("{line}");
    }
    for (name, err) in &report.failed {
        eprintln!("error: stage `{name}` failed: {err}");
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    if !report.skipped.is_empty() && !report.cancelled {
        eprintln!("skipped (an input failed): {}", report.skipped.join(", "));
    }
    if report.cancelled {
        eprintln!("interrupted: finished stages are cached; run again to continue");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if !report.failed.is_empty() || !report.problems.is_empty() {
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(registry: &Registry, dirs: &Dirs, args: StatusArgs) -> Result<ExitCode> {
    session!(
        registry,
        dirs,
        &args.manifest,
        Access::ReadOnly,
        manifest,
        cache,
        session
    );
    session.verify = args.verify;
    let (rows, _) = evaluate(&session);
    cache.flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let count = |s: State| rows.iter().filter(|r| r.state == s).count();
    println!(
        "{}{}: {} instances: {} fresh, {} stale, {} failed",
        manifest.name,
        session
            .plan
            .profile
            .as_ref()
            .map(|p| format!(" (profile {p})"))
            .unwrap_or_default(),
        rows.len(),
        count(State::Fresh),
        count(State::Stale),
        count(State::Failed)
    );
    let width = rows.iter().map(|r| r.instance.len()).max().unwrap_or(0);
    for r in &rows {
        println!(
            "  {:<6} {:<width$}  {}",
            r.state.as_str(),
            r.instance,
            r.reason
        );
    }
    let results = session.results_dir();
    if results.is_dir() {
        println!("results in {}:", results.display());
        let mut files = Vec::new();
        flow_engine::publish::list_files(&results, &mut files);
        files.sort();
        for f in &files {
            println!("  {}", f.strip_prefix(&results).unwrap_or(f).display());
        }
        print_findings(&results, &files);
    }
    Ok(ExitCode::SUCCESS)
}

/// The verdicts of the findings a run published (`findings.json` of `findings` stages).
fn print_findings(results: &Path, files: &[PathBuf]) {
    for f in files.iter().filter(|f| f.ends_with("findings.json")) {
        let Some(doc) = std::fs::read(f)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        let Some(list) = doc["findings"].as_array() else {
            continue;
        };
        println!(
            "findings ({}):",
            f.strip_prefix(results).unwrap_or(f).display()
        );
        for finding in list {
            println!(
                "  {:<12} {}",
                finding["verdict"].as_str().unwrap_or("?"),
                finding["claim"].as_str().unwrap_or("")
            );
        }
    }
}

fn show(registry: &Registry, dirs: &Dirs, args: ShowArgs) -> Result<ExitCode> {
    session!(
        registry,
        dirs,
        &args.manifest,
        Access::ReadOnly,
        manifest,
        cache,
        session
    );
    let selected = session.plan.select(&args.stage);
    if selected.is_empty() {
        let names = session
            .plan
            .instances
            .iter()
            .flat_map(|i| [i.stage.as_str(), i.name.as_str()]);
        let help = flow_engine::diag::near_miss(&args.stage, names)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        eprintln!(
            "error: no stage or instance named `{}` in {}{help}",
            args.stage,
            manifest.path.display()
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let (rows, _) = evaluate(&session);
    let mut shown = Vec::new();
    for i in selected {
        let inst = &session.plan.instances[i];
        let row = &rows[i];
        let record = row.key.as_deref().and_then(|k| match cache.read_record(k) {
            flow_cache::RecordState::Ok(r) => Some(r),
            _ => None,
        });
        let failure = row.key.as_deref().and_then(|k| cache.read_failure(k));
        let params: serde_json::Map<String, serde_json::Value> = inst
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        let inputs: serde_json::Map<String, serde_json::Value> = inst
            .inputs
            .iter()
            .map(|(k, ups)| {
                let names: Vec<serde_json::Value> = ups
                    .iter()
                    .map(|u| session.plan.instances[*u].name.clone().into())
                    .collect();
                (k.clone(), names.into())
            })
            .collect();
        let outputs: serde_json::Map<String, serde_json::Value> = record
            .as_ref()
            .map(|r| {
                r.outputs
                    .iter()
                    .map(|(name, o)| {
                        (
                            name.clone(),
                            serde_json::json!({
                                "path": cache.object_path(&o.hash),
                                "hash": o.hash,
                                "size": o.size,
                                "published": o.publish,
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        shown.push(serde_json::json!({
            "stage": inst.stage,
            "instance": inst.name,
            "kind": inst.kind,
            "state": row.state,
            "reason": row.reason,
            "key": row.key,
            "seed": inst.seed,
            "params": params,
            "inputs": inputs,
            "outputs": outputs,
            "metrics": record.as_ref().map(|r| serde_json::Value::Object(r.metrics.clone())),
            "log": record.as_ref().map(|r| r.log.clone()),
            "duration_s": record.as_ref().map(|r| r.duration_s),
            "executor": record.as_ref().and_then(|r| r.executor.clone()),
            "last_error": failure.map(|f| f.error),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &shown {
        println!(
            "{}  ({}, {})",
            s["instance"].as_str().unwrap_or(""),
            s["kind"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or("")
        );
        if let Some(reason) = s["reason"].as_str().filter(|r| !r.is_empty()) {
            println!("  why:      {reason}");
        }
        if let Some(key) = s["key"].as_str() {
            println!("  key:      {key}");
        }
        print_map("params", &s["params"]);
        print_map("inputs", &s["inputs"]);
        if let Some(outputs) = s["outputs"].as_object().filter(|o| !o.is_empty()) {
            println!("  outputs:");
            for (name, o) in outputs {
                println!(
                    "    {name}: {} ({} bytes)",
                    o["path"].as_str().unwrap_or(""),
                    o["size"]
                );
            }
        }
        print_map("metrics", &s["metrics"]);
        if let Some(d) = s["duration_s"].as_f64() {
            println!("  took:     {d:.2}s");
        }
        if let Some(e) = s["executor"].as_object() {
            let field = |k: &str| e.get(k).and_then(|v| v.as_str());
            println!(
                "  computed by: {} job {}{}{}",
                field("kind").unwrap_or("?"),
                field("job_id").unwrap_or("?"),
                field("host")
                    .map(|h| format!(" on {h}"))
                    .unwrap_or_default(),
                field("gpus")
                    .map(|g| format!(" (GPUs {g})"))
                    .unwrap_or_default()
            );
        }
        if let Some(err) = s["last_error"].as_str() {
            println!("  last error: {err}");
        }
        if let Some(log) = s["log"].as_array().filter(|l| !l.is_empty()) {
            println!("  log:");
            for line in log {
                println!("    {}", line.as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_map(title: &str, value: &serde_json::Value) {
    let Some(map) = value.as_object().filter(|m| !m.is_empty()) else {
        return;
    };
    println!("  {title}:");
    for (k, v) in map {
        println!("    {k} = {v}");
    }
}

fn check(registry: &Registry, args: ManifestArgs) -> Result<ExitCode> {
    match load(registry, &args)? {
        Loaded::Ok((m, p)) => {
            println!(
                "{}: ok ({} stages, {} instances)",
                args.manifest.display(),
                m.stages.len(),
                p.instances.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Loaded::Invalid => Ok(ExitCode::from(EXIT_USAGE)),
    }
}

fn gc(dirs: &Dirs, args: GcArgs) -> Result<ExitCode> {
    let dir = match &dirs.cache_dir {
        Some(d) => d.clone(),
        None => {
            let cwd = std::env::current_dir()?;
            let root = find_root_from(&cwd).unwrap_or(cwd);
            default_cache_dir(&root)
        }
    };
    if !dir.is_dir() {
        eprintln!(
            "error: no cache at {} (set --cache-dir or FLOW_CACHE_DIR)",
            dir.display()
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // A dry run opens read-only: it creates, locks and deletes nothing.
    let cache = if args.dry_run {
        Cache::open_read_only(&dir)
    } else {
        Cache::open(&dir)
    }
    .with_context(|| format!("opening the cache at {}", dir.display()))?;
    let report = cache.gc_with_grace(args.dry_run, std::time::Duration::from_secs(args.grace))?;
    println!(
        "{}{} records and {} objects ({:.1} MB), {} work folders; kept {} records, {} objects",
        if args.dry_run {
            "would remove "
        } else {
            "removed "
        },
        report.records_removed,
        report.objects_removed,
        report.bytes_freed as f64 / 1e6,
        report.work_dirs_removed,
        report.records_kept,
        report.objects_kept
    );
    if report.young_kept > 0 {
        println!(
            "left {} unreachable entries younger than {} s alone (another machine may be \
             writing them; `--grace 0` removes them)",
            report.young_kept, args.grace
        );
    }
    // The generation journals under `<cache>/journal`: the base and the finished
    // segments merged, only readable lines, the last answer per key; the segments of
    // running writers (and other hosts' younger than the grace) are left alone.
    for (path, r) in flow_generate::Journal::compact_all(
        &cache.root().join(flow_cache::Area::Journal.dir_name()),
        args.dry_run,
        std::time::Duration::from_secs(args.grace),
    )? {
        if r.locked {
            println!(
                "journal {}: another compaction holds it, not compacted",
                path.display()
            );
            continue;
        }
        let (drop_verb, merge_verb) = if args.dry_run {
            ("would drop", "would merge")
        } else {
            ("dropped", "merged")
        };
        println!(
            "journal {}: {drop_verb} {} lines ({} unreadable, {} superseded); kept {} answers; \
             {merge_verb} {} finished segments, left {} live",
            path.display(),
            r.dropped(),
            r.skipped,
            r.superseded,
            r.kept,
            r.segments_merged,
            r.segments_live
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn kinds(registry: &Registry, args: KindsArgs) -> Result<ExitCode> {
    let mut kinds: Vec<&str> = registry.kinds().collect();
    if let Some(k) = &args.kind {
        if registry.get(k).is_none() {
            eprintln!(
                "error: unknown stage kind `{k}`; kinds are {}",
                kinds.join(", ")
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        kinds = vec![k.as_str()];
    }
    for kind in kinds {
        let Some(stage) = registry.get(kind) else {
            continue;
        };
        println!("{kind} (v{}): {}", stage.version(), stage.about());
        if args.kind.is_some() {
            for p in stage.params() {
                let default = p
                    .default
                    .as_ref()
                    .map(|d| format!(" [default: {d}]"))
                    .unwrap_or_default();
                let req = if p.required { " (required)" } else { "" };
                let bounds = p
                    .describe_bounds()
                    .map(|b| format!(" [{b}]"))
                    .unwrap_or_default();
                println!(
                    "  {:<16} {}{req}{default}{bounds}\n  {:<16} {}",
                    p.name,
                    p.ty.describe(),
                    "",
                    p.help
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
