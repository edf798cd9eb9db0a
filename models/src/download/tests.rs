//! Downloads against real HTTP servers on loopback: where the hub token
//! goes, the hub's checksums, capped JSON answers, and names that would
//! leave the models folder.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::sync::{Arc, Mutex};

use super::*;
use crate::{resolve, Format, ModelSpec};

/// One request a test server saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    range: Option<String>,
}

/// What a test server answers: status, headers, body.
type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A real HTTP/1.1 server on `bind` (port 0: any), one connection per
/// request, answering with `handler(path, authorization)`. Returns its
/// port and what it saw.
fn server(
    bind: &str,
    handler: impl Fn(&str, Option<&str>) -> Reply + Send + 'static,
) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    server_with_range(bind, move |path, auth, _| handler(path, auth))
}

/// [`server`], the handler also given the request's `Range`.
fn server_with_range(
    bind: &str,
    handler: impl Fn(&str, Option<&str>, Option<&str>) -> Reply + Send + 'static,
) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind(bind).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut authorization = None;
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("authorization") {
                        authorization = Some(v.trim().to_string());
                    }
                    if k.trim().eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
            log.lock().unwrap().push(Seen {
                path: path.clone(),
                authorization: authorization.clone(),
                range: range.clone(),
            });
            let (status, headers, body) =
                handler(&path, authorization.as_deref(), range.as_deref());
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (port, seen)
}

fn ok(body: &[u8]) -> Reply {
    (200, Vec::new(), body.to_vec())
}

fn not_found() -> Reply {
    (404, Vec::new(), b"not found".to_vec())
}

