//! `flow status`: for every instance, fresh, stale (and why) or failed.

use std::collections::BTreeMap;

use flow_cache::Record;
use rayon::prelude::*;
use serde::Serialize;

use crate::reason::{Change, StaleReason};
use crate::session::{Cached, Keyed, Session};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fresh,
    Stale,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Fresh => "fresh",
            State::Stale => "stale",
            State::Failed => "failed",
        }
    }
}

/// One row of `flow status --json` (schema documented in docs/status.md).
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub stage: String,
    pub instance: String,
    pub kind: String,
    pub state: State,
    /// Empty when fresh; otherwise why it will run, for people.
    pub reason: String,
    /// `null` when fresh; otherwise a stable code for programs ([`StaleReason::code`]).
    pub reason_code: Option<&'static str>,
    /// For `reason_code = "changed"`: the codes of what changed ([`Change::code`]).
    pub changes: Vec<&'static str>,
    /// The content key, when the inputs are known (every upstream is fresh).
    pub key: Option<String>,
}

/// Evaluates every instance, level by level (an instance's level is one more
/// than its deepest input's), each level in parallel.
pub fn evaluate(session: &Session<'_>) -> (Vec<InstanceStatus>, BTreeMap<usize, Record>) {
    let plan = &session.plan;
    let mut rows: Vec<Option<InstanceStatus>> = vec![None; plan.instances.len()];
    let mut fresh: BTreeMap<usize, Record> = BTreeMap::new();
    let refs = session.cache.read_refs(&session.scope);
    for level in plan.levels() {
        let done: Vec<(usize, InstanceStatus, Option<Record>)> = level
            .par_iter()
            .map(|&i| {
                let (row, record) = evaluate_one(session, i, &rows, &fresh, &refs);
                (i, row, record)
            })
            .collect();
        for (i, row, record) in done {
            if let Some(r) = record {
                fresh.insert(i, r);
            }
            rows[i] = Some(row);
        }
    }
    (rows.into_iter().flatten().collect(), fresh)
}

fn evaluate_one(
    session: &Session<'_>,
    i: usize,
    rows: &[Option<InstanceStatus>],
    fresh: &BTreeMap<usize, Record>,
    refs: &flow_cache::Refs,
) -> (InstanceStatus, Option<Record>) {
    let plan = &session.plan;
    let inst = &plan.instances[i];
    let row = |state, reason: Option<StaleReason>, key: Option<String>| InstanceStatus {
        stage: inst.stage.clone(),
        instance: inst.name.clone(),
        kind: inst.kind.clone(),
        state,
        reason: reason.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        reason_code: reason.as_ref().map(StaleReason::code),
        changes: reason
            .as_ref()
            .map(StaleReason::change_codes)
            .unwrap_or_default(),
        key,
    };
    // An instance whose inputs are not fresh cannot have a known key.
    let blocked = inst.inputs.iter().find_map(|(param, ups)| {
        ups.iter()
            .find(|u| !fresh.contains_key(u))
            .map(|&u| (param.clone(), u))
    });
    if let Some((param, u)) = blocked {
        let reason = StaleReason::InputNotFresh {
            param,
            instance: plan.instances[u].name.clone(),
            failed: rows[u].as_ref().map(|s| s.state) == Some(State::Failed),
        };
        return (row(State::Stale, Some(reason), None), None);
    }
    let keyed = match session.key(i, fresh) {
        Ok(k) => k,
        Err(e) => {
            let reason = StaleReason::KeyUnknown {
                error: e.to_string(),
            };
            return (row(State::Stale, Some(reason), None), None);
        }
    };
    let key = Some(keyed.key.clone());
    match session.cached(&keyed.key) {
        Cached::Fresh(record) => (row(State::Fresh, None, key), Some(*record)),
        Cached::Damaged { problem, .. } => (row(State::Stale, Some(problem), key), None),
        Cached::Unreadable(why) => (
            row(
                State::Stale,
                Some(StaleReason::RecordUnreadable { why }),
                key,
            ),
            None,
        ),
        Cached::Missing => match session.cache.read_failure(&keyed.key) {
            Some(f) => (
                row(
                    State::Failed,
                    Some(StaleReason::FailedLastTime { error: f.error }),
                    key,
                ),
                None,
            ),
            None => {
                let reason = match refs.instances.get(&inst.name) {
                    None => StaleReason::NeverRun,
                    Some(old_key) => why_changed(session, old_key, &keyed),
                };
                (row(State::Stale, Some(reason), key), None)
            }
        },
    }
}

/// Compares the last run of this instance (its record's, else its failure note's key
/// fields) with what the new key is computed from.
fn why_changed(session: &Session<'_>, old_key: &str, new: &Keyed) -> StaleReason {
    let (old, failed) = match session.cache.read_record(old_key) {
        flow_cache::RecordState::Ok(r) => (r.key_fields, false),
        _ => match session
            .cache
            .read_failure(old_key)
            .and_then(|f| f.key_fields)
        {
            Some(fields) if !fields.kind.is_empty() => (fields, true),
            _ => return StaleReason::PreviousRunGone,
        },
    };
    let new = &new.key_fields;
    let kind = old.kind.clone();
    let version = session
        .registry
        .get(&kind)
        .map(|s| s.version())
        .unwrap_or(old.version);
    let mut reasons = Vec::new();
    if version != old.version {
        reasons.push(Change::Version {
            kind: kind.clone(),
            from: old.version,
            to: version,
        });
    }
    let empty = serde_json::Map::new();
    let old_map = old.params.as_object().unwrap_or(&empty);
    let new_map = new.params.as_object().unwrap_or(&empty);
    for (k, v) in new_map {
        match old_map.get(k) {
            Some(o) if o == v => {}
            Some(o) => reasons.push(Change::Parameter {
                name: k.clone(),
                from: o.to_string(),
                to: v.to_string(),
            }),
            None => reasons.push(Change::ParameterSet {
                name: k.clone(),
                value: v.to_string(),
            }),
        }
    }
    for k in old_map.keys().filter(|k| !new_map.contains_key(*k)) {
        reasons.push(Change::ParameterRemoved { name: k.clone() });
    }
    for (param, ups) in &new.inputs {
        let old_ups = old.inputs.get(param);
        let same = old_ups.is_some_and(|o| {
            o.len() == ups.len()
                && o.iter()
                    .zip(ups)
                    .all(|(a, b)| a.outputs == b.outputs && a.instance == b.instance)
        });
        if !same {
            reasons.push(Change::Input {
                param: param.clone(),
                instances: ups.iter().map(|u| u.instance.clone()).collect(),
            });
        }
    }
    for (label, hash) in &new.fingerprints {
        if old.fingerprints.get(label) != Some(hash) {
            reasons.push(Change::External {
                label: label.clone(),
            });
        }
    }
    if old.seed != new.seed {
        reasons.push(Change::Seed {
            from: old.seed,
            to: new.seed,
        });
    }
    if reasons.is_empty() {
        reasons.push(Change::KeyScheme);
    }
    StaleReason::Changed {
        changes: reasons,
        last_failed: failed,
    }
}
