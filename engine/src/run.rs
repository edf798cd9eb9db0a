//! `flow run`: executes stale instances in dependency order, in parallel up to
//! `-j N` cores, caching each result the moment it finishes.
//!
//! A failed instance records its error and skips only its dependents; every
//! other branch still runs, and everything finished stays cached. Ctrl-C stops
//! dispatching, lets running stages notice the cancellation, and keeps what
//! finished.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flow_cache::{CacheError, Executed, Failure, ObjectState, OutputRef, Record};

use crate::diag::near_miss;
use crate::executor::{Executor, Job};
use crate::progress::Bars;
use crate::publish::publish;
use crate::schedule;
use crate::session::{Cached, Keyed, Session};
use crate::stage::{CancelToken, Context, StageError, Threads};
use crate::status::{evaluate, State};

pub struct RunOptions {
    /// Cores to use at once.
    pub jobs: usize,
    /// Stage or instance names to bring up to date (with their upstream);
    /// empty means everything.
    pub targets: Vec<String>,
    /// Stage or instance names to recompute even if fresh.
    pub force: Vec<String>,
    pub dry_run: bool,
    pub cancel: CancelToken,
    /// Draw progress bars (when stderr is a terminal).
    pub progress: bool,
    /// Where the instances it delegates are computed (`--executor slurm|process`); the
    /// others, and all of them without one, are computed in this process.
    pub executor: Option<Arc<dyn Executor>>,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub ran: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Not run because an input failed, or the run was cancelled first.
    pub skipped: Vec<String>,
    /// `--dry-run`: what would run, and why.
    pub planned: Vec<(String, String)>,
    pub cancelled: bool,
    pub published: Vec<std::path::PathBuf>,
    /// What went wrong after the stages ran (recording keys, publishing results); what
    /// the stages computed is cached regardless.
    pub problems: Vec<String>,
}

