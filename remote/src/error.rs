//! The one error type of this crate. Every variant names the remote location or local file
//! involved; no variant holds a credential (store errors keep only their redacted text).

use std::io;
use std::path::PathBuf;

use flow_cache::CacheError;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote is not an `s3://bucket/prefix` URL flow accepts.
    #[error("invalid remote {url:?}: {reason}")]
    Url {
        /// The URL as given (it never holds credentials: a URL with `@` is refused).
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The endpoint is plain HTTP and that was not allowed.
    #[error(
        "refusing plain HTTP to {endpoint}: credentials and data would cross the network \
         unencrypted; use an https:// endpoint, or allow it with --allow-http or \
         AWS_ALLOW_HTTP=true (e.g. for a server on this machine)"
    )]
    PlainHttp {
        /// The endpoint, without any user information.
        endpoint: String,
    },

    /// No credentials in the environment (flow never probes instance metadata servers).
    #[error(
        "no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (and AWS_SESSION_TOKEN for temporary ones), or AWS_SKIP_SIGNATURE=true for a public bucket"
    )]
    NoCredentials {
        /// The remote.
        url: String,
    },

    /// The S3 client could not be configured from the URL and the environment.
    #[error("cannot configure the S3 client for {url}: {message}")]
    Config {
        /// The remote.
        url: String,
        /// Why (redacted).
        message: String,
    },

    /// A request to the store failed.
    #[error("cannot {action} {location}: {message}")]
    Store {
        /// What was being done, e.g. "upload" or "list".
        action: &'static str,
        /// The remote location, `s3://bucket/key`.
        location: String,
        /// The store's error, with any credential removed.
        message: String,
    },

    /// A pulled object does not hash to its name: altered or damaged on the remote.
    #[error(
        "{location} is altered or damaged: its content hashes to {actual}, not to its name \
         {expected}; not installed (nor record {key})"
    )]
    Corrupt {
        /// The remote object.
        location: String,
        /// Its name (the hash it should have).
        expected: String,
        /// The hash of what was downloaded.
        actual: String,
        /// The record that needed it.
        key: String,
    },

    /// A pulled object is not the size its record says.
    #[error(
        "{location} has {actual} bytes, record {key} says {expected}; not installed (nor the record)"
    )]
    WrongSize {
        /// The remote object.
        location: String,
        /// The size in the record.
        expected: u64,
        /// The size downloaded (or more than expected, where the download stopped early).
        actual: u64,
        /// The record.
        key: String,
    },

    /// An object already on the remote is not what its name says (seen while pushing).
    #[error("{location} is damaged on the remote ({problem}); not overwritten: delete it there and push again")]
    RemoteDamaged {
        /// The remote object.
        location: String,
        /// What is wrong.
        problem: String,
    },

    /// A pulled record cannot be used.
    #[error("{location} is not a usable record: {reason}; not installed")]
    BadRecord {
        /// The remote record.
        location: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The remote holds a cache of another layout, or something that is not a flow cache.
    #[error("{location}: {problem}")]
    Layout {
        /// The remote `VERSION` file (or the prefix).
        location: String,
        /// What was found.
        problem: String,
    },

    /// A local object to push does not hash to its name or has the wrong size.
    #[error(
        "local object {} is damaged ({problem}); record {key} ({instance}) not pushed: \
         `flow run` recomputes it",
        path.display()
    )]
    LocalObject {
        /// The object file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// The record that points at it.
        key: String,
        /// Its instance name.
        instance: String,
    },

    /// A local record to push is missing or unreadable.
    #[error("record {key} is not pushed: {reason}")]
    LocalRecord {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },

    /// The task transferring a record stopped (it panicked or was cancelled).
    #[error("the transfer of record {key} stopped: {reason}")]
    Stopped {
        /// The record.
        key: String,
        /// Why.
        reason: String,
    },

    /// The local cache refused an operation.
    #[error(transparent)]
    Cache(#[from] CacheError),

    /// A local file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The asynchronous runtime the transfers run on could not start.
    #[error("cannot start the transfer runtime: {0}")]
    Runtime(#[source] io::Error),
}

impl RemoteError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| RemoteError::Io {
            action,
            path,
            source,
        }
    }
}
