//! HTTP plumbing of the downloads: the client, where the hub token may go,
//! redirects followed by hand (so the token never follows one to another
//! host, and the hub's checksum headers on the redirect are seen), JSON
//! answers read with a cap, and URLs shown without their credentials.
//!
//! The client is reqwest, the workspace's one HTTP stack (flow-generate's
//! OpenAI backend runs on the same reqwest), on a current-thread tokio
//! runtime per download: rustls with
//! the operating system's trust store (`rustls-tls-native-roots`), so a
//! proxy's root CA installed on the machine is trusted; `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` are honoured.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, Response};

use crate::{ModelError, Result};

/// The most a JSON answer (PyPI's project metadata) may weigh.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// The hub's address: `HF_ENDPOINT`, else `https://huggingface.co`, without a trailing `/`.
pub fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim()
        .trim_end_matches('/')
        .to_string()
}

/// `url` with any user info (`user:pass@`) and the values of query
/// parameters that look like credentials (`key`, `token`, `sig`...) replaced
/// by `***`, for logs, records and error messages.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) => (s, r),
        _ => return url.to_string(),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    // The query (before any fragment): credential-like values go.
    let (path, query, fragment) = match tail.split_once('?') {
        Some((p, q)) => match q.split_once('#') {
            Some((q, f)) => (p, Some(q), Some(f)),
            None => (p, Some(q), None),
        },
        None => (tail, None, None),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if secret_like(k) => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn secret_like(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "sig",
        "auth",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Scheme, host and port of a URL: where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub(crate) fn of(url: &str) -> Option<Origin> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next()?;
        let host_port = authority.rsplit('@').next()?;
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (host_port.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => match scheme.as_str() {
                "https" => 443,
                "http" => 80,
                _ => return None,
            },
        };
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// `host:port`, for messages.
    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The host named in `url` (for "answer from <host>" messages).
pub(crate) fn host_of(url: &str) -> String {
    Origin::of(url)
        .map(|o| o.host_port())
        .unwrap_or_else(|| redact_url(url))
}

/// The hub token (`HF_TOKEN`) and the one origin it may be sent to: the
/// configured endpoint's, and only over HTTPS or to a loopback address.
pub(crate) struct Token {
    origin: Origin,
    header: String,
}

impl Token {
    /// The token for requests to `endpoint`; `None` when there is none or it
    /// may not go there (plain HTTP to another machine).
    pub(crate) fn new(endpoint: &str, token: Option<String>) -> Option<Token> {
        let token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())?;
        let Some(origin) = Origin::of(endpoint) else {
            tracing::warn!(
                "HF_TOKEN is not sent: cannot read the endpoint {}",
                redact_url(endpoint)
            );
            return None;
        };
        if origin.scheme == "https" || (origin.scheme == "http" && origin.is_loopback()) {
            Some(Token {
                origin,
                header: format!("Bearer {token}"),
            })
        } else {
            tracing::warn!(
                "HF_TOKEN is not sent to {}: only over HTTPS (or to this machine)",
                redact_url(endpoint)
            );
            None
        }
    }

    /// The token for `HF_ENDPOINT` from `HF_TOKEN`.
    pub(crate) fn from_env(endpoint: &str) -> Option<Token> {
        Token::new(endpoint, std::env::var("HF_TOKEN").ok())
    }

    /// The `Authorization` value for a request to `url`: only to the endpoint's origin.
    pub(crate) fn for_url(&self, url: &str) -> Option<&str> {
        (Origin::of(url).as_ref() == Some(&self.origin)).then_some(self.header.as_str())
    }
}

/// The HTTP client of the downloads, driven from synchronous code on a
/// runtime of its own (one thread: this one): 30 s to connect, 120 s at
/// most without a byte from the server (a slow download that keeps coming
/// is not cut off), no redirects followed by the client itself (see
/// [`get`]), no compression asked for (a `Range` counts bytes of the file).
pub(crate) struct Http {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Http {
    pub(crate) fn new() -> Result<Http> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ModelError::io("start the HTTP runtime", e))?;
        let client = Client::builder()
            .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelError::Download(format!("HTTP client: {}", error_text(e, ""))))?;
        Ok(Http { rt, client })
    }

    /// The next piece of the body of `resp` (the answer to `url`); `None` at its end.
    pub(crate) fn chunk(
        &self,
        resp: &mut Response,
        url: &str,
    ) -> Result<Option<impl std::ops::Deref<Target = [u8]>>> {
        self.rt.block_on(async { resp.chunk().await }).map_err(|e| {
            ModelError::Download(format!("GET {}: {}", redact_url(url), error_text(e, url)))
        })
    }
}

