//! Stage records (`records/<key>.json`) and last failures (`failures/<key>.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fsio::{self, JsonFile};
use crate::hash::{self, Hash};
use crate::{Cache, CacheError};

/// What a content key was computed from, as records and failure notes keep it (the
/// engine computes the key; the cache only stores this), so `flow status` can say what
/// changed since. One declaration, embedded (flattened: the fields sit at the top level
/// of the JSON) in [`Record`] and [`Failure`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyFields {
    /// Stage kind.
    pub kind: String,
    /// Implementation version of the stage kind.
    pub version: u32,
    /// Resolved params as the engine encodes them (those in the key).
    pub params: serde_json::Value,
    /// Param name -> upstream instances used.
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    /// External inputs (data files, weights) -> content hash.
    pub fingerprints: BTreeMap<String, Hash>,
    /// The seed the instance ran with.
    pub seed: u64,
}

/// What one run of a stage instance produced, stored under its content key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The content key (64 hex chars, computed by the engine).
    pub key: Hash,
    /// Stage name in the manifest.
    pub stage: String,
    /// Instance name, e.g. `"mix@ratio=0.4"`.
    pub instance: String,
    /// What the key was computed from: `kind`, `version`, `params`, `inputs`,
    /// `fingerprints`, `seed` in the file.
    #[serde(flatten)]
    pub key_fields: KeyFields,
    /// Output name -> stored object.
    pub outputs: BTreeMap<String, OutputRef>,
    /// Metrics reported by the stage.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Log lines.
    pub log: Vec<String>,
    /// When the run started (seconds since the Unix epoch).
    pub started_unix: f64,
    /// How long it took.
    pub duration_s: f64,
    /// Where it was computed when not in the `flow run` that planned it: a Slurm job or a
    /// child process (`flow run --executor`). Absent for instances computed in the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executed>,
}

/// The job that computed a record (`"executor": {"kind": "slurm", "job_id": "123", ...}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Executed {
    /// The executor: `slurm` or `process`.
    pub kind: String,
    /// Slurm's job id, or the child's process id.
    pub job_id: String,
    /// The machine the job ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The GPUs the job was given (its `CUDA_VISIBLE_DEVICES`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
}

/// An upstream instance a record used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    /// Upstream instance name.
    pub instance: String,
    /// Its key.
    pub key: Hash,
    /// Its outputs that were used: output name -> object hash.
    pub outputs: BTreeMap<String, Hash>,
}

/// An output of a record: the object holding it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputRef {
    /// Object hash.
    pub hash: Hash,
    /// Size in bytes.
    pub size: u64,
    /// Whether the engine publishes it to the user's output folder.
    pub publish: bool,
}

/// The last failure of a key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// The content key.
    pub key: Hash,
    /// Stage name.
    pub stage: String,
    /// Instance name.
    pub instance: String,
    /// The error, as shown to the user.
    pub error: String,
    /// When it failed (seconds since the Unix epoch).
    pub unix: f64,
    /// What the key was computed from, as in [`Record`], so a later status can say what
    /// changed since the failure. `None` in notes written before they kept it.
    #[serde(flatten)]
    pub key_fields: Option<KeyFields>,
}

/// What [`Cache::read_record`] found.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per read and matched at once; boxing would only complicate the engine's matches"
)]
pub enum RecordState {
    /// No record for this key.
    Missing,
    /// A file exists but cannot be used (truncated, invalid JSON, wrong key...): the reason.
    Unreadable(String),
    /// The record.
    Ok(Record),
}

impl Cache {
    fn record_path(&self, key: &str) -> Result<PathBuf, CacheError> {
        hash::check("key", key)?;
        Ok(self.dir("records").join(format!("{key}.json")))
    }

    fn failure_path(&self, key: &str) -> Result<PathBuf, CacheError> {
        hash::check("key", key)?;
        Ok(self.dir("failures").join(format!("{key}.json")))
    }

    /// Reads the record of `key`. Never fails: problems come back as
    /// [`RecordState::Unreadable`] with the reason, so the engine can just recompute.
    pub fn read_record(&self, key: &str) -> RecordState {
        let path = match self.record_path(key) {
            Ok(path) => path,
            Err(e) => return RecordState::Unreadable(e.to_string()),
        };
        match fsio::read_json::<Record>(&path) {
            JsonFile::Missing => RecordState::Missing,
            JsonFile::Unreadable(reason) => RecordState::Unreadable(reason),
            JsonFile::Ok(record) if record.key != key => RecordState::Unreadable(format!(
                "{}: holds the record of key {}",
                path.display(),
                record.key
            )),
            JsonFile::Ok(record) => RecordState::Ok(record),
        }
    }