impl RunReport {
    pub fn success(&self) -> bool {
        self.failed.is_empty()
            && !self.cancelled
            && self.skipped.is_empty()
            && self.problems.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no stage or instance named `{name}`{}", .help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnknownTarget { name: String, help: Option<String> },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

enum Slot {
    Pending,
    Running,
    Done(Box<Record>),
    Failed(Option<String>),
    Skipped,
}

pub(crate) enum Finished {
    Cached(Box<Record>),
    Ran(Box<Record>),
    /// The key is known unless computing it failed; it roots the instance's
    /// work folder (checkpoints) against `flow gc`.
    Failed {
        error: String,
        key: Option<String>,
    },
}

/// Runs what `opts` selects: settles the fresh instances, dispatches the rest in
/// dependency order (each finished record is cached and rooted as it is written), then
/// records the run's keys in the refs and publishes the results.
pub fn run(session: &Session<'_>, opts: &RunOptions) -> Result<RunReport, RunError> {
    let (selected, forced) = selection(session, opts)?;
    if opts.dry_run {
        return Ok(dry_run(session, &selected, &forced));
    }
    let _guard = session.cache.run_guard()?;
    let mut report = RunReport::default();
    let mut slots = settle_fresh(session, &selected, &forced, &mut report);
    dispatch(session, opts, &selected, &forced, &mut slots, &mut report);
    finish(session, opts, &selected, &slots, &mut report);
    Ok(report)
}

/// Which instances the run covers (the targets and their upstream, or all) and which it
/// recomputes even if fresh.
fn selection(session: &Session<'_>, opts: &RunOptions) -> Result<(Vec<bool>, Vec<bool>), RunError> {
    let plan = &session.plan;
    let n = plan.instances.len();
    let selected = match resolve_names(session, &opts.targets)? {
        None => vec![true; n],
        Some(targets) => plan.with_upstream(&targets),
    };
    let mut forced = vec![false; n];
    if let Some(f) = resolve_names(session, &opts.force)? {
        for i in f {
            forced[i] = true;
        }
    }
    Ok((selected, forced))
}

/// `--dry-run`: what would run, and why; nothing is written.
fn dry_run(session: &Session<'_>, selected: &[bool], forced: &[bool]) -> RunReport {
    let mut report = RunReport::default();
    let (rows, _) = evaluate(session);
    for (i, row) in rows.iter().enumerate() {
        if !selected[i] {
            continue;
        }
        if forced[i] {
            report.planned.push((row.instance.clone(), "forced".into()));
        } else if row.state != State::Fresh {
            report
                .planned
                .push((row.instance.clone(), row.reason.clone()));
        }
    }
    report
}

/// Settles fresh instances up front (unless forced, or downstream of a forced one), so a
/// no-op run spawns nothing: their slots are done, everything else pending.
fn settle_fresh(
    session: &Session<'_>,
    selected: &[bool],
    forced: &[bool],
    report: &mut RunReport,
) -> Vec<Slot> {
    let plan = &session.plan;
    let mut slots: Vec<Slot> = (0..plan.instances.len()).map(|_| Slot::Pending).collect();
    let tainted = downstream_closure(plan, forced);
    let (_, fresh) = evaluate(session);
    for (i, record) in fresh {
        if selected[i] && !tainted[i] {
            report.cached.push(plan.instances[i].name.clone());
            slots[i] = Slot::Done(Box::new(record));
        }
    }
    slots
}

/// The distinct upstream instances of instance `i`.
fn distinct_inputs(plan: &crate::plan::Plan, i: usize) -> Vec<usize> {
    let mut ups: Vec<usize> = plan.instances[i]
        .inputs
        .values()
        .flatten()
        .copied()
        .collect();
    ups.sort_unstable();
    ups.dedup();
    ups
}

/// Runs the pending selected instances, each once its inputs are done, keeping `-j`
/// cores busy; a failure skips its downstream only. Returns when nothing runs and
/// nothing can start (everything finished, or cancelled).
fn dispatch(
    session: &Session<'_>,
    opts: &RunOptions,
    selected: &[bool],
    forced: &[bool],
    slots: &mut [Slot],
    report: &mut RunReport,
) {
    let plan = &session.plan;
    let n = plan.instances.len();
    let jobs = opts.jobs.max(1);
    let mut waiting = vec![0usize; n];
    let mut ready = Vec::new();
    for &i in &plan.order {
        if selected[i] && matches!(slots[i], Slot::Pending) {
            waiting[i] = distinct_inputs(plan, i)
                .into_iter()
                .filter(|&u| !matches!(slots[u], Slot::Done(_)))
                .count();
            if waiting[i] == 0 {
                ready.push(i);
            }
        }
    }
    let total = slots
        .iter()
        .enumerate()
        .filter(|(i, s)| selected[*i] && matches!(s, Slot::Pending))
        .count() as u64;
    let bars = Bars::new(opts.progress && total > 0, total);
    let unblocks = schedule::unblocked_counts(plan, selected);
    let threads_of = |i: usize| {
        let inst = &plan.instances[i];
        session
            .stage_of(inst)
            .threads(&inst.params, &plan.resources)
    };
    let weight_of = |i: usize| match threads_of(i) {
        Threads::One => 1,
        Threads::Exactly(k) => k.clamp(1, jobs),
        Threads::All => jobs,
    };
    // Instances that go to the executor's jobs take a job slot, not local cores.
    let executor = opts.executor.as_deref();
    let delegated: Vec<bool> = (0..n)
        .map(|i| executor.is_some_and(|e| e.delegates(&plan.instances[i].kind, threads_of(i))))
        .collect();
    let max_jobs = executor.map_or(0, |e| e.max_jobs().max(1));
    let mut free = jobs;
    let mut in_flight = 0usize;
    let mut running = 0usize;
    let (tx, rx) = mpsc::channel::<(usize, usize, Finished)>();

    std::thread::scope(|scope| {
        loop {
            // Start ready instances, most unblocking first, while they fit in the free
            // cores or job slots (one always starts when nothing runs, whatever its weight).
            while !opts.cancel.is_cancelled() {
                let fits = |i: usize| {
                    if delegated[i] {
                        in_flight < max_jobs
                    } else {
                        weight_of(i) <= free
                    }
                };
                let Some(pos) = schedule::pick(&ready, &unblocks, fits, running == 0) else {
                    break;
                };
                let i = ready.remove(pos);
                let weight = weight_of(i);
                let upstream: BTreeMap<usize, Record> = distinct_inputs(plan, i)
                    .into_iter()
                    .filter_map(|u| match &slots[u] {
                        Slot::Done(r) => Some((u, (**r).clone())),
                        _ => None,
                    })
                    .collect();
                slots[i] = Slot::Running;
                if delegated[i] {
                    in_flight += 1;
                } else {
                    free = free.saturating_sub(weight);
                }
                running += 1;
                let tx = tx.clone();
                let force = forced[i];
                let bars = &bars;
                let executor = if delegated[i] { executor } else { None };
                scope.spawn(move || {
                    let work = Work {
                        session,
                        i,
                        upstream: &upstream,
                        force,
                        threads: weight,
                        cancel: &opts.cancel,
                        bars,
                    };
                    let result = execute(&work, executor);
                    let _ = tx.send((i, weight, result));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((i, weight, result)) = rx.recv() else {
                break;
            };
            running -= 1;
            if delegated[i] {
                in_flight -= 1;
            } else {
                free += weight;
            }
            bars.finish_one();
            let name = plan.instances[i].name.clone();
            let ok = match result {
                Finished::Cached(r) => {
                    report.cached.push(name);
                    slots[i] = Slot::Done(r);
                    true
                }
                Finished::Ran(r) => {
                    let via = r
                        .executor
                        .as_ref()
                        .map(|e| format!(", {} job {}", e.kind, e.job_id))
                        .unwrap_or_default();
                    bars.println(&format!("  ran  {name} ({:.1}s{via})", r.duration_s));
                    report.ran.push(name);
                    slots[i] = Slot::Done(r);
                    true
                }
                Finished::Failed { error, key } => {
                    bars.println(&format!("  FAILED  {name}: {error}"));
                    report.failed.push((name, error));
                    slots[i] = Slot::Failed(key);
                    false
                }
            };
            if ok {
                for d in plan.downstream(i) {
                    if selected[d] && matches!(slots[d], Slot::Pending) {
                        waiting[d] -= 1;
                        if waiting[d] == 0 {
                            ready.push(d);
                        }
                    }
                }
            } else {
                // Everything downstream of a failure is skipped; other branches go on.
                let mut stack = plan.downstream(i);
                while let Some(d) = stack.pop() {
                    if selected[d] && matches!(slots[d], Slot::Pending) {
                        slots[d] = Slot::Skipped;
                        report.skipped.push(plan.instances[d].name.clone());
                        bars.finish_one();
                        stack.extend(plan.downstream(d));
                    }
                }
            }
        }
    });
    bars.clear();
}

/// After the dispatch: what never ran counts as skipped, the refs name every instance's
/// latest key, and the results are published. Problems here (a full disk, say) go to
/// `report.problems`, beside the run's summary: what finished is cached regardless.
fn finish(
    session: &Session<'_>,
    opts: &RunOptions,
    selected: &[bool],
    slots: &[Slot],
    report: &mut RunReport,
) {
    let plan = &session.plan;
    report.cancelled = opts.cancel.is_cancelled();
    for (i, slot) in slots.iter().enumerate() {
        if selected[i] && matches!(slot, Slot::Pending | Slot::Running) {
            report.skipped.push(plan.instances[i].name.clone());
        }
    }
    let done: BTreeMap<usize, &Record> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Done(r) => Some((i, r.as_ref())),
            _ => None,
        })
        .collect();
    record_refs(session, slots, &done, report);
    match publish(session, &done) {
        Ok(published) => report.published = published,
        Err(e) => report.problems.push(e.to_string()),
    }
    if let Err(e) = session.cache.flush() {
        tracing::warn!("writing the stat cache: {e}");
    }
}

/// Refs name each instance's latest key; instances no longer in the manifest drop out, so
/// gc can collect them. (Each finished instance was already rooted when its record was
/// written; this settles the rest.) Written only when something changed.
fn record_refs(
    session: &Session<'_>,
    slots: &[Slot],
    done: &BTreeMap<usize, &Record>,
    report: &mut RunReport,
) {
    let plan = &session.plan;
    let failed_keys: Vec<(usize, &String)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Failed(Some(k)) => Some((i, k)),
            _ => None,
        })
        .collect();
    let names: std::collections::HashSet<&str> =
        plan.instances.iter().map(|i| i.name.as_str()).collect();
    let update = |refs: &mut flow_cache::Refs| {
        set_scope(session, refs);
        refs.instances
            .retain(|name, _| names.contains(name.as_str()));
        refs.running.retain(|name, _| names.contains(name.as_str()));
        for (&i, r) in done {
            let name = &plan.instances[i].name;
            refs.instances.insert(name.clone(), r.key.clone());
            refs.running.remove(name);
        }
        for &(i, key) in &failed_keys {
            let name = &plan.instances[i].name;
            refs.instances.insert(name.clone(), key.clone());
            refs.running.remove(name);
        }
    };
    let current = session.cache.read_refs(&session.scope);
    let mut wanted = current.clone();
    update(&mut wanted);
    if wanted != current {
        if let Err(e) = session.cache.update_refs(&session.scope, update) {
            report
                .problems
                .push(format!("recording this run's keys: {e}"));
        }
    }
}

/// Records `inst`'s finished key in the refs (and drops it from `running`), so gc keeps
/// it even if the run dies later; a failure is only logged: the record is in the cache.
fn root_in_refs(session: &Session<'_>, inst: &crate::plan::Instance, key: &str) {
    let rooted = session.cache.update_refs(&session.scope, |refs| {
        set_scope(session, refs);
        refs.instances.insert(inst.name.clone(), key.to_string());
        refs.running.remove(&inst.name);
    });
    if let Err(e) = rooted {
        tracing::warn!("rooting {} in the refs: {e}", inst.name);
    }
}

/// Names the manifest and profile in refs: gc keeps refs whose manifest exists.
fn set_scope(session: &Session<'_>, refs: &mut flow_cache::Refs) {
    refs.manifest =
        std::fs::canonicalize(&session.manifest.path).unwrap_or(session.manifest.path.clone());
    refs.profile = session.plan.profile.clone();
}

/// `roots` and everything downstream of them.
fn downstream_closure(plan: &crate::plan::Plan, roots: &[bool]) -> Vec<bool> {
    let mut out = roots.to_vec();
    for &i in &plan.order {
        if !out[i] && plan.instances[i].inputs.values().flatten().any(|&u| out[u]) {
            out[i] = true;
        }
    }
    out
}

/// Instance indices for stage or instance names; None when `names` is empty.
fn resolve_names(session: &Session<'_>, names: &[String]) -> Result<Option<Vec<usize>>, RunError> {
    if names.is_empty() {
        return Ok(None);
    }
    let plan = &session.plan;
    let mut out = Vec::new();
    for name in names {
        let found = plan.select(name);
        if found.is_empty() {
            let candidates = plan
                .instances
                .iter()
                .flat_map(|i| [i.stage.as_str(), i.name.as_str()]);
            return Err(RunError::UnknownTarget {
                name: name.clone(),
                help: near_miss(name, candidates).map(|n| format!("did you mean `{n}`?")),
            });
        }
        out.extend(found);
    }
    Ok(Some(out))
}

/// One instance to bring up to date, with what it needs.
pub(crate) struct Work<'a, 's> {
    pub session: &'a Session<'s>,
    pub i: usize,
    /// The records of its distinct upstream instances.
    pub upstream: &'a BTreeMap<usize, Record>,
    /// Recompute even if the cache holds its key.
    pub force: bool,
    pub threads: usize,
    pub cancel: &'a CancelToken,
    pub bars: &'a Bars,
}

/// Brings one instance up to date: its key, then the cache, else (holding the key's lock,
/// so concurrent runs compute it once) computes it here or in a job of `executor`.
fn execute(work: &Work<'_, '_>, executor: Option<&dyn Executor>) -> Finished {
    let session = work.session;
    let keyed = match session.key(work.i, work.upstream) {
        Ok(k) => k,
        Err(e) => {
            return Finished::Failed {
                error: e.to_string(),
                key: None,
            }
        }
    };
    if !work.force {
        if let Cached::Fresh(r) = session.cached(&keyed.key) {
            return Finished::Cached(r);
        }
    }
    // Another `flow run` may be computing this key: wait for it, then reuse.
    let _lock = match session.cache.lock_key(&keyed.key) {
        Ok(l) => l,
        Err(e) => {
            return Finished::Failed {
                error: e.to_string(),
                key: Some(keyed.key),
            }
        }
    };
    if !work.force {
        if let Cached::Fresh(r) = session.cached(&keyed.key) {
            return Finished::Cached(r);
        }
    }
    match executor {
        Some(executor) => delegate(work, &keyed, executor),
        None => compute(work, &keyed, None, Vec::new()),
    }
}

/// Computes an instance in a job of `executor` (the key's lock held here): the job
/// re-plans, checks that it finds the same key, and writes the record; success is that
/// record in the cache.
fn delegate(work: &Work<'_, '_>, keyed: &Keyed, executor: &dyn Executor) -> Finished {
    let session = work.session;
    let inst = &session.plan.instances[work.i];
    let fail = |error: String| {
        let _ = session.cache.write_failure(&Failure {
            key: keyed.key.clone(),
            stage: inst.stage.clone(),
            instance: inst.name.clone(),
            error: error.clone(),
            unix: unix_now(),
            key_fields: Some(keyed.key_fields.clone()),
        });
        Finished::Failed {
            error,
            key: Some(keyed.key.clone()),
        }
    };
    // Rooted before the job starts, so `flow gc` keeps the job's checkpoints.
    let rooted = session.cache.update_refs(&session.scope, |refs| {
        set_scope(session, refs);
        refs.running.insert(inst.name.clone(), keyed.key.clone());
    });
    if let Err(e) = rooted {
        return fail(e.to_string());
    }
    let progress = work.bars.stage(&inst.name);
    let job = Job {
        instance: &inst.name,
        kind: &inst.kind,
        key: &keyed.key,
        force: work.force,
        threads: work.threads,
        cancel: work.cancel,
        progress: &progress,
    };
    let outcome = executor.run(&job);
    drop(progress);
    // A forced job that failed may leave the record it was to replace: not a success.
    let record = match session.cached(&keyed.key) {
        Cached::Fresh(r) if outcome.is_ok() || !work.force => r,
        _ => {
            return fail(match outcome {
                Ok(job_id) => format!(
                    "{} job {job_id} for `{}` exited successfully but left no record of key {} \
                     in the cache {} (does the job see the same cache?)",
                    executor.name(),
                    inst.name,
                    keyed.key,
                    session.cache.root().display()
                ),
                Err(e) => e.to_string(),
            })
        }
    };
    if let Err(e) = &outcome {
        tracing::warn!("{e}; its record is in the cache all the same");
    }
    root_in_refs(session, inst, &keyed.key);
    Finished::Ran(record)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Computes an instance in this process, its key's lock held: checks its inputs, runs the
/// stage, stores the outputs and writes the record (naming `executed`, the job this is,
/// if any; `preamble` opens its log).
pub(crate) fn compute(
    work: &Work<'_, '_>,
    keyed: &Keyed,
    executed: Option<Executed>,
    preamble: Vec<String>,
) -> Finished {
    let Work {
        session,
        i,
        upstream,
        threads,
        cancel,
        bars,
        ..
    } = *work;
    let inst = &session.plan.instances[i];
    let fail = |error: String| Finished::Failed {
        error,
        key: Some(keyed.key.clone()),
    };
    if let Cached::Damaged { record, .. } = session.cached(&keyed.key) {
        // Drop damaged objects so the rerun stores good copies.
        for out in record.outputs.values() {
            if let ObjectState::Corrupt { .. } = session.cache.check_object(&out.hash) {
                let _ = session.cache.remove_object(&out.hash);
            }
        }
    }
    // Status trusts an object's (size, mtime) stamp; what a stage reads is
    // rehashed in full first. A damaged input is removed so the next run
    // recomputes it.
    for (u, record) in upstream {
        for (name, out) in &record.outputs {
            let upstream_name = &session.plan.instances[*u].name;
            match session.cache.check_object(&out.hash) {
                ObjectState::Ok => {}
                ObjectState::Corrupt { .. } => {
                    let _ = session.cache.remove_object(&out.hash);
                    return fail(format!(
                        "input `{upstream_name}` output `{name}` is corrupt in the cache; it was removed, run again to recompute it"
                    ));
                }
                // A sibling found it corrupt and removed it (or it was deleted by hand).
                ObjectState::Missing => {
                    return fail(format!(
                        "input `{upstream_name}` output `{name}` is no longer in the cache (removed as corrupt, or deleted); run again to recompute it"
                    ));
                }
            }
        }
    }
    let stage = session.stage_of(inst);
    let out_dir = match session.cache.temp_dir() {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    // Root the key before its work folder exists, so `flow gc` after a crash
    // (or beside this run, once it is killed) keeps the checkpoints.
    let rooted = session.cache.update_refs(&session.scope, |refs| {
        set_scope(session, refs);
        refs.running.insert(inst.name.clone(), keyed.key.clone());
    });
    if let Err(e) = rooted {
        return fail(e.to_string());
    }
    let work_dir = match session.cache.work_dir(&keyed.key) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let inputs: BTreeMap<String, Vec<crate::stage::Upstream>> = inst
        .inputs
        .iter()
        .map(|(param, ups)| {
            let views = ups
                .iter()
                .filter_map(|u| upstream.get(u).map(|r| session.upstream_view(*u, r)))
                .collect();
            (param.clone(), views)
        })
        .collect();
    let progress = bars.stage(&inst.name);
    let started = Instant::now();
    let started_unix = unix_now();
    let mut ctx = Context::new(
        &inst.name,
        &inst.params,
        &inputs,
        &session.plan.resources,
        inst.seed,
        &session.env,
        out_dir.path(),
        &work_dir,
        threads,
        cancel,
        &progress,
    );
    tracing::debug!(instance = %inst.name, key = %keyed.key, "running");
    let result = catch_unwind(AssertUnwindSafe(|| stage.run(&mut ctx))).unwrap_or_else(|panic| {
        Err(StageError::Other(format!(
            "stage panicked: {}",
            panic_message(&panic)
        )))
    });
    let mut log = preamble;
    log.extend(ctx.take_log());
    drop(progress);
    let failure = |error: String| {
        let _ = session.cache.write_failure(&Failure {
            key: keyed.key.clone(),
            stage: inst.stage.clone(),
            instance: inst.name.clone(),
            error: error.clone(),
            unix: started_unix,
            key_fields: Some(keyed.key_fields.clone()),
        });
        fail(error)
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return failure(e.to_string()),
    };
    let mut outputs = BTreeMap::new();
    for file in &outcome.outputs {
        let size = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
        match session.cache.put_file(&file.path) {
            Ok(hash) => {
                outputs.insert(
                    file.name.clone(),
                    OutputRef {
                        hash,
                        size,
                        publish: file.publish,
                    },
                );
            }
            Err(e) => return failure(format!("storing output `{}`: {e}", file.name)),
        }
    }
    let record = Record {
        key: keyed.key.clone(),
        stage: inst.stage.clone(),
        instance: inst.name.clone(),
        key_fields: keyed.key_fields.clone(),
        outputs,
        metrics: outcome.metrics,
        log,
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        executor: executed,
    };
    if let Err(e) = session.cache.write_record(&record) {
        return failure(format!("writing the stage record: {e}"));
    }
    // Rooted at once: what a run finished survives gc even if the run dies later.
    root_in_refs(session, inst, &keyed.key);
    let _ = session.cache.clear_failure(&keyed.key);
    let _ = session.cache.remove_work_dir(&keyed.key);
    Finished::Ran(Box::new(record))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
