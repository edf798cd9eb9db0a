//! flow's remote cache: records and objects pushed to, and pulled from, an S3-compatible store.
//!
//! Layout under `s3://bucket/prefix` (the local cache's, less what is machine-specific):
//!
//! ```text
//! VERSION                 the cache layout version ("1"), written once, create-only
//! objects/ab/<62 hex>     immutable blobs, named by their blake3 hash
//! records/<key>.json      what a stage instance produced (outputs, metrics, log)
//! ```
//!
//! Protocol. A push uploads a record's objects first, then the record, each with
//! `If-None-Match: *` ([`PutMode::Create`]): nothing on the remote is ever overwritten, so
//! a record is only visible once its objects are, and two machines pushing overlapping
//! caches at once both succeed (an object already there is skipped: its name is its content;
//! a record already there is the first machine's result for that key, and is kept). Objects
//! larger than [`Options::single_put_max`] go up in parts, which S3 cannot make create-only:
//! they are skipped when already there, and two pushers of one write the same bytes.
//!
//! A pull downloads a record, then each of its objects the local cache lacks into the cache's
//! `tmp/`, hashing while downloading: an object whose content does not hash to its name (or
//! whose size differs from the record's) is reported with its remote key and not installed,
//! nor is the record. The record is written last, so the local cache's own invariant (a
//! record only points at stored objects) holds throughout.
//!
//! Credentials and the endpoint come from the standard variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`, `AWS_REGION`, ...).
//! They go into request signatures only: never into a key, a record, a log line or an error
//! (store errors are scrubbed of every credential value before they are kept).

mod error;
mod pull;
mod push;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use flow_cache::Cache;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use error::RemoteError;
pub use pull::PullReport;
pub use push::PushReport;

/// The remote layout version this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// How transfers run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Allow an `http://` endpoint (also allowed by `AWS_ALLOW_HTTP=true`).
    pub allow_http: bool,
    /// Requests in flight at once.
    pub jobs: usize,
    /// Objects up to this size go up in one create-only PUT (held in memory); larger ones in
    /// parts of [`Options::part_size`].
    pub single_put_max: u64,
    /// Part size of multipart uploads (S3 needs at least 5 MiB but for the last part).
    pub part_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_http: false,
            jobs: 16,
            single_put_max: 32 << 20,
            part_size: 8 << 20,
        }
    }
}

/// What one push or pull moved (or found already there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records.
    pub records: usize,
    /// Objects.
    pub objects: usize,
    /// Bytes of those objects.
    pub bytes: u64,
}

