//! The content key of every instance of every shipped manifest under every profile, against
//! a committed list (`tests/fixtures/plan-keys.txt`). A refactoring must leave every key as
//! it was (or the caches of every user go stale); a change of a key on purpose rewrites the
//! list with `FLOW_BLESS=1 cargo test --test plan_keys` and names the change in its commit.
//!
//! Upstream outputs are stand-ins (one output per instance, hashed from its key), so the
//! keys cover everything a manifest decides (kinds, versions, seeds, parameters, defaults,
//! fan-out, gathered instance names, data files) without running anything.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use flow_cache::{hash_bytes, Cache, KeyFields, OutputRef, Record};
use flow_engine::{plan, Env, Manifest, Registry, Session};

fn stand_in(key: &str, name: &str) -> Record {
    let out = hash_bytes(format!("{key}/out").as_bytes());
    Record {
        key: key.to_string(),
        stage: String::new(),
        instance: name.to_string(),
        key_fields: KeyFields {
            params: serde_json::Value::Null,
            ..KeyFields::default()
        },
        outputs: BTreeMap::from([(
            "out".to_string(),
            OutputRef {
                hash: out,
                size: 0,
                publish: false,
            },
        )]),
        metrics: serde_json::Map::new(),
        log: Vec::new(),
        started_unix: 0.0,
        duration_s: 0.0,
        executor: None,
    }
}

/// `manifest profile instance key` lines for every instance.
fn list_keys(data: &Path) -> String {
    let mut registry = Registry::new();
    flow_stages::register_all(&mut registry);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let cache = Cache::open(&scratch.path().join("cache")).unwrap();
    let mut out = String::new();
    for path in common::shipped_manifests() {
        let manifest = Manifest::load(&path, &registry).unwrap();
        let mut profiles: Vec<Option<String>> = vec![None];
        profiles.extend(manifest.profiles.keys().cloned().map(Some));
        for profile in profiles {
            let p = plan(&manifest, &registry, profile.as_deref()).unwrap();
            let env = Env {
                data_dir: Some(data.to_path_buf()),
                models_dir: None,
                manifest_dir: path.parent().unwrap().to_path_buf(),
                cache_dir: cache.root().to_path_buf(),
            };
            let session = Session::new(&manifest, p, &registry, &cache, env, root.into());
            let mut records: BTreeMap<usize, Record> = BTreeMap::new();
            for &i in &session.plan.order {
                let inst = &session.plan.instances[i];
                let keyed = session
                    .key(i, &records)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", path.display(), inst.name));
                writeln!(
                    out,
                    "{} {} {} {}",
                    path.file_name().unwrap().to_string_lossy(),
                    profile.as_deref().unwrap_or("-"),
                    inst.name,
                    keyed.key
                )
                .unwrap();
                records.insert(i, stand_in(&keyed.key, &inst.name));
            }
        }
    }
    out
}

#[test]
fn every_key_of_every_shipped_manifest_is_unchanged() {
    let data = require_data!();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan-keys.txt");
    let now = list_keys(&data);
    if std::env::var_os("FLOW_BLESS").is_some() {
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(&fixture, &now).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&fixture).expect("tests/fixtures/plan-keys.txt");
    let changed: Vec<String> = expected
        .lines()
        .zip(now.lines())
        .filter(|(a, b)| a != b)
        .take(10)
        .map(|(a, b)| format!("  was {a}\n  now {b}"))
        .collect();
    assert!(
        changed.is_empty() && expected.lines().count() == now.lines().count(),
        "content keys changed ({} lines before, {} now); first differences:\n{}\n\
         (a change on purpose: FLOW_BLESS=1 cargo test --test plan_keys, and say why)",
        expected.lines().count(),
        now.lines().count(),
        changed.join("\n")
    );
}