fn redirect(to: String, extra: &[(&str, String)]) -> Reply {
    let mut headers = vec![("Location".to_string(), to)];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    (302, headers, Vec::new())
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn env_in(dir: &Path) -> ModelEnv {
    ModelEnv {
        base_dir: dir.to_path_buf(),
        models_dir: None,
        download_dir: Some(dir.join("downloads")),
        offline: false,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `HF_TOKEN` reaches the configured endpoint (whatever its path is called)
/// and follows a redirect on that host, but not one to another host: the
/// hub's CDN redirect, here to a second server on another port.
#[test]
fn the_hub_token_goes_to_the_endpoint_host_only() {
    let weights = b"private weights".to_vec();
    let (cdn_port, cdn_seen) = server("127.0.0.1:0", {
        let weights = weights.clone();
        move |path, _| {
            if path.starts_with("/blob/") {
                ok(&weights)
            } else {
                not_found()
            }
        }
    });
    let sha = sha256_hex(&weights);
    let (hub_port, hub_seen) = server("127.0.0.1:0", move |path, auth| {
        if auth != Some("Bearer hf_secret") {
            return (401, Vec::new(), b"unauthorized".to_vec());
        }
        match path {
            // A renamed repository: a relative redirect on the same host.
            "/mirror/old/tiny/resolve/main/model.safetensors" => redirect(
                "/mirror/org/tiny/resolve/main/model.safetensors".into(),
                &[],
            ),
            // An LFS file: to the CDN, with its sha256 and size.
            "/mirror/org/tiny/resolve/main/model.safetensors" => redirect(
                format!("http://127.0.0.1:{cdn_port}/blob/xyz?sig=abc"),
                &[
                    ("X-Linked-Etag", format!("\"{sha}\"")),
                    ("X-Linked-Size", "15".into()),
                ],
            ),
            _ => not_found(),
        }
    });
    let endpoint = format!("http://127.0.0.1:{hub_port}/mirror");
    let token = Token::new(&endpoint, Some("hf_secret".into()));
    assert!(token.is_some(), "a loopback endpoint gets the token");
    let dir = tempfile::tempdir().unwrap();
    let got = hub_fetch_at(
        &endpoint,
        token.as_ref(),
        "old/tiny",
        None,
        "model.safetensors",
        &env_in(dir.path()),
    )
    .unwrap();
    assert_eq!(fs::read(&got).unwrap(), weights);
    let hub_seen = hub_seen.lock().unwrap().clone();
    assert!(hub_seen
        .iter()
        .filter(|s| s.path.ends_with("model.safetensors"))
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_secret")));
    let cdn_seen = cdn_seen.lock().unwrap().clone();
    assert!(!cdn_seen.is_empty(), "the CDN was asked");
    assert!(
        cdn_seen.iter().all(|s| s.authorization.is_none()),
        "the token followed a redirect to another host: {cdn_seen:?}"
    );
}

/// Plain HTTP to an address that is not loopback (0.0.0.0 reaches this
/// machine, but is not a loopback address) never carries the token, even
/// when the URL says "huggingface".
#[test]
fn the_hub_token_never_goes_over_plain_http_to_another_machine() {
    let (port, seen) = server("127.0.0.1:0", |_, _| ok(b"{}"));
    let endpoint = format!("http://0.0.0.0:{port}/huggingface");
    let token = Token::new(&endpoint, Some("hf_secret".into()));
    assert!(token.is_none());
    let dir = tempfile::tempdir().unwrap();
    hub_fetch_at(
        &endpoint,
        token.as_ref(),
        "org/tiny",
        None,
        "config.json",
        &env_in(dir.path()),
    )
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:?}");

    // Who gets the token, by URL.
    let t = Token::new("https://huggingface.co", Some(" hf_x ".into())).unwrap();
    assert_eq!(
        t.for_url("https://huggingface.co/a/b/resolve/main/f"),
        Some("Bearer hf_x")
    );
    assert_eq!(
        t.for_url("https://huggingface.co:443/a"),
        Some("Bearer hf_x")
    );
    assert_eq!(t.for_url("http://huggingface.co/a"), None);
    assert_eq!(t.for_url("https://cdn-lfs.huggingface.co/a"), None);
    assert_eq!(t.for_url("https://huggingface.co.evil.com/a"), None);
    assert_eq!(t.for_url("https://evil.com/huggingface.co/a"), None);
    assert_eq!(t.for_url("https://huggingface.co@evil.com/a"), None);
    assert!(Token::new("http://10.1.2.3/huggingface", Some("x".into())).is_none());
    assert!(Token::new("http://[::1]:8080", Some("x".into())).is_some());
    assert!(Token::new("http://localhost:8080", Some("x".into())).is_some());
    assert!(Token::new("https://huggingface.co", Some("  ".into())).is_none());
}

/// A hub file whose content does not match the sha256 the hub advertises is
/// removed, with an error naming the file and both hashes; a good one is kept.
#[test]
fn a_hub_file_that_fails_its_sha256_is_removed() {
    let body = b"tampered weights".to_vec();
    let claimed = sha256_hex(b"the real weights");
    let (port, _) = server("127.0.0.1:0", {
        let body = body.clone();
        let claimed = claimed.clone();
        move |path, _| {
            let etag = |sha: String| {
                (
                    200,
                    vec![
                        ("X-Linked-Etag".to_string(), format!("\"{sha}\"")),
                        ("X-Linked-Size".to_string(), body.len().to_string()),
                    ],
                    body.clone(),
                )
            };
            match path {
                "/org/bad/resolve/main/model.safetensors" => etag(claimed.clone()),
                "/org/good/resolve/main/model.safetensors" => etag(sha256_hex(&body)),
                // Complete by its Content-Length, short of the hub's size.
                "/org/short/resolve/main/model.safetensors" => (
                    200,
                    vec![("X-Linked-Size".to_string(), "999".to_string())],
                    body.clone(),
                ),
                _ => not_found(),
            }
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let env = env_in(dir.path());
    let err = hub_fetch_at(&endpoint, None, "org/bad", None, "model.safetensors", &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains(&claimed), "{err}");
    assert!(err.contains(&sha256_hex(&body)), "{err}");
    assert!(err.contains("removed"), "{err}");
    let left: Vec<_> = files_under(&dir.path().join("downloads/hub/org/bad"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "kept: {left:?}");

    let err = hub_fetch_at(
        &endpoint,
        None,
        "org/short",
        None,
        "model.safetensors",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("999"), "{err}");
    assert!(!dir
        .path()
        .join("downloads/hub/org/short/main/model.safetensors")
        .exists());

    let good = hub_fetch_at(&endpoint, None, "org/good", None, "model.safetensors", &env).unwrap();
    assert_eq!(fs::read(good).unwrap(), body);
}

/// `..` (or an absolute path, a backslash) in `hub`, `revision` or `file`
/// is refused before anything is written, naming the key; the file the
/// server would have sent lands nowhere.
#[test]
fn names_that_leave_the_models_folder_are_refused() {
    let (port, seen) = server("127.0.0.1:0", |_, _| ok(b"escaped"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let env = env_in(dir.path());
    for (hub, rev, file, key) in [
        ("org/tiny", None, "../../../escaped.bin", "`file`"),
        ("org/tiny", None, "/tmp/escaped.bin", "`file`"),
        ("org/tiny", None, "a\\..\\escaped.bin", "`file`"),
        ("org/tiny", None, "a//b.bin", "`file`"),
        ("../../escaped", None, "model.safetensors", "`hub`"),
        ("org/../..", None, "model.safetensors", "`hub`"),
        ("org/tiny/extra", None, "model.safetensors", "`hub`"),
        (
            "org/tiny",
            Some("../../.."),
            "model.safetensors",
            "`revision`",
        ),
        ("org/tiny", Some("/abs"), "model.safetensors", "`revision`"),
        (
            "org/tiny",
            Some("main\0"),
            "model.safetensors",
            "`revision`",
        ),
    ] {
        let err = hub_fetch_at(&endpoint, None, hub, rev, file, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{hub} {rev:?} {file}: {err}");
        // Through `resolve`, the error names the model too.
        let spec = ModelSpec {
            name: Some("evil".into()),
            hub: Some(hub.into()),
            revision: rev.map(str::to_string),
            file: Some(file.into()),
            format: Some(Format::Safetensors),
            ..Default::default()
        };
        let err = resolve(&spec, &env).unwrap_err().to_string();
        assert!(err.contains("model `evil`") && err.contains(key), "{err}");
    }
    let spec = ModelSpec {
        package: Some("../pkg".into()),
        ..Default::default()
    };
    let err = resolve(&spec, &env).unwrap_err().to_string();
    assert!(err.contains("`package`"), "{err}");
    assert!(seen.lock().unwrap().is_empty(), "nothing was asked");
    assert!(files_under(dir.path()).is_empty());
    // Ordinary names pass.
    assert!(check::check_hub("HuggingFaceTB/SmolLM2-135M-Instruct").is_ok());
    assert!(check::check_hub("gpt2").is_ok());
    assert!(check::check_revision("refs/pr/1").is_ok());
    assert!(check::check_revision("0123abcd").is_ok());
    assert!(check::check_rel_path("onnx/model.safetensors").is_ok());
}

/// A shard index that names a file outside the repository's folder is refused.
#[test]
fn a_shard_outside_the_repository_is_refused() {
    let index = serde_json::json!({"weight_map": {"a": "sub/../../../../escaped.bin"}});
    let (port, _) = server("127.0.0.1:0", move |path, _| match path {
        "/org/tiny/resolve/main/model.safetensors.index.json" => ok(index.to_string().as_bytes()),
        "/org/tiny/resolve/main/sub/../../../../escaped.bin" => ok(b"escaped"),
        _ => not_found(),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = hub_fetch_at(
        &format!("http://127.0.0.1:{port}"),
        None,
        "org/tiny",
        None,
        "model.safetensors",
        &env_in(dir.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("escaped.bin"), "{err}");
    assert!(files_under(dir.path())
        .iter()
        .all(|p| !p.to_string_lossy().contains("escaped")));
}

/// A JSON answer past the cap fails with its host and the cap, without
/// reading it all.
#[test]
fn a_json_answer_past_the_cap_fails_naming_the_host() {
    let (port, _) = server("127.0.0.1:0", |_, _| ok(&vec![b' '; 3 << 20]));
    let url = format!("http://127.0.0.1:{port}/pypi/x/json");
    let err = get_json_capped(&Http::new().unwrap(), &url, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("answer from 127.0.0.1:{port} exceeds 1 MiB")),
        "{err}"
    );
    let (port, _) = server("127.0.0.1:0", |_, _| ok(br#"{"info": {"version": "1"}}"#));
    let url = format!("http://127.0.0.1:{port}/pypi/x/json");
    assert_eq!(
        get_json_capped(&Http::new().unwrap(), &url, 1 << 20).unwrap()["info"]["version"],
        "1"
    );
}

/// A wheel member whose path climbs out (zip-slip) is not extracted.
#[test]
fn a_wheel_member_outside_its_folder_is_not_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("evil.whl");
    {
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("../../escaped.gguf", opts).unwrap();
        zip.write_all(b"escaped").unwrap();
        zip.start_file("pkg/ok.gguf", opts).unwrap();
        zip.write_all(b"fine").unwrap();
        zip.finish().unwrap();
    }
    let out = dir.path().join("out");
    // Asked for by its path, or found by its file name: refused either way.
    for name in ["../../escaped.gguf", "escaped.gguf"] {
        let err = extract_one(&wheel, name, &out.join("escaped.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("escaped.gguf"), "{err}");
    }
    assert!(files_under(&out).is_empty());
    extract_one(&wheel, "pkg/ok.gguf", &out.join("ok.gguf")).unwrap();
    let mut s = String::new();
    File::open(out.join("ok.gguf"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "fine");
}

/// Credentials in a URL never reach a message.
#[test]
fn urls_are_shown_without_credentials() {
    assert_eq!(
        redact_url("http://user:pass@host:8000/v1?api_key=sk-1&x=2#f"),
        "http://***@host:8000/v1?api_key=***&x=2#f"
    );
    assert_eq!(
        redact_url("https://huggingface.co/a/b"),
        "https://huggingface.co/a/b"
    );
    assert_eq!(redact_url("https://u@h"), "https://***@h");
    assert_eq!(redact_url("not a url"), "not a url");
    let (port, _) = server("127.0.0.1:0", |_, _| not_found());
    let err = get_json(
        &Http::new().unwrap(),
        &format!("http://me:hunter2@127.0.0.1:{port}/x"),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("hunter2") && err.contains("404"), "{err}");
}

/// The datasets' download (`hub_download`, used by flow-stages) follows the
/// same rules: the token to the endpoint only, the hub's sha256 checked, a
/// bad file removed, a good one renamed into place.
#[test]
fn dataset_downloads_keep_the_token_home_and_check_the_sha256() {
    let rows = b"{\"text\": \"a story\"}\n".to_vec();
    let (cdn_port, cdn_seen) = server("127.0.0.1:0", {
        let rows = rows.clone();
        move |_, _| ok(&rows)
    });
    let good = sha256_hex(&rows);
    let bad = sha256_hex(b"other rows");
    let (hub_port, hub_seen) = server("127.0.0.1:0", move |path, auth| {
        if auth != Some("Bearer hf_secret") {
            return (401, Vec::new(), Vec::new());
        }
        let sha = if path.contains("/bad/") { &bad } else { &good };
        redirect(
            format!("http://localhost:{cdn_port}/blob"),
            &[("X-Linked-Etag", format!("\"{sha}\""))],
        )
    });
    let endpoint = format!("http://127.0.0.1:{hub_port}");
    let token = Token::new(&endpoint, Some("hf_secret".into()));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("datasets/org/set/main/train.jsonl");
    hub_download_at(
        &endpoint,
        token.as_ref(),
        "datasets/org/set/resolve/main/train.jsonl",
        &dest,
    )
    .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), rows);
    assert!(hub_seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.authorization.is_some()));
    assert!(cdn_seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.authorization.is_none()));

    let dest = dir.path().join("datasets/org/bad/main/train.jsonl");
    let err = hub_download_at(
        &endpoint,
        token.as_ref(),
        "datasets/org/bad/resolve/main/train.jsonl",
        &dest,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sha256") && err.contains("removed"), "{err}");
    let left: Vec<_> = files_under(dest.parent().unwrap())
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "kept: {left:?}");
}

/// An interrupted download resumes: the `.part` left behind is asked for
/// from where it ends (`Range`), the rest appended (206), the whole checked
/// against the hub's sha256; a server that ignores the range (200) sends
/// the file again from the start.
#[test]
fn an_interrupted_download_resumes_from_its_part_file() {
    let file: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&file);
    let (port, seen) = server_with_range("127.0.0.1:0", {
        let file = file.clone();
        move |path, _, range| {
            let etag = ("X-Linked-Etag".to_string(), format!("\"{sha}\""));
            let from = range
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            match (path, from) {
                ("/datasets/org/set/resolve/main/ranged.bin", Some(n)) => {
                    (206, vec![etag], file[n..].to_vec())
                }
                _ => (200, vec![etag], file.clone()),
            }
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    for name in ["ranged.bin", "whole.bin"] {
        let dest = dir.path().join(name);
        fs::write(dir.path().join(format!("{name}.part")), &file[..30_000]).unwrap();
        hub_download_at(
            &endpoint,
            None,
            &format!("datasets/org/set/resolve/main/{name}"),
            &dest,
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), file, "{name}");
        assert!(!dir.path().join(format!("{name}.part")).exists());
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.range.as_deref() == Some("bytes=30000-")),
        "{seen:?}"
    );
}

/// The downloads run from async code too (on a thread of their own: their
/// HTTP runtime cannot run inside the caller's).
#[test]
fn downloads_run_from_inside_a_tokio_runtime() {
    let (port, _) = server("127.0.0.1:0", |_, _| ok(b"rows"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rows.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        off_async(|| hub_download_at(&endpoint, None, "datasets/a/b/resolve/main/r", &dest))
            .unwrap();
    });
    assert_eq!(fs::read(&dest).unwrap(), b"rows");
}

/// A request that fails before any answer (nothing listens) names the host,
/// never the URL's credentials.
#[test]
fn a_failed_connection_is_shown_without_credentials() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://me:hunter2@127.0.0.1:{port}/pypi/x/json?token=sk-9");
    let err = get_json(&Http::new().unwrap(), &url)
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("hunter2")
            && !err.contains("sk-9")
            && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}