impl Tally {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Tally) {
        self.records += other.records;
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

/// A remote cache at `s3://bucket/prefix`.
pub struct Remote {
    inner: Arc<Inner>,
    rt: tokio::runtime::Runtime,
}

/// The store and where in it the cache is; shared by the tasks of a transfer.
pub(crate) struct Inner {
    url: String,
    bucket: String,
    prefix: Path,
    store: AmazonS3,
    opts: Options,
    redact: Redactor,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the store: its configuration holds the credentials.
        f.debug_struct("Remote")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Remote {
    /// Opens the remote `url` (`s3://bucket` or `s3://bucket/prefix`) with the credentials,
    /// endpoint and region of the process environment. Nothing is sent yet.
    pub fn open(url: &str, opts: Options) -> Result<Remote, RemoteError> {
        Remote::open_with_env(
            url,
            opts,
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// [`Remote::open`] with the given variables instead of the process environment.
    pub fn open_with_env(
        url: &str,
        opts: Options,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Remote, RemoteError> {
        let (bucket, prefix) = parse_url(url)?;
        let url = if prefix.as_ref().is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let var = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let truthy = |k: &str| var(k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");

        let signed = var("AWS_ACCESS_KEY_ID").is_some() && var("AWS_SECRET_ACCESS_KEY").is_some();
        let delegated = var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            || var("AWS_METADATA_ENDPOINT").is_some();
        if !(signed || delegated || truthy("AWS_SKIP_SIGNATURE")) {
            // Else object_store would ask the instance metadata server, a surprise off EC2.
            return Err(RemoteError::NoCredentials { url });
        }
        let allow_http = opts.allow_http || truthy("AWS_ALLOW_HTTP");
        for k in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"] {
            if let Some(endpoint) = var(k) {
                if endpoint.to_ascii_lowercase().starts_with("http://") && !allow_http {
                    return Err(RemoteError::PlainHttp {
                        endpoint: without_userinfo(endpoint),
                    });
                }
            }
        }

        let redact = Redactor::new(
            [
                "AWS_SECRET_ACCESS_KEY",
                "AWS_ACCESS_KEY_ID",
                "AWS_SESSION_TOKEN",
            ]
            .iter()
            .filter_map(|k| var(k).map(str::to_string)),
        );
        // Defaults first, so the environment can override them: a transfer of a large part
        // on a slow link takes longer than object_store's 30 s.
        let mut builder = AmazonS3Builder::new()
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                "300 seconds",
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "10 seconds",
            );
        for (k, v) in &env {
            // Unknown AWS_* variables (AWS_PROFILE, AWS_CA_BUNDLE...) are not S3 settings.
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        let store = builder
            .with_bucket_name(&bucket)
            .with_allow_http(allow_http)
            .build()
            .map_err(|e| RemoteError::Config {
                url: url.clone(),
                message: redact.text(&e.to_string()),
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.jobs.clamp(1, 4))
            .thread_name("flow-remote")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        let inner = Inner {
            url,
            bucket,
            prefix,
            store,
            opts: Options {
                jobs: opts.jobs.max(1),
                part_size: opts.part_size.max(5 << 20),
                ..opts
            },
            redact,
        };
        Ok(Remote {
            inner: Arc::new(inner),
            rt,
        })
    }

    /// The remote as `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The keys of every record on the remote, sorted.
    pub fn record_keys(&self) -> Result<Vec<String>, RemoteError> {
        self.rt.block_on(self.inner.list_record_keys())
    }
}

impl Inner {
    // ---- locations ------------------------------------------------------------------------

    fn child(&self, parts: &[&str]) -> Path {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }

    fn version_path(&self) -> Path {
        self.child(&["VERSION"])
    }

    fn records_dir(&self) -> Path {
        self.child(&["records"])
    }

    fn record_path(&self, key: &str) -> Path {
        self.child(&["records", &format!("{key}.json")])
    }

    fn object_path(&self, hash: &str) -> Path {
        self.child(&["objects", &hash[..2], &hash[2..]])
    }

    /// `s3://bucket/key`, for messages.
    fn location(&self, path: &Path) -> String {
        format!("s3://{}/{path}", self.bucket)
    }

    fn store_error(
        &self,
        action: &'static str,
        path: &Path,
        e: &object_store::Error,
    ) -> RemoteError {
        RemoteError::Store {
            action,
            location: self.location(path),
            message: self.redact.text(&e.to_string()),
        }
    }

    // ---- shared steps ---------------------------------------------------------------------

    async fn list_record_keys(&self) -> Result<Vec<String>, RemoteError> {
        let dir = self.records_dir();
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.store_error("list", &dir, &e))?;
        let mut keys: Vec<String> = metas
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let key = name.strip_suffix(".json")?;
                let ok = flow_cache::is_valid_hash(key) && m.location == self.record_path(key);
                if !ok {
                    tracing::warn!("ignoring {}: not a record", self.location(&m.location));
                }
                ok.then(|| key.to_string())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// The remote's layout version: `None` when it has no `VERSION` (nothing pushed yet).
    async fn read_version(&self) -> Result<Option<String>, RemoteError> {
        let path = self.version_path();
        match self.store.get(&path).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| self.store_error("download", &path, &e))?;
                Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error("download", &path, &e)),
        }
    }

    fn check_version(&self, found: &str) -> Result<(), RemoteError> {
        if found == LAYOUT_VERSION.to_string() {
            return Ok(());
        }
        Err(RemoteError::Layout {
            location: self.location(&self.version_path()),
            problem: format!(
                "says cache layout version {:?}, but this flow uses version {LAYOUT_VERSION}; \
                 use another prefix",
                found.chars().take(40).collect::<String>()
            ),
        })
    }

    /// Writes `VERSION` if the remote has none (create-only), else checks it.
    async fn ensure_version(&self) -> Result<(), RemoteError> {
        let path = self.version_path();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let body = PutPayload::from(format!("{LAYOUT_VERSION}\n"));
        match self.store.put_opts(&path, body, opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let found = self.read_version().await?.unwrap_or_default();
                self.check_version(&found)
            }
            Err(e) => Err(self.store_error("upload", &path, &e)),
        }
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (possibly empty).
fn parse_url(url: &str) -> Result<(String, Path), RemoteError> {
    let bad = |reason: &str| RemoteError::Url {
        url: if url.contains('@') {
            // It may hold credentials: show none of it.
            "<a URL with user information>".into()
        } else {
            url.to_string()
        },
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("expected s3://BUCKET or s3://BUCKET/PREFIX"))?;
    if rest.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no query, fragment or spaces allowed"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !bucket_ok {
        return Err(bad(
            "the bucket name must be 3 to 63 lowercase letters, digits, dots and dashes",
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix = Path::parse(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
    if prefix
        .parts()
        .any(|p| p.as_ref() == "." || p.as_ref() == "..")
    {
        return Err(bad("bad prefix: no `.` or `..` parts"));
    }
    Ok((bucket.to_string(), prefix))
}

/// An endpoint URL for messages: any `user:password@` removed.
fn without_userinfo(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(host_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => endpoint.to_string(),
    }
}

/// Removes credential values from text before it is kept in an error.
#[derive(Clone, Debug, Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret containing another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "<redacted>");
        }
        out
    }
}

/// One push or pull: the remote, the cache, a bound on object transfers in flight, and a
/// lock per object so two records sharing an object transfer it once. Records are handled
/// by tasks of their own, so one blocked on the disk (installing an object is fsynced) does
/// not hold up the others.
pub(crate) struct Transfer {
    pub(crate) remote: Arc<Inner>,
    /// A handle of its own on the caller's cache, shared by the tasks.
    pub(crate) cache: Arc<Cache>,
    permits: tokio::sync::Semaphore,
    /// Per object hash: whether this transfer has already moved (or found) it.
    objects: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

impl Transfer {
    pub(crate) fn new(remote: &Remote, cache: &Cache) -> Result<Arc<Transfer>, RemoteError> {
        Ok(Arc::new(Transfer {
            remote: Arc::clone(&remote.inner),
            cache: Arc::new(Cache::open(cache.root())?),
            permits: tokio::sync::Semaphore::new(remote.inner.opts.jobs),
            objects: Mutex::new(HashMap::new()),
        }))
    }

    /// Runs `f` for every key, each in a task of its own, `jobs` at a time; the results in
    /// the order they finish. A task that panicked is reported as an error of its key.
    pub(crate) async fn each<T, Fut>(
        self: &Arc<Self>,
        keys: Vec<String>,
        f: impl Fn(Arc<Transfer>, String) -> Fut,
    ) -> Vec<Result<T, RemoteError>>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, RemoteError>> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let mut keys = keys.into_iter();
        let mut out = Vec::new();
        loop {
            while tasks.len() < self.remote.opts.jobs {
                let Some(key) = keys.next() else { break };
                let id = tasks.spawn(f(Arc::clone(self), key.clone())).id();
                names.insert(id, key);
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                return out;
            };
            out.push(match joined {
                Ok((_, result)) => result,
                Err(e) => Err(RemoteError::Stopped {
                    key: names.remove(&e.id()).unwrap_or_default(),
                    reason: e.to_string(),
                }),
            });
        }
    }

    /// The lock of one object; its value says whether this transfer already handled it.
    pub(crate) fn object_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut map = self
            .objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(hash.to_string()).or_default())
    }

    /// Waits for a free transfer slot (bounds requests, and the memory of single PUTs).
    /// `None` only if the semaphore were closed, which it never is.
    pub(crate) async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CREDS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
    ];

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let (b, p) = parse_url("s3://my-bucket/team/flow-cache/").unwrap();
        assert_eq!((b.as_str(), p.as_ref()), ("my-bucket", "team/flow-cache"));
        let (b, p) = parse_url("s3://my.bucket").unwrap();
        assert_eq!((b.as_str(), p.as_ref()), ("my.bucket", ""));
        for bad in [
            "http://bucket/x",
            "s3://",
            "s3://Bucket/x",
            "s3://ab",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/x?versionId=1",
            "s3://bucket/with space",
        ] {
            assert!(
                matches!(parse_url(bad), Err(RemoteError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_not_shown() {
        let err = parse_url("s3://AKID:s3cr3t@bucket/x").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cr3t") && !msg.contains("AKID"), "{msg}");
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
    }

    #[test]
    fn no_credentials_is_an_error_not_a_metadata_probe() {
        let err = Remote::open_with_env("s3://bucket/p", Options::default(), env(&[])).unwrap_err();
        assert!(matches!(err, RemoteError::NoCredentials { .. }), "{err}");
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
        let public = env(&[("AWS_SKIP_SIGNATURE", "true")]);
        Remote::open_with_env("s3://bucket/p", Options::default(), public).unwrap();
    }

    #[test]
    fn plain_http_needs_to_be_allowed() {
        let mut vars = env(&CREDS);
        vars.push((
            "AWS_ENDPOINT_URL".into(),
            "http://user:pw@127.0.0.1:9000".into(),
        ));
        let err =
            Remote::open_with_env("s3://bucket", Options::default(), vars.clone()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RemoteError::PlainHttp { .. }), "{msg}");
        assert!(
            msg.contains("http://127.0.0.1:9000") && !msg.contains("pw"),
            "{msg}"
        );
        let allowed = Options {
            allow_http: true,
            ..Options::default()
        };
        let remote = Remote::open_with_env("s3://bucket/a/b", allowed, vars.clone()).unwrap();
        assert_eq!(remote.url(), "s3://bucket/a/b");
        assert!(!format!("{remote:?}").contains("EXAMPLEKEY"));
        vars.push(("AWS_ALLOW_HTTP".into(), "true".into()));
        Remote::open_with_env("s3://bucket", Options::default(), vars).unwrap();
    }

    #[test]
    fn remote_paths_mirror_the_local_layout() {
        let mut vars = env(&CREDS);
        vars.push(("AWS_REGION".into(), "eu-west-1".into()));
        let r = Remote::open_with_env("s3://bucket/team/c", Options::default(), vars).unwrap();
        let h = flow_cache::hash_bytes(b"x");
        let r = &r.inner;
        assert_eq!(
            r.object_path(&h).as_ref(),
            format!("team/c/objects/{}/{}", &h[..2], &h[2..])
        );
        assert_eq!(
            r.location(&r.record_path(&h)),
            format!("s3://bucket/team/c/records/{h}.json")
        );
        assert_eq!(r.version_path().as_ref(), "team/c/VERSION");
        let root = Remote::open_with_env("s3://bucket", Options::default(), env(&CREDS)).unwrap();
        assert_eq!(root.inner.version_path().as_ref(), "VERSION");
    }

    #[test]
    fn redaction_removes_every_credential() {
        let r = Redactor::new(["abcd".to_string(), "abcdefgh".to_string(), "xy".to_string()]);
        assert_eq!(
            r.text("key abcdefgh and abcd and xy"),
            "key <redacted> and <redacted> and xy"
        );
        assert_eq!(
            without_userinfo("https://u:p@host:1/path"),
            "https://host:1/path"
        );
    }
}
