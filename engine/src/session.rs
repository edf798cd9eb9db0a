//! A planned manifest bound to a cache: computes keys and checks freshness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flow_cache::{Cache, InputRef, KeyFields, ObjectState, Record, RecordState};

use crate::key::{compute_key, key_params, KeyMaterial};
use crate::manifest::Manifest;
use crate::plan::{Instance, Plan};
use crate::reason::StaleReason;
use crate::schema::ParamType;
use crate::stage::{Env, FileHasher, Registry, Stage, StageError, Upstream};

/// Everything needed to status or run one manifest.
pub struct Session<'a> {
    pub manifest: &'a Manifest,
    pub plan: Plan,
    pub registry: &'a Registry,
    pub cache: &'a Cache,
    pub env: Env,
    /// Project root: results folders are relative to it.
    pub root: PathBuf,
    /// Identifies (manifest, profile) in the cache's refs.
    pub scope: String,
    /// `--results-dir`: publish here instead of the manifest's `results` folder.
    pub results_override: Option<PathBuf>,
    /// `flow status --verify`: rehash every output instead of trusting its stamp.
    pub verify: bool,
}

/// The key of an instance and what it was computed from, as its record or failure note
/// will keep it.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: String,
    pub key_fields: KeyFields,
}

/// What the cache holds for a key.
#[derive(Clone, Debug)]
pub enum Cached {
    Fresh(Box<Record>),
    /// A record exists but an output is gone or damaged.
    Damaged {
        record: Box<Record>,
        problem: StaleReason,
    },
    Unreadable(String),
    Missing,
}

struct CacheHasher<'a>(&'a Cache);

impl FileHasher for CacheHasher<'_> {
    fn hash_file(&self, path: &Path) -> Result<String, StageError> {
        self.0
            .hash_file(path)
            .map_err(|e| StageError::Other(e.to_string()))
    }
}

impl<'a> Session<'a> {
    pub fn new(
        manifest: &'a Manifest,
        plan: Plan,
        registry: &'a Registry,
        cache: &'a Cache,
        env: Env,
        root: PathBuf,
    ) -> Self {
        let path = std::fs::canonicalize(&manifest.path).unwrap_or(manifest.path.clone());
        let mut scope = blake3::Hasher::new();
        scope.update(path.to_string_lossy().as_bytes());
        scope.update(b"\0");
        scope.update(plan.profile.as_deref().unwrap_or("").as_bytes());
        Session {
            manifest,
            plan,
            registry,
            cache,
            env,
            root,
            scope: scope.finalize().to_hex().to_string(),
            results_override: None,
            verify: false,
        }
    }

    pub fn stage_of(&self, inst: &Instance) -> &'a dyn Stage {
        // Planning only creates instances of registered kinds.
        self.registry
            .get(&inst.kind)
            .map(|s| s.as_ref())
            .expect("planned instance of an unregistered kind")
    }

    /// The key of instance `i`, given the records of its upstream instances.
    pub fn key(&self, i: usize, upstream: &BTreeMap<usize, Record>) -> Result<Keyed, StageError> {
        let inst = &self.plan.instances[i];
        let stage = self.stage_of(inst);
        let specs = stage.params();
        let params = key_params(inst, &specs, self.registry, &self.plan.resources);
        let mut inputs = BTreeMap::new();
        for (name, ups) in &inst.inputs {
            let refs = ups
                .iter()
                .map(|u| {
                    let rec = upstream.get(u).ok_or_else(|| {
                        StageError::Other(format!(
                            "internal: upstream `{}` not ready",
                            self.plan.instances[*u].name
                        ))
                    })?;
                    Ok(InputRef {
                        instance: self.plan.instances[*u].name.clone(),
                        key: rec.key.clone(),
                        outputs: rec
                            .outputs
                            .iter()
                            .map(|(k, o)| (k.clone(), o.hash.clone()))
                            .collect(),
                    })
                })
                .collect::<Result<Vec<_>, StageError>>()?;
            inputs.insert(name.clone(), refs);
        }
        let fingerprints: BTreeMap<String, String> = stage
            .fingerprint(&inst.params, &self.env, &CacheHasher(self.cache))?
            .into_iter()
            .collect();
        let gathers: Vec<&str> = specs
            .iter()
            .filter(|s| s.ty == ParamType::Gather)
            .map(|s| s.name)
            .collect();
        let key = compute_key(&KeyMaterial {
            kind: stage.kind(),
            version: stage.version(),
            seed: inst.seed,
            params: &params,
            inputs: &inputs,
            gathers: &gathers,
            fingerprints: &fingerprints,
        });
        Ok(Keyed {
            key,
            key_fields: KeyFields {
                kind: stage.kind().to_string(),
                version: stage.version(),
                params: serde_json::to_value(&params).unwrap_or_default(),
                inputs,
                fingerprints,
                seed: inst.seed,
            },
        })
    }

    /// Looks the key up and verifies every output object.
    pub fn cached(&self, key: &str) -> Cached {
        match self.cache.read_record(key) {
            RecordState::Missing => Cached::Missing,
            RecordState::Unreadable(why) => Cached::Unreadable(why),
            RecordState::Ok(record) => {
                for (name, out) in &record.outputs {
                    // Published outputs (tables, figures: small) are always rehashed, so
                    // a damaged object is never republished as fresh.
                    let state = if self.verify || out.publish {
                        self.cache.check_object(&out.hash)
                    } else {
                        self.cache.check_object_quick(&out.hash)
                    };
                    let problem = match state {
                        ObjectState::Ok => continue,
                        ObjectState::Missing => StaleReason::OutputMissing {
                            output: name.clone(),
                        },
                        ObjectState::Corrupt { .. } => StaleReason::OutputCorrupt {
                            output: name.clone(),
                        },
                    };
                    return Cached::Damaged {
                        record: Box::new(record),
                        problem,
                    };
                }
                Cached::Fresh(Box::new(record))
            }
        }
    }

    /// How a stage sees a finished upstream instance.
    pub fn upstream_view(&self, u: usize, record: &Record) -> Upstream {
        let inst = &self.plan.instances[u];
        Upstream {
            instance: inst.name.clone(),
            bindings: inst.labelled_bindings(),
            files: record
                .outputs
                .iter()
                .map(|(name, o)| (name.clone(), self.cache.object_path(&o.hash)))
                .collect(),
            metrics: record.metrics.clone(),
        }
    }

    pub fn results_dir(&self) -> PathBuf {
        match &self.results_override {
            Some(dir) => self.root.join(dir),
            None => self.root.join(&self.plan.results),
        }
    }
}
