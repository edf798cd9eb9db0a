//! Content keys: blake3 over a canonical encoding of everything that can
//! change a stage instance's result, and nothing else.
//!
//! In the key: kind, implementation version, seed, the parameters that are
//! not execution settings or secrets (with `[models.*]`/`[generators.*]`
//! references replaced by the entries' contents), the content hashes of the
//! upstream outputs, and fingerprints of external files. Not in the key: stage
//! and instance names (renaming a stage reuses its results), thread counts,
//! secrets.

use std::collections::BTreeMap;

use flow_cache::InputRef;

use crate::plan::Instance;
use crate::schema::{ParamSpec, ParamType};
use crate::stage::Resources;
use crate::value::Value;

/// Bump to invalidate every key (a change to this encoding).
const KEY_SCHEME: &str = "flow-key-v1";

/// The parameters that enter the key, as they are recorded for `flow status`
/// to explain what changed.
pub fn key_params(
    inst: &Instance,
    specs: &[ParamSpec],
    resources: &Resources,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for spec in specs {
        if !spec.in_key || spec.is_reference() {
            continue;
        }
        let Some(v) = inst.params.get(spec.name) else {
            continue;
        };
        let v = match &spec.ty {
            ParamType::Model => resource_content(v, &resources.models),
            ParamType::Generator => generator_content(v, resources),
            ParamType::Table(fields) => strip_table(v, fields),
            _ => v.clone(),
        };
        out.insert(spec.name.to_string(), v);
    }
    out
}

/// A reference to a resource stands for its contents: renaming `[models.a]`
/// keeps results, editing it invalidates them. Fields named like secrets or
/// execution settings stay out.
fn resource_content(name: &Value, pool: &BTreeMap<String, BTreeMap<String, Value>>) -> Value {
    let Some(entry) = name.as_str().and_then(|n| pool.get(n)) else {
        return name.clone();
    };
    Value::Table(
        entry
            .iter()
            .filter(|(k, _)| !is_execution_field(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// A generator stands for its contents, and a local generator's `model`
/// (the name of a `[models.*]` entry) for that entry's contents, so editing
/// the model invalidates what it generated.
fn generator_content(name: &Value, resources: &Resources) -> Value {
    let mut content = resource_content(name, &resources.generators);
    if let Value::Table(map) = &mut content {
        if let Some(model) = map.get("model").cloned() {
            if model
                .as_str()
                .is_some_and(|m| resources.models.contains_key(m))
            {
                map.insert(
                    "model".to_string(),
                    resource_content(&model, &resources.models),
                );
            }
        }
    }
    content
}

/// Resource fields that never change results: how to reach an endpoint and
/// how fast, not what it computes. `base_url` is here: the endpoint's model
/// name (in the key) says what computes; another address serving the same
/// model (a proxy, a replica) keeps the results.
pub fn is_execution_field(name: &str) -> bool {
    matches!(
        name,
        "api_key_env"
            | "base_url"
            | "max_concurrency"
            | "max_batch"
            | "requests_per_minute"
            | "tokens_per_minute"
            | "timeout_s"
            | "max_retries"
            | "retry_budget"
            | "threads"
            | "device"
            | "price_prompt_per_mtok"
            | "price_completion_per_mtok"
    )
}

fn strip_table(v: &Value, fields: &[ParamSpec]) -> Value {
    match v {
        Value::Table(map) => Value::Table(
            map.iter()
                .filter(|(k, _)| fields.iter().any(|f| f.name == k.as_str() && f.in_key))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Everything a key is computed from.
pub struct KeyMaterial<'a> {
    pub kind: &'a str,
    pub version: u32,
    pub seed: u64,
    pub params: &'a BTreeMap<String, Value>,
    /// Upstream instances per input parameter.
    pub inputs: &'a BTreeMap<String, Vec<InputRef>>,
    /// Gathering parameters: their rows are named, so names enter the key.
    pub gathers: &'a [&'a str],
    pub fingerprints: &'a BTreeMap<String, String>,
}

pub fn compute_key(m: &KeyMaterial<'_>) -> String {
    let mut buf = Vec::with_capacity(512);
    let put = |tag: &str, bytes: &[u8], buf: &mut Vec<u8>| {
        buf.extend_from_slice(tag.as_bytes());
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    };
    put("scheme", KEY_SCHEME.as_bytes(), &mut buf);
    put("kind", m.kind.as_bytes(), &mut buf);
    put("version", &m.version.to_le_bytes(), &mut buf);
    put("seed", &m.seed.to_le_bytes(), &mut buf);
    let mut params = Vec::new();
    Value::Table(m.params.clone()).encode_canonical(&mut params);
    put("params", &params, &mut buf);
    for (name, ups) in m.inputs {
        put("input", name.as_bytes(), &mut buf);
        let named = m.gathers.contains(&name.as_str());
        for up in ups {
            if named {
                put("instance", up.instance.as_bytes(), &mut buf);
            }
            for (out, hash) in &up.outputs {
                put("output", out.as_bytes(), &mut buf);
                put("hash", hash.as_bytes(), &mut buf);
            }
            put("end", b"", &mut buf);
        }
    }
    for (label, hash) in m.fingerprints {
        put("fingerprint", label.as_bytes(), &mut buf);
        put("hash", hash.as_bytes(), &mut buf);
    }
    blake3::hash(&buf).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with(params: BTreeMap<String, Value>, seed: u64) -> String {
        let inputs = BTreeMap::new();
        let fps = BTreeMap::new();
        compute_key(&KeyMaterial {
            kind: "mix",
            version: 1,
            seed,
            params: &params,
            inputs: &inputs,
            gathers: &[],
            fingerprints: &fps,
        })
    }

    #[test]
    fn key_depends_on_params_and_seed_only() {
        let mut a = BTreeMap::new();
        a.insert("ratio".to_string(), Value::Float(0.4));
        let mut b = a.clone();
        b.insert("ratio".to_string(), Value::Float(0.2));
        assert_eq!(key_with(a.clone(), 1), key_with(a.clone(), 1));
        assert_ne!(key_with(a.clone(), 1), key_with(b, 1));
        assert_ne!(key_with(a.clone(), 1), key_with(a, 2));
    }

    #[test]
    fn upstream_content_not_name_enters_single_inputs() {
        let params = BTreeMap::new();
        let fps = BTreeMap::new();
        let up = |instance: &str, hash: &str| InputRef {
            instance: instance.into(),
            key: "k".repeat(64),
            outputs: [("data.jsonl".to_string(), hash.to_string())].into(),
        };
        let key = |inputs: &BTreeMap<String, Vec<InputRef>>, gathers: &[&str]| {
            compute_key(&KeyMaterial {
                kind: "score",
                version: 1,
                seed: 0,
                params: &params,
                inputs,
                gathers,
                fingerprints: &fps,
            })
        };
        let a: BTreeMap<_, _> = [("data".to_string(), vec![up("mix", "aa")])].into();
        let renamed: BTreeMap<_, _> = [("data".to_string(), vec![up("mix2", "aa")])].into();
        let changed: BTreeMap<_, _> = [("data".to_string(), vec![up("mix", "bb")])].into();
        assert_eq!(key(&a, &[]), key(&renamed, &[]));
        assert_ne!(key(&a, &[]), key(&changed, &[]));
        assert_ne!(key(&a, &["data"]), key(&renamed, &["data"]));
    }
}