    /// Writes a record atomically (temporary file, fsync, rename).
    ///
    /// Refuses ([`CacheError::ObjectNotStored`]) when an output object is not stored or its
    /// size differs from the record's, so a record never points at a missing or partial object.
    pub fn write_record(&self, record: &Record) -> Result<(), CacheError> {
        let path = self.record_path(&record.key)?;
        for (name, out) in &record.outputs {
            let problem = match self.object_size(&out.hash)? {
                Some(size) if size == out.size => continue,
                Some(size) => format!("has size {size}, the record says {}", out.size),
                None => "is missing".to_string(),
            };
            return Err(CacheError::ObjectNotStored {
                path,
                output: name.clone(),
                hash: out.hash.clone(),
                problem,
            });
        }
        fsio::write_json_atomic(&self.tmp_dir(), &path, record)
    }

    /// The keys that have a record file (`records/<key>.json`), sorted. Names that are not a
    /// key are left out; whether each record reads is [`Cache::read_record`]'s to say.
    pub fn record_keys(&self) -> Result<Vec<Hash>, CacheError> {
        let mut keys: Vec<Hash> = fsio::list_dir(&self.dir("records"))?
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name.strip_suffix(".json")?;
                hash::is_valid_hash(key).then(|| key.to_string())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Removes the record of `key` (fine if there is none).
    pub fn remove_record(&self, key: &str) -> Result<(), CacheError> {
        fsio::remove_file_if_present(&self.record_path(key)?)
    }

    /// Stores `failure` as the last failure of its key (atomically).
    pub fn write_failure(&self, failure: &Failure) -> Result<(), CacheError> {
        let path = self.failure_path(&failure.key)?;
        fsio::write_json_atomic(&self.tmp_dir(), &path, failure)
    }

    /// The last failure of `key`, if any. An invalid key or unreadable file gives `None`
    /// (logged), since a failure note is only informative.
    pub fn read_failure(&self, key: &str) -> Option<Failure> {
        let path = match self.failure_path(key) {
            Ok(path) => path,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        match fsio::read_json::<Failure>(&path) {
            JsonFile::Ok(failure) => Some(failure),
            JsonFile::Missing => None,
            JsonFile::Unreadable(reason) => {
                tracing::warn!("ignoring failure note: {reason}");
                None
            }
        }
    }

    /// Forgets the last failure of `key` (fine if there is none).
    pub fn clear_failure(&self, key: &str) -> Result<(), CacheError> {
        fsio::remove_file_if_present(&self.failure_path(key)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use super::*;
    use crate::hash::hash_bytes;
    use crate::test_util::cache;

    /// A record for `key` whose outputs are the given (already stored) objects.
    pub fn record(key: &str, outputs: &[(&str, &Hash, u64)]) -> Record {
        let input_key = hash_bytes(b"upstream");
        Record {
            key: key.to_string(),
            stage: "mix".into(),
            instance: "mix@ratio=0.4".into(),
            key_fields: KeyFields {
                kind: "mix".into(),
                version: 3,
                params: serde_json::json!({"ratio": 0.4, "nested": {"a": [1, 2]}}),
                inputs: BTreeMap::from([(
                    "stories".to_string(),
                    vec![InputRef {
                        instance: "gen".into(),
                        key: input_key.clone(),
                        outputs: BTreeMap::from([("data".to_string(), input_key)]),
                    }],
                )]),
                fingerprints: BTreeMap::from([("weights".to_string(), hash_bytes(b"w"))]),
                seed: u64::MAX,
            },
            outputs: outputs
                .iter()
                .map(|(name, hash, size)| {
                    (
                        name.to_string(),
                        OutputRef {
                            hash: hash.to_string(),
                            size: *size,
                            publish: true,
                        },
                    )
                })
                .collect(),
            metrics: serde_json::Map::from_iter([("loss".to_string(), serde_json::json!(0.1))]),
            log: vec!["line one".into(), "ünïcode ✓".into()],
            started_unix: 1_700_000_000.123_456,
            duration_s: 0.1 + 0.2,
            executor: None,
        }
    }

    /// A record as the engine wrote it before [`KeyFields`] was declared once (copied from
    /// a real `.flow/records/*.json` of `diversity-real.toml`): it still reads, and writes
    /// back byte for byte.
    const RECORD_V1: &str = r#"{
  "key": "2c3ebd97f7669c9aed9fba188feb7a3383d90128781bc7d2d186adbaf3b86410",
  "stage": "score",
  "instance": "score@limit=60",
  "kind": "score",
  "version": 1,
  "params": {
    "grouping": "auto",
    "kl_alpha": 0.5,
    "metrics": [
      "distinct",
      "lengths"
    ],
    "n": 5,
    "tokenizer": "whitespace"
  },
  "inputs": {
    "data": [
      {
        "instance": "real@limit=60",
        "key": "7322022227ef03c4df33904437d763a9a7811e224a1d3351495636b55522552e",
        "outputs": {
          "data.jsonl": "a6ff4f3648cc604f434be0ba7cd36ab0b3ff0d686db74a9576086001ed495c56"
        }
      }
    ]
  },
  "fingerprints": {},
  "seed": 7,
  "outputs": {
    "scores.json": {
      "hash": "03536fb6dda9452727f7b0ebd66f18431d16da18b59b1a855f8fe8510524dcd9",
      "size": 970,
      "publish": false
    }
  },
  "metrics": {
    "distinct_5": 0.9995680345572354,
    "distinct_5_total": 2315,
    "distinct_5_unique": 2314,
    "length_mean": 9.316666666666666,
    "length_median": 9.0,
    "length_p10": 6.0,
    "length_p90": 13.0,
    "n_examples": 60,
    "task": "story"
  },
  "log": [
    "scored 60 examples: distinct_5 = 0.9995680345572354, distinct_5_total = 2315, distinct_5_unique = 2314, length_mean = 9.316666666666666, length_median = 9.0, length_p10 = 6.0, length_p90 = 13.0, n_examples = 60, task = \"story\""
  ],
  "started_unix": 1796689625.000269,
  "duration_s": 0.002010218
}
"#;

    #[test]
    fn records_in_todays_layout_read_and_write_back_unchanged() {
        let record: Record = serde_json::from_str(RECORD_V1).unwrap();
        assert_eq!(record.instance, "score@limit=60");
        let k = &record.key_fields;
        assert_eq!((k.kind.as_str(), k.version, k.seed), ("score", 1, 7));
        assert_eq!(k.params["tokenizer"], "whitespace");
        assert_eq!(k.inputs["data"][0].instance, "real@limit=60");
        assert!(k.fingerprints.is_empty());
        assert_eq!(record.outputs["scores.json"].size, 970);
        let mut written = serde_json::to_string_pretty(&record).unwrap();
        written.push('\n');
        assert_eq!(written, RECORD_V1);

        // Through the cache as well (its object must exist to be written).
        let (_d, c) = cache();
        let mut rec = record.clone();
        rec.outputs.clear();
        c.write_record(&rec).unwrap();
        assert_eq!(c.read_record(&rec.key), RecordState::Ok(rec));
    }

    #[test]
    fn a_record_names_the_job_that_computed_it() {
        let (_d, c) = cache();
        let key = hash_bytes(b"key");
        let mut rec = record(&key, &[]);
        let plain = serde_json::to_value(&rec).unwrap();
        assert!(plain.get("executor").is_none(), "{plain}");
        rec.executor = Some(Executed {
            kind: "slurm".into(),
            job_id: "123".into(),
            host: Some("node7".into()),
            gpus: None,
        });
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            json["executor"],
            serde_json::json!({"kind": "slurm", "job_id": "123", "host": "node7"})
        );
        c.write_record(&rec).unwrap();
        assert_eq!(c.read_record(&key), RecordState::Ok(rec));
    }

    #[test]
    fn failures_with_and_without_key_fields_read() {
        let key = hash_bytes(b"key");
        let base = format!(
            r#""key": "{key}", "stage": "gen", "instance": "gen", "error": "boom", "unix": 1.5"#
        );
        // Today's layout: the key's material after the error.
        let full = format!(
            r#"{{{base}, "kind": "topics", "version": 2, "seed": 7, "params": {{"n": 3}},
                "inputs": {{}}, "fingerprints": {{"w": "{key}"}}}}"#
        );
        let failure: Failure = serde_json::from_str(&full).unwrap();
        let fields = failure.key_fields.clone().expect("key fields");
        assert_eq!(
            (fields.kind.as_str(), fields.version, fields.seed),
            ("topics", 2, 7)
        );
        assert_eq!(fields.params, serde_json::json!({"n": 3}));
        assert_eq!(fields.fingerprints["w"], key);
        let again: Failure =
            serde_json::from_str(&serde_json::to_string(&failure).unwrap()).unwrap();
        assert_eq!(again, failure);
        // Notes written before failures kept the key's material.
        let old: Failure = serde_json::from_str(&format!("{{{base}}}")).unwrap();
        assert_eq!(old.error, "boom");
        assert_eq!(old.key_fields, None);
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("kind").is_none(), "{json}");
    }

    #[test]
    fn record_round_trip() {
        let (_d, c) = cache();
        let obj = c.put_bytes(b"data").unwrap();
        let key = hash_bytes(b"key");
        assert_eq!(c.read_record(&key), RecordState::Missing);
        let rec = record(&key, &[("data", &obj, 4)]);
        c.write_record(&rec).unwrap();
        assert_eq!(c.read_record(&key), RecordState::Ok(rec.clone()));

        // Overwrite is atomic and complete.
        let mut rec2 = rec.clone();
        rec2.log.push("again".into());
        c.write_record(&rec2).unwrap();
        assert_eq!(c.read_record(&key), RecordState::Ok(rec2));
        assert!(fsio::list_dir(&c.tmp_dir()).unwrap().is_empty());

        c.remove_record(&key).unwrap();
        c.remove_record(&key).unwrap();
        assert_eq!(c.read_record(&key), RecordState::Missing);
    }

    #[test]
    fn record_keys_lists_the_records_and_nothing_else() {
        let (_d, c) = cache();
        assert!(c.record_keys().unwrap().is_empty());
        let (a, b) = (hash_bytes(b"a"), hash_bytes(b"b"));
        for key in [&b, &a] {
            c.write_record(&record(key, &[])).unwrap();
        }
        fs::write(c.dir("records").join("notes.txt"), b"x").unwrap();
        fs::write(c.dir("records").join("ABC.json"), b"{}").unwrap();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(c.record_keys().unwrap(), want);
    }

    #[test]
    fn record_with_missing_or_wrong_size_object_is_refused() {
        let (_d, c) = cache();
        let key = hash_bytes(b"key");
        let absent = hash_bytes(b"never stored");
        let err = c
            .write_record(&record(&key, &[("data", &absent, 12)]))
            .unwrap_err();
        assert!(matches!(err, CacheError::ObjectNotStored { .. }), "{err}");
        let obj = c.put_bytes(b"data").unwrap();
        let err = c
            .write_record(&record(&key, &[("data", &obj, 5)]))
            .unwrap_err();
        assert!(err.to_string().contains("has size 4"), "{err}");
        assert_eq!(c.read_record(&key), RecordState::Missing);
    }

    #[test]
    fn unreadable_records_are_reported_not_errors() {
        let (_d, c) = cache();
        let obj = c.put_bytes(b"data").unwrap();
        let key = hash_bytes(b"key");
        c.write_record(&record(&key, &[("data", &obj, 4)])).unwrap();
        let path = c.record_path(&key).unwrap();
        let full = fs::read(&path).unwrap();

        fs::write(&path, &full[..full.len() / 2]).unwrap(); // truncated
        let RecordState::Unreadable(reason) = c.read_record(&key) else {
            panic!("truncated record should be unreadable");
        };
        assert!(reason.contains(&key), "{reason}");

        fs::write(&path, b"").unwrap();
        assert!(matches!(c.read_record(&key), RecordState::Unreadable(_)));
        fs::write(&path, b"{\"key\": 1}").unwrap();
        assert!(matches!(c.read_record(&key), RecordState::Unreadable(_)));

        // A valid record stored under another key's name is not trusted.
        let other = hash_bytes(b"other");
        fs::write(c.record_path(&other).unwrap(), &full).unwrap();
        assert!(matches!(c.read_record(&other), RecordState::Unreadable(_)));
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let (_d, c) = cache();
        let bad = "../records/x";
        assert!(matches!(c.read_record(bad), RecordState::Unreadable(_)));
        let mut rec = record(&hash_bytes(b"k"), &[]);
        rec.key = bad.into();
        assert!(matches!(
            c.write_record(&rec),
            Err(CacheError::InvalidKey { what: "key", .. })
        ));
        assert!(c.remove_record(bad).is_err());
        assert!(c.read_failure(bad).is_none());
        assert!(c.clear_failure(bad).is_err());
    }

    #[test]
    fn failure_round_trip() {
        let (_d, c) = cache();
        let key = hash_bytes(b"key");
        assert_eq!(c.read_failure(&key), None);
        let failure = Failure {
            key: key.clone(),
            stage: "gen".into(),
            instance: "gen".into(),
            error: "model not found".into(),
            unix: 1.5,
            ..Default::default()
        };
        c.write_failure(&failure).unwrap();
        assert_eq!(c.read_failure(&key), Some(failure));
        fs::write(c.failure_path(&key).unwrap(), b"{").unwrap();
        assert_eq!(c.read_failure(&key), None);
        c.clear_failure(&key).unwrap();
        c.clear_failure(&key).unwrap();
        assert_eq!(c.read_failure(&key), None);
    }
}
