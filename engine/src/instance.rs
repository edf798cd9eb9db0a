//! `flow run-instance`: what a job of an executor does. It re-plans the manifest, finds the
//! records of the instance's upstream in the shared cache, refuses if the instance's key
//! differs from the one the run planned (another binary, manifest or data path on this
//! node), computes that one instance into the cache and returns. Its success is the record.

use std::collections::BTreeMap;

use flow_cache::{CacheError, Executed, Record};

use crate::diag::near_miss;
use crate::progress::Bars;
use crate::run::{compute, Finished, Work};
use crate::session::{Cached, Session};
use crate::stage::CancelToken;

/// What to compute, and as which job.
pub struct InstanceOptions {
    /// The instance name.
    pub instance: String,
    /// The key the run planned; another key here is refused.
    pub expect_key: Option<String>,
    /// Recompute even if the cache holds the key.
    pub force: bool,
    pub threads: usize,
    pub cancel: CancelToken,
    /// The job this is, kept in the record.
    pub executed: Option<Executed>,
    /// The run that started this job holds the key's lock for it: take the lock only if
    /// nobody holds it (the run is gone), never wait for it.
    pub run_holds_lock: bool,
    /// Lines that open the record's log (what the job saw: host, devices).
    pub preamble: Vec<String>,
}

/// What the job did.
#[derive(Debug)]
pub enum InstanceOutcome {
    Computed(Box<Record>),
    /// The cache already held the key (another job or run computed it).
    Cached(Box<Record>),
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no instance named `{name}` in {manifest}{}", .help.as_ref().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default())]
    UnknownInstance {
        name: String,
        manifest: String,
        help: Option<String>,
    },
    #[error(
        "`{instance}` needs `{upstream}`, which is not in the cache {cache} ({state}); a job \
         computes one instance whose inputs are already cached (run `flow run` for the rest; \
         if the run that started this job has them, this node sees other input files: check \
         its data and models folders)"
    )]
    UpstreamMissing {
        instance: String,
        upstream: String,
        state: String,
        cache: String,
    },
    #[error("computing the key of `{instance}`: {error}")]
    Key { instance: String, error: String },
    #[error(
        "`{instance}` has key {here} on this node, but the run that started this job planned \
         {expected}: the job sees another manifest, flow binary, data or models than the run \
         (give every node the same paths and the same flow binary)"
    )]
    KeyMismatch {
        instance: String,
        here: String,
        expected: String,
    },
    #[error("`{instance}` failed: {error}")]
    Failed { instance: String, error: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Computes one instance into the cache (see the module docs).
pub fn run_instance(
    session: &Session<'_>,
    opts: &InstanceOptions,
) -> Result<InstanceOutcome, InstanceError> {
    let plan = &session.plan;
    let Some(i) = plan.by_name(&opts.instance) else {
        return Err(InstanceError::UnknownInstance {
            name: opts.instance.clone(),
            manifest: session.manifest.path.display().to_string(),
            help: near_miss(
                &opts.instance,
                plan.instances.iter().map(|i| i.name.as_str()),
            )
            .map(str::to_string),
        });
    };
    let _guard = session.cache.run_guard()?;
    let upstream = upstream_records(session, i)?;
    let inst = &plan.instances[i];
    let keyed = session.key(i, &upstream).map_err(|e| InstanceError::Key {
        instance: inst.name.clone(),
        error: e.to_string(),
    })?;
    if let Some(expected) = &opts.expect_key {
        if *expected != keyed.key {
            return Err(InstanceError::KeyMismatch {
                instance: inst.name.clone(),
                here: keyed.key,
                expected: expected.clone(),
            });
        }
    }
    if !opts.force {
        if let Cached::Fresh(r) = session.cached(&keyed.key) {
            return Ok(InstanceOutcome::Cached(r));
        }
    }
    let _lock = if opts.run_holds_lock {
        session.cache.try_lock_key(&keyed.key)?
    } else {
        Some(session.cache.lock_key(&keyed.key)?)
    };
    if !opts.force {
        if let Cached::Fresh(r) = session.cached(&keyed.key) {
            return Ok(InstanceOutcome::Cached(r));
        }
    }
    // Only the direct inputs: their objects are rehashed before the stage reads them.
    let mut direct: Vec<usize> = inst.inputs.values().flatten().copied().collect();
    direct.sort_unstable();
    direct.dedup();
    let inputs: BTreeMap<usize, Record> = direct
        .into_iter()
        .filter_map(|u| upstream.get(&u).map(|r| (u, r.clone())))
        .collect();
    let bars = Bars::new(false, 0);
    let work = Work {
        session,
        i,
        upstream: &inputs,
        force: opts.force,
        threads: opts.threads.max(1),
        cancel: &opts.cancel,
        bars: &bars,
    };
    match compute(&work, &keyed, opts.executed.clone(), opts.preamble.clone()) {
        Finished::Ran(r) => Ok(InstanceOutcome::Computed(r)),
        Finished::Cached(r) => Ok(InstanceOutcome::Cached(r)),
        Finished::Failed { error, .. } => Err(InstanceError::Failed {
            instance: inst.name.clone(),
            error,
        }),
    }
}

/// The records of every instance upstream of `i` (keys need the whole chain); each must be
/// fresh in the cache.
fn upstream_records(
    session: &Session<'_>,
    i: usize,
) -> Result<BTreeMap<usize, Record>, InstanceError> {
    let plan = &session.plan;
    let closure = plan.with_upstream(&[i]);
    let mut records = BTreeMap::new();
    for &u in &plan.order {
        if !closure[u] || u == i {
            continue;
        }
        let name = &plan.instances[u].name;
        let missing = |state: String| InstanceError::UpstreamMissing {
            instance: plan.instances[i].name.clone(),
            upstream: name.clone(),
            state,
            cache: session.cache.root().display().to_string(),
        };
        let keyed = session
            .key(u, &records)
            .map_err(|e| missing(format!("its key: {e}")))?;
        match session.cached(&keyed.key) {
            Cached::Fresh(r) => {
                records.insert(u, *r);
            }
            Cached::Missing => return Err(missing(format!("no record of key {}", keyed.key))),
            Cached::Damaged { problem, .. } => {
                return Err(missing(format!("key {}: {problem}", keyed.key)))
            }
            Cached::Unreadable(why) => return Err(missing(format!("key {}: {why}", keyed.key))),
        }
    }
    Ok(records)
}
