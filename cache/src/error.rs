//! The one error type of this crate. Every variant names the file or folder involved.

use std::io;
use std::path::PathBuf;

/// What went wrong, and where.
///
/// I/O and JSON errors keep their cause as the error `source`, and also show it in the
/// message (as the engine's errors do), so `to_string()` alone tells the whole story.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A key, hash or scope was not 64 lowercase hex characters; no path was built from it.
    #[error("invalid {what} {value:?}: expected 64 lowercase hex characters (a blake3 hash)")]
    InvalidKey {
        /// "key", "hash" or "scope".
        what: &'static str,
        /// The offending text (shortened if very long).
        value: String,
    },

    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create folder" or "read".
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A value could not be encoded as JSON.
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        /// The file the JSON was meant for.
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON file exists but cannot be decoded, where carrying on could lose data.
    #[error("{} is unreadable: {reason}; fix or delete it", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },

    /// The cache was written by a different layout version of flow.
    #[error(
        "{} says cache layout version {found:?}, but this flow uses version {expected}; \
         use another cache folder or delete this one",
        path.display()
    )]
    Version {
        /// The VERSION file.
        path: PathBuf,
        /// Its content.
        found: String,
        /// The version this crate writes.
        expected: u32,
    },

    /// A non-empty folder without flow's `VERSION` file was given as the cache.
    #[error(
        "{} is not a flow cache ({found}); flow refuses to use or clean it: \
         point --cache-dir / FLOW_CACHE_DIR at an empty or new folder",
        path.display()
    )]
    NotACache {
        /// The folder.
        path: PathBuf,
        /// What is there instead.
        found: String,
    },

    /// Garbage collection was refused because a run holds the cache.
    #[error(
        "the cache is in use by a running `flow run` (it holds {}); run gc again when it has finished",
        path.display()
    )]
    Busy {
        /// The run lock file.
        path: PathBuf,
    },

    /// `put_file` was given something other than a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },

    /// A record was refused because one of its output objects is not stored (or has the wrong size).
    #[error(
        "cannot write record {}: output {output:?} (object {hash}) {problem}",
        path.display()
    )]
    ObjectNotStored {
        /// The record file that was not written.
        path: PathBuf,
        /// The output name.
        output: String,
        /// The object's hash.
        hash: String,
        /// "is missing" or "has size X, the record says Y".
        problem: String,
    },
}

impl CacheError {
    /// Wraps an I/O error with what was being done to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CacheError::Io {
            action,
            path,
            source,
        }
    }
}
