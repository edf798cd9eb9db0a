//! The HTTP generator against real servers on loopback that send numbers
//! and bodies no client should trust: a `Retry-After` no `Duration` holds,
//! token counts past any sum, an answer hundreds of MiB long, and that show
//! the credentials of `base_url` back.
//!
//! Each server is a std thread answering one request per connection from a
//! list of canned replies (the last one repeats).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flow_generate::{
    redact_url, scrub_secrets, ApiKey, Completion, Generator, Message, OpenAiConfig,
    OpenAiGenerator, Request, Result, Sampling, Sink, Stats,
};

/// What a canned reply sends.
#[derive(Clone)]
enum Reply {
    /// Status line, extra header lines (each ending `\r\n`), body.
    Plain(u16, String, String),
    /// 200 with a chunked body of `n` bytes, sent in 64 KiB chunks; the
    /// bytes it managed to send are counted.
    Huge(usize),
    /// 200 announcing `n` bytes of body, sending none.
    Announced(usize),
}

struct Server {
    url: String,
    port: u16,
    requests: Arc<AtomicUsize>,
    /// Bytes of `Huge` bodies written before the client stopped reading.
    sent: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn good_answer(text: &str, usage: &str) -> Reply {
    let body = serde_json::json!({
        "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
    })
    .to_string();
    // The usage object is spliced in as text: its numbers may be beyond what serde_json::json! holds.
    let body = format!("{},\"usage\":{usage}}}", &body[..body.len() - 1]);
    Reply::Plain(200, String::new(), body)
}

fn start(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (r, s, a) = (requests.clone(), sent.clone(), auth.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if k.trim().eq_ignore_ascii_case("authorization") {
                        a.lock().unwrap().push(v.trim().to_string());
                    }
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let n = r.fetch_add(1, Ordering::SeqCst);
            let reply = replies[n.min(replies.len() - 1)].clone();
            match reply {
                Reply::Plain(status, headers, body) => {
                    let text = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(text.as_bytes());
                }
                Reply::Huge(n) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                    if stream.write_all(head.as_bytes()).is_err() {
                        continue;
                    }
                    let chunk = vec![b' '; 64 << 10];
                    let mut left = n;
                    while left > 0 {
                        let c = left.min(chunk.len());
                        let frame = format!("{c:x}\r\n");
                        if stream.write_all(frame.as_bytes()).is_err()
                            || stream.write_all(&chunk[..c]).is_err()
                            || stream.write_all(b"\r\n").is_err()
                        {
                            break;
                        }
                        s.fetch_add(c, Ordering::SeqCst);
                        left -= c;
                    }
                    let _ = stream.write_all(b"0\r\n\r\n");
                }
                Reply::Announced(n) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {n}\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(head.as_bytes());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
    Server {
        url: format!("http://127.0.0.1:{port}/v1"),
        port,
        requests,
        sent,
        auth,
    }
}

fn config(url: &str) -> OpenAiConfig {
    let mut cfg = OpenAiConfig::new(url, "test-model");
    cfg.max_concurrency = 1;
    cfg.timeout = Duration::from_secs(20);
    cfg.max_retries = 2;
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    cfg
}

fn req(prompt: &str) -> Request {
    Request {
        messages: vec![Message::user(prompt)],
        sampling: Sampling {
            seed: 7,
            max_tokens: 16,
            ..Default::default()
        },
    }
}

#[derive(Default)]
struct Collect(Vec<Option<std::result::Result<Completion, String>>>);

impl Sink for Collect {
    fn done(&mut self, index: usize, result: Result<Completion>) {
        if self.0.len() <= index {
            self.0.resize(index + 1, None);
        }
        self.0[index] = Some(result.map_err(|e| e.to_string()));
    }
}

/// Runs one request; its result and the generator's stats.
fn ask(cfg: OpenAiConfig) -> (std::result::Result<Completion, String>, Stats) {
    let mut g = OpenAiGenerator::new(cfg).unwrap();
    let mut sink = Collect::default();
    g.generate_batch(&[req("hello")], &mut sink).unwrap();
    (sink.0.remove(0).unwrap(), g.stats())
}

/// `retry-after-ms: 1e30` (and `retry-after: 1e300`) is more than any
/// `Duration`: the request waits the longest allowed and asks again, and
/// gets its answer; nothing panics.
#[test]
fn a_retry_after_past_any_duration_waits_the_most_then_asks_again() {
    for header in ["retry-after-ms: 1e30\r\n", "retry-after: 1e300\r\n"] {
        let server = start(vec![
            Reply::Plain(503, header.into(), r#"{"error": "busy"}"#.into()),
            good_answer("fine", r#"{"prompt_tokens": 3, "completion_tokens": 1}"#),
        ]);
        let mut cfg = config(&server.url);
        cfg.max_retry_after = Duration::from_millis(200);
        let t0 = Instant::now();
        let (result, stats) = ask(cfg);
        let c = result.unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(c.text, "fine");
        assert_eq!(stats.retries, 1);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }
}

/// Token counts beyond any sum are capped, not overflowed.
#[test]
fn token_counts_past_any_sum_are_capped() {
    let server = start(vec![good_answer(
        "ok",
        r#"{"prompt_tokens": 18446744073709551615, "completion_tokens": 18446744073709551615}"#,
    )]);
    let mut cfg = config(&server.url);
    cfg.tokens_per_minute = Some(1e6);
    let mut g = OpenAiGenerator::new(cfg).unwrap();
    let mut sink = Collect::default();
    g.generate_batch(&[req("a"), req("b"), req("c")], &mut sink)
        .unwrap();
    for r in sink.0 {
        let c = r.unwrap().unwrap();
        assert_eq!(c.prompt_tokens, u32::MAX as usize);
    }
    assert_eq!(g.stats().prompt_tokens, 3 * u32::MAX as u64);
}

/// An answer longer than `max_answer_bytes` fails its request at once,
/// naming the host and the cap, without being read whole: the server gets
/// to send little of its 512 MiB before the client hangs up.
#[test]
fn an_answer_past_the_cap_fails_naming_the_host() {
    let server = start(vec![Reply::Huge(512 << 20)]);
    let mut cfg = config(&server.url);
    cfg.max_answer_bytes = 1 << 20;
    let (result, stats) = ask(cfg);
    let err = result.unwrap_err();
    let want = format!("answer from 127.0.0.1:{} exceeds 1 MiB", server.port);
    assert!(err.contains(&want), "{err}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(stats.failed, 1);
    // Give the server a moment to notice the closed connection.
    std::thread::sleep(Duration::from_millis(300));
    let sent = server.sent.load(Ordering::SeqCst);
    assert!(sent < 64 << 20, "{sent} bytes were sent");

    // One announced as too long is refused before reading any of it.
    let server = start(vec![Reply::Announced(3 << 30)]);
    let mut cfg = config(&server.url);
    cfg.max_answer_bytes = 1 << 20;
    let (result, _) = ask(cfg);
    let err = result.unwrap_err();
    assert!(err.contains("exceeds 1 MiB"), "{err}");
}

/// `http://user:pass@host/v1`: the password is in no message, no `Debug`,
/// not in `url()` (what the stage logs and records), even when the server
/// echoes it; the server still gets the credentials.
#[test]
fn credentials_in_base_url_show_nowhere() {
    let pass = "s3cr3t-pass-77";
    let server = start(vec![Reply::Plain(
        400,
        String::new(),
        format!(r#"{{"error": "bad request from user:{pass} with key sk-echoed-key-1"}}"#),
    )]);
    let url = server
        .url
        .replace("http://", &format!("http://user:{pass}@"));
    let mut cfg = config(&url);
    cfg.api_key = Some(ApiKey::new("sk-echoed-key-1"));
    assert!(!format!("{cfg:?}").contains(pass));
    let g = OpenAiGenerator::new(cfg.clone()).unwrap();
    assert!(!g.url().contains(pass), "{}", g.url());
    assert!(g.url().starts_with("http://***@127.0.0.1:"), "{}", g.url());
    drop(g);
    let (result, _) = ask(cfg);
    let err = result.unwrap_err();
    assert!(err.contains("400"), "{err}");
    assert!(!err.contains(pass), "{err}");
    assert!(!err.contains("sk-echoed-key-1"), "{err}");
    assert!(!server.auth.lock().unwrap().is_empty());

    // An answer that echoes them comes back without them.
    let server = start(vec![good_answer(
        &format!("the key is sk-echoed-key-1 and the password {pass}"),
        r#"{"prompt_tokens": 1, "completion_tokens": 1}"#,
    )]);
    let mut cfg = config(
        &server
            .url
            .replace("http://", &format!("http://user:{pass}@")),
    );
    cfg.api_key = Some(ApiKey::new("sk-echoed-key-1"));
    let (result, _) = ask(cfg);
    assert_eq!(
        result.unwrap().text,
        "the key is <redacted> and the password <redacted>"
    );

    // Nothing listening: the transport error does not show it either.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://user:{pass}@127.0.0.1:{closed}/v1"));
    cfg.max_retries = 0;
    let (result, _) = ask(cfg);
    let err = result.unwrap_err();
    assert!(!err.contains(pass), "{err}");

    assert_eq!(
        redact_url(&format!("https://u:{pass}@h/v1")),
        "https://***@h/v1"
    );
    assert_eq!(
        scrub_secrets(&format!("a {pass} b"), &[pass, ""]),
        "a <redacted> b"
    );
}
