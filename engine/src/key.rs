//! Content keys: blake3 over a canonical encoding of everything that can
//! change a stage instance's result, and nothing else.
//!
//! In the key: kind, implementation version, seed, the parameters that are
//! not execution settings or secrets (with references to resource entries, such as
//! `[models.*]` or `[generators.*]`, replaced by the entries' contents less their own
//! execution settings and secrets, as their [`ResourceKind`] declares), the content hashes
//! of the upstream outputs, and fingerprints of external files. Not in the key: stage and
//! instance names (renaming a stage reuses its results), thread counts, secrets.

use std::collections::BTreeMap;

use flow_cache::InputRef;

use crate::plan::Instance;
use crate::resource::Resources;
use crate::schema::{ParamSpec, ParamType};
use crate::stage::Registry;
use crate::value::Value;

/// Bump to invalidate every key (a change to this encoding).
const KEY_SCHEME: &str = "flow-key-v1";

/// The parameters that enter the key, as they are recorded for `flow status`
/// to explain what changed. `registry` declares the resource kinds the parameters may
/// name; `resources` holds the manifest's entries.
pub fn key_params(
    inst: &Instance,
    specs: &[ParamSpec],
    registry: &Registry,
    resources: &Resources,
) -> BTreeMap<String, Value> {
    let content = ResourceContent {
        registry,
        resources,
    };
    let mut out = BTreeMap::new();
    for spec in specs {
        if !spec.in_key || spec.is_reference() {
            continue;
        }
        let Some(v) = inst.params.get(spec.name) else {
            continue;
        };
        let v = match &spec.ty {
            ParamType::Resource(section) => content.of(section, v, 0),
            ParamType::Table(fields) => strip_table(v, fields),
            _ => v.clone(),
        };
        out.insert(spec.name.to_string(), v);
    }
    out
}

/// How deep links between resource sections are followed (`generators` -> `models` is
/// one); a deeper chain, or a circle of declarations, keeps the name.
const MAX_LINK_DEPTH: usize = 4;

struct ResourceContent<'a> {
    registry: &'a Registry,
    resources: &'a Resources,
}

impl ResourceContent<'_> {
    /// A reference to a resource entry stands for its contents: renaming `[models.a]`
    /// keeps results, editing it invalidates them. Fields its kind declares execution
    /// settings or secrets stay out; a field declared a link to another section (a local
    /// generator's `model`) stands for the entry it names, so editing that entry
    /// invalidates what used it. A name with no entry stands for itself.
    fn of(&self, section: &str, name: &Value, depth: usize) -> Value {
        let Some(entry) = name.as_str().and_then(|n| self.resources.get(section, n)) else {
            return name.clone();
        };
        let kind = self.registry.resource_kind(section);
        let mut out = BTreeMap::new();
        for (field, value) in entry {
            if kind.and_then(|k| k.param(field)).is_some_and(|p| !p.in_key) {
                continue;
            }
            let value = match kind.and_then(|k| k.link_of(field)) {
                Some(target) if depth < MAX_LINK_DEPTH => self.of(target, value, depth + 1),
                _ => value.clone(),
            };
            out.insert(field.clone(), value);
        }
        Value::Table(out)
    }
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
    use crate::manifest::toml_spans::value_of;
    use crate::resource::ResourceKind;

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

    /// `models` with one execution field; `generators` whose `model` links to `models`,
    /// with an execution field and a secret.
    fn resource_world() -> (Registry, Resources) {
        let mut registry = Registry::new();
        registry.register_resource(ResourceKind::new(
            "models",
            "weights",
            vec![
                ParamSpec::string("path", "weights"),
                ParamSpec::string("device", "where it runs").execution(),
            ],
        ));
        registry.register_resource(
            ResourceKind::new(
                "generators",
                "text",
                vec![
                    ParamSpec::string("model", "a model"),
                    ParamSpec::float("temperature", "sampling"),
                    ParamSpec::int("threads", "cores").execution(),
                    ParamSpec::string("api_key_env", "key").secret(),
                ],
            )
            .link("model", "models"),
        );
        let mut resources = Resources::default();
        let table = |pairs: &[(&str, Value)]| -> BTreeMap<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        resources.insert(
            "models",
            "m",
            table(&[("path", "w.gguf".into()), ("device", "cuda".into())]),
        );
        resources.insert(
            "generators",
            "local",
            table(&[
                ("model", "m".into()),
                ("temperature", 0.7.into()),
                ("threads", 4.into()),
                ("api_key_env", "KEY".into()),
            ]),
        );
        resources.insert(
            "generators",
            "remote",
            table(&[("model", "gpt-4o".into()), ("threads", 1.into())]),
        );
        (registry, resources)
    }

    /// What a resource name stands for in a key comes from the declarations alone: no
    /// execution field or secret, links followed, names without an entry kept.
    #[test]
    fn resources_stand_for_their_declared_key_fields() {
        let (registry, resources) = resource_world();
        let content = ResourceContent {
            registry: &registry,
            resources: &resources,
        };
        let of = |section: &str, name: &str| content.of(section, &name.into(), 0);
        assert_eq!(of("models", "m"), value_of(r#"{ path = "w.gguf" }"#));
        assert_eq!(
            of("generators", "local"),
            value_of(r#"{ model = { path = "w.gguf" }, temperature = 0.7 }"#)
        );
        assert_eq!(
            of("generators", "remote"),
            value_of(r#"{ model = "gpt-4o" }"#)
        );
        assert_eq!(of("models", "absent"), value_of(r#""absent""#));
        assert_eq!(of("undeclared", "m"), value_of(r#""m""#));
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
