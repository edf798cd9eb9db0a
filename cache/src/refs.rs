//! Refs: per manifest scope, the key each instance had at its last run (`refs/<scope>.json`).
//!
//! `flow status` compares them with today's keys to explain staleness, and gc keeps what
//! they point at.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fsio::{self, JsonFile};
use crate::hash::{self, Hash};
use crate::{lock, Cache, CacheError};

/// The keys of one manifest scope (manifest path + profile).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Refs {
    /// The manifest file; gc drops these refs once it no longer exists, so store it absolute.
    pub manifest: PathBuf,
    /// The profile, if any.
    pub profile: Option<String>,
    /// Instance name -> key at its last run. A run adds each instance the moment its
    /// record is written, so gc keeps what a crashed run finished.
    pub instances: BTreeMap<String, Hash>,
    /// Instance name -> key of a stage that was started and has not finished: its work
    /// folder (checkpoints, partial generations) is kept by gc until the instance settles.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub running: BTreeMap<String, Hash>,
}

impl Refs {
    /// Every key these refs keep alive.
    pub fn keys(&self) -> impl Iterator<Item = &Hash> {
        self.instances.values().chain(self.running.values())
    }
}

impl Cache {
    pub(crate) fn refs_path(&self, scope: &str) -> Result<PathBuf, CacheError> {
        hash::check("scope", scope)?;
        Ok(self.dir("refs").join(format!("{scope}.json")))
    }

    /// The refs of `scope`; missing or unreadable refs (or an invalid scope) read as empty.
    pub fn read_refs(&self, scope: &str) -> Refs {
        let path = match self.refs_path(scope) {
            Ok(path) => path,
            Err(e) => {
                tracing::warn!("{e}");
                return Refs::default();
            }
        };
        match fsio::read_json(&path) {
            JsonFile::Ok(refs) => refs,
            JsonFile::Missing => Refs::default(),
            JsonFile::Unreadable(reason) => {
                tracing::warn!("ignoring refs: {reason}");
                Refs::default()
            }
        }
    }

    /// Read-modify-write of the refs of `scope` under an exclusive lock
    /// (`locks/refs-<scope>.lock`), so concurrent runs merge their changes instead of
    /// overwriting each other's; the write is atomic.
    pub fn update_refs(&self, scope: &str, f: impl FnOnce(&mut Refs)) -> Result<(), CacheError> {
        let path = self.refs_path(scope)?;
        let _lock = lock::lock_exclusive(&self.lock_path(&format!("refs-{scope}.lock")))?;
        let mut refs = self.read_refs(scope);
        f(&mut refs);
        fsio::write_json_atomic(&self.tmp_dir(), &path, &refs)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::thread;

    use super::*;
    use crate::hash::hash_bytes;
    use crate::test_util::cache;

    #[test]
    fn missing_and_unreadable_refs_read_as_empty() {
        let (_d, c) = cache();
        let scope = hash_bytes(b"scope");
        assert_eq!(c.read_refs(&scope), Refs::default());
        fs::write(c.refs_path(&scope).unwrap(), b"{not json").unwrap();
        assert_eq!(c.read_refs(&scope), Refs::default());
        assert_eq!(c.read_refs("not-a-scope"), Refs::default());
        assert!(matches!(
            c.update_refs("../x", |_| {}),
            Err(CacheError::InvalidKey { what: "scope", .. })
        ));
    }

    #[test]
    fn update_round_trip() {
        let (_d, c) = cache();
        let scope = hash_bytes(b"scope");
        c.update_refs(&scope, |r| {
            r.manifest = "/tmp/flow.toml".into();
            r.profile = Some("quick".into());
            r.instances.insert("gen".into(), hash_bytes(b"k1"));
        })
        .unwrap();
        let refs = c.read_refs(&scope);
        assert_eq!(refs.manifest, PathBuf::from("/tmp/flow.toml"));
        assert_eq!(refs.profile.as_deref(), Some("quick"));
        assert_eq!(refs.instances["gen"], hash_bytes(b"k1"));
    }

    #[test]
    fn concurrent_updates_from_two_threads_merge() {
        let (_d, c) = cache();
        let scope = hash_bytes(b"scope");
        thread::scope(|s| {
            for t in 0..2 {
                let (c, scope) = (&c, &scope);
                s.spawn(move || {
                    for i in 0..25 {
                        c.update_refs(scope, |r| {
                            let name = format!("t{t}-i{i}");
                            let key = hash_bytes(name.as_bytes());
                            r.instances.insert(name, key);
                        })
                        .unwrap();
                    }
                });
            }
        });
        let refs = c.read_refs(&scope);
        assert_eq!(refs.instances.len(), 50);
        for (name, key) in &refs.instances {
            assert_eq!(*key, hash_bytes(name.as_bytes()));
        }
    }
}
