//! A real S3 server for tests: moto (`python3 -m moto.server`) on a free loopback port,
//! stopped when the guard drops (also when the test panics).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server. Dropping it kills the server.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Moto {
    /// Starts moto on a free port of 127.0.0.1 and waits until it answers. `Err` says what is
    /// missing (moto not installed, the server did not come up), for `skip_or_fail!`.
    pub fn start() -> Result<Moto, String> {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return Err(
                "moto's S3 server is not installed (`python3 -m pip install \
                        'moto[server]'`; `python3 -c 'import moto.server'` must work)"
                    .into(),
            );
        }
        let dir = TempDir::new()?;
        let mut last = String::new();
        // The port is free when asked for, but another process could take it before moto
        // binds it: try a few.
        for attempt in 0..3 {
            let port = free_port()?;
            let log = dir.0.join(format!("moto-{attempt}.log"));
            let log_file = std::fs::File::create(&log).map_err(|e| format!("moto log: {e}"))?;
            let err_file = log_file.try_clone().map_err(|e| format!("moto log: {e}"))?;
            let child = Command::new("python3")
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file)
                .spawn()
                .map_err(|e| format!("cannot start python3 -m moto.server: {e}"))?;
            let mut moto = Moto {
                child,
                port,
                log,
                _dir: TempDir(PathBuf::new()),
            };
            match moto.wait_ready(Duration::from_secs(60)) {
                Ok(()) => {
                    moto._dir = dir;
                    return Ok(moto);
                }
                Err(e) => last = e,
            }
        }
        Err(format!("moto did not come up: {last}"))
    }

    fn wait_ready(&mut self, patience: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status}): {}", self.log_tail()));
            }
            if self.request("GET", "/", &[], &[]).is_ok() {
                return Ok(());
            }
            if start.elapsed() > patience {
                return Err(format!(
                    "no answer within {patience:?}: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or("").to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (`PUT /bucket`; moto does not check signatures).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let (status, body) = self.request("PUT", &format!("/{bucket}"), &[], &[])?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!(
                "creating bucket {bucket}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }

    /// Writes `body` at `bucket/key` through the S3 API (unconditionally), e.g. to
    /// alter an object behind flow's back. Returns the HTTP status.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<u16, String> {
        Ok(self
            .request("PUT", &format!("/{bucket}/{key}"), &[], body)?
            .0)
    }

    /// Reads `bucket/key`: `None` when it does not exist.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let (status, body) = self.request("GET", &format!("/{bucket}/{key}"), &[], &[])?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            other => Err(format!("GET {bucket}/{key}: HTTP {other}")),
        }
    }

    /// The keys under `prefix` in `bucket` (ListObjectsV2, every page).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={}", encode(prefix));
            if let Some(t) = &token {
                path += &format!("&continuation-token={}", encode(t));
            }
            let (status, body) = self.request("GET", &path, &[], &[])?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if status != 200 {
                return Err(format!("list {bucket}/{prefix}: HTTP {status}: {text}"));
            }
            keys.extend(between_all(&text, "<Key>", "</Key>"));
            token = between_all(&text, "<NextContinuationToken>", "</NextContinuationToken>")
                .into_iter()
                .next();
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// One HTTP/1.1 request to the server: (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let io = |e: std::io::Error| format!("{method} {path}: {e}");
        let mut stream = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, self.port).into(),
            Duration::from_secs(5),
        )
        .map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        // moto checks no signature, but treats a request without one as anonymous (403
        // on private objects): a well-formed header with a dummy signature.
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Connection: close\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential=flowtest/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, \
             Signature=00\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("{method} {path}: no HTTP response"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
        let mut body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn between_all(text: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return out;
        };
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// A temporary folder (testkit has no dependencies, so not the tempfile crate's).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("flow-moto-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_decode_what_moto_sends() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(
            between_all("<Key>a</Key><Key>b/c</Key>", "<Key>", "</Key>"),
            ["a", "b/c"]
        );
        assert_eq!(encode("a b/c"), "a%20b/c");
    }
}
