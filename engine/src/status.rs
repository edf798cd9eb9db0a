//! `flow status`: for every instance, fresh, stale (and why) or failed.

use std::collections::BTreeMap;

use flow_cache::Record;
use serde::Serialize;

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
    /// Empty when fresh; otherwise why it will run.
    pub reason: String,
    /// The content key, when the inputs are known (every upstream is fresh).
    pub key: Option<String>,
}

/// Evaluates every instance in dependency order.
pub fn evaluate(session: &Session<'_>) -> (Vec<InstanceStatus>, BTreeMap<usize, Record>) {
    let plan = &session.plan;
    let mut out: Vec<Option<InstanceStatus>> = vec![None; plan.instances.len()];
    let mut fresh: BTreeMap<usize, Record> = BTreeMap::new();
    let refs = session.cache.read_refs(&session.scope);
    for &i in &plan.order {
        let inst = &plan.instances[i];
        let row = |state, reason: String, key: Option<String>| InstanceStatus {
            stage: inst.stage.clone(),
            instance: inst.name.clone(),
            kind: inst.kind.clone(),
            state,
            reason,
            key,
        };
        // An instance whose inputs are not fresh cannot have a known key.
        let blocked = inst.inputs.iter().find_map(|(param, ups)| {
            ups.iter()
                .find(|u| !fresh.contains_key(u))
                .map(|&u| (param.clone(), u))
        });
        if let Some((param, u)) = blocked {
            let up = &plan.instances[u];
            let what = match out[u].as_ref().map(|s| s.state) {
                Some(State::Failed) => "failed",
                _ => "stale",
            };
            out[i] = Some(row(
                State::Stale,
                format!("input `{param}` (`{}`) is {what}", up.name),
                None,
            ));
            continue;
        }
        let keyed = match session.key(i, &fresh) {
            Ok(k) => k,
            Err(e) => {
                out[i] = Some(row(State::Stale, format!("cannot compute key: {e}"), None));
                continue;
            }
        };
        let status = match session.cached(&keyed.key) {
            Cached::Fresh(record) => {
                fresh.insert(i, *record);
                row(State::Fresh, String::new(), Some(keyed.key))
            }
            Cached::Damaged { problem, .. } => row(State::Stale, problem, Some(keyed.key)),
            Cached::Unreadable(why) => row(
                State::Stale,
                format!("stage record unreadable ({why})"),
                Some(keyed.key),
            ),
            Cached::Missing => match session.cache.read_failure(&keyed.key) {
                Some(f) => row(
                    State::Failed,
                    format!("failed last time: {}", f.error),
                    Some(keyed.key),
                ),
                None => {
                    let reason = match refs.instances.get(&inst.name) {
                        None => "never run".to_string(),
                        Some(old_key) => why_changed(session, old_key, &keyed, inst.seed),
                    };
                    row(State::Stale, reason, Some(keyed.key))
                }
            },
        };
        out[i] = Some(status);
    }
    (out.into_iter().flatten().collect(), fresh)
}

/// Compares the last run's record of this instance with the new key's inputs.
fn why_changed(session: &Session<'_>, old_key: &str, new: &Keyed, seed: u64) -> String {
    let old = match session.cache.read_record(old_key) {
        flow_cache::RecordState::Ok(r) => r,
        _ => return "never run with these settings (the last run's record is gone)".to_string(),
    };
    let kind = old.kind.clone();
    let stage = session
        .registry
        .get(&kind)
        .map(|s| s.version())
        .unwrap_or(old.version);
    let mut reasons = Vec::new();
    if stage != old.version {
        reasons.push(format!(
            "implementation of `{kind}` changed (version {} -> {stage})",
            old.version
        ));
    }
    let new_params = serde_json::to_value(&new.params).unwrap_or_default();
    let empty = serde_json::Map::new();
    let old_map = old.params.as_object().unwrap_or(&empty);
    let new_map = new_params.as_object().unwrap_or(&empty);
    for (k, v) in new_map {
        match old_map.get(k) {
            Some(o) if o == v => {}
            Some(o) => reasons.push(format!("parameter `{k}` changed from {o} to {v}")),
            None => reasons.push(format!("parameter `{k}` set to {v}")),
        }
    }
    for k in old_map.keys().filter(|k| !new_map.contains_key(*k)) {
        reasons.push(format!("parameter `{k}` removed"));
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
            let names: Vec<&str> = ups.iter().map(|u| u.instance.as_str()).collect();
            reasons.push(format!(
                "input `{param}` (`{}`) changed",
                names.join("`, `")
            ));
        }
    }
    for (label, hash) in &new.fingerprints {
        if old.fingerprints.get(label) != Some(hash) {
            reasons.push(format!("external input `{label}` changed"));
        }
    }
    if old.seed != seed {
        reasons.push(format!("seed changed from {} to {seed}", old.seed));
    }
    if reasons.is_empty() {
        reasons.push("the key scheme changed (a new version of flow)".to_string());
    }
    reasons.join("; ")
}