/// Runs `f` (which does blocking HTTP on a runtime of its own) off any
/// tokio runtime the caller is on: a runtime cannot be driven from inside
/// another, so there it runs on a thread of its own. Elsewhere it runs here.
pub(crate) fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// An HTTP error as text: reqwest's message and its causes, without the URL
/// (the caller names it, redacted), and with any credentials of `url`
/// scrubbed from what the causes say.
pub(crate) fn error_text(e: reqwest::Error, url: &str) -> String {
    let e = e.without_url();
    scrub(
        &with_causes(e.to_string(), std::error::Error::source(&e)),
        url,
    )
}

/// `text`, then each cause that it does not already say, `: `-separated.
fn with_causes(mut text: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// `text` without `url` itself or its user info, should either appear in it.
fn scrub(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(url, &redact_url(url));
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if !userinfo.is_empty() {
                out = out.replace(userinfo, "***");
            }
        }
    }
    out
}

/// A response after the redirects, with what the hub said on the way.
pub(crate) struct Fetched {
    pub resp: Response,
    /// The hub's sha256 of an LFS file (`X-Linked-Etag`).
    pub linked_sha256: Option<String>,
    /// The hub's size of an LFS file (`X-Linked-Size`).
    pub linked_size: Option<u64>,
}

/// GETs `url` with `headers`, following redirects by hand: `Authorization`
/// goes only where `token` allows, so never to another host.
pub(crate) fn get(
    http: &Http,
    url: &str,
    headers: &[(&str, String)],
    token: Option<&Token>,
) -> Result<Fetched> {
    let mut url = url.to_string();
    let mut linked_sha256 = None;
    let mut linked_size = None;
    for _ in 0..=MAX_REDIRECTS {
        let mut req = http.client.get(&url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(auth) = token.and_then(|t| t.for_url(&url)) {
            let mut v = HeaderValue::from_str(auth).map_err(|_| {
                ModelError::Invalid("HF_TOKEN has characters a header cannot carry".into())
            })?;
            // Kept out of reqwest's own Debug output of requests.
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        // The request's timers belong to the runtime: made inside it.
        let resp = http.rt.block_on(async { req.send().await }).map_err(|e| {
            ModelError::Download(format!("GET {}: {}", redact_url(&url), error_text(e, &url)))
        })?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        if linked_sha256.is_none() {
            linked_sha256 = header("x-linked-etag").and_then(sha256_of_etag);
        }
        if linked_size.is_none() {
            linked_size = header("x-linked-size").and_then(|v| v.parse::<u64>().ok());
        }
        let status = resp.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = header("location").ok_or_else(|| {
                ModelError::Download(format!(
                    "GET {}: HTTP {status} without a Location",
                    redact_url(&url)
                ))
            })?;
            url = join(&url, location).ok_or_else(|| {
                ModelError::Download(format!(
                    "GET {}: HTTP {status} to an unreadable Location",
                    redact_url(&url)
                ))
            })?;
            continue;
        }
        return Ok(Fetched {
            resp,
            linked_sha256,
            linked_size,
        });
    }
    Err(ModelError::Download(format!(
        "GET {}: more than {MAX_REDIRECTS} redirects",
        redact_url(&url)
    )))
}

/// An ETag that is a sha256 (`"<64 hex>"`, maybe weak), lowercased.
fn sha256_of_etag(v: &str) -> Option<String> {
    let v = v.trim().trim_start_matches("W/").trim_matches('"');
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

/// `location` read against `base`: absolute, scheme-relative, absolute path or relative path.
fn join(base: &str, location: &str) -> Option<String> {
    if let Some((scheme, _)) = location.split_once("://") {
        if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Some(location.to_string());
        }
    }
    let (scheme, rest) = base.split_once("://")?;
    if let Some(net) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{net}"));
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = rest[auth_end..].split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

/// The body of `resp` (the answer to `url`), at most `cap` bytes.
pub(crate) fn read_capped(http: &Http, mut resp: Response, cap: u64, url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(piece) = http.chunk(&mut resp, url)? {
        out.extend_from_slice(&piece);
        if out.len() as u64 > cap {
            return Err(ModelError::Download(format!(
                "answer from {} exceeds {} (GET {})",
                host_of(url),
                size_text(cap),
                redact_url(url)
            )));
        }
    }
    Ok(out)
}

/// `n` bytes as `N MiB` where it is whole mebibytes, else in bytes.
pub(crate) fn size_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}
