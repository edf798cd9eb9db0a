//! The HTTP generator against a scripted server on loopback that fails in
//! every way a real endpoint does: 429 with Retry-After, 500, 503, answers
//! slower than the timeout, truncated and non-JSON bodies, connections
//! closed before or in the middle of the answer, a rejected key.
//!
//! The server is a few lines of tokio in this file: it reads each request,
//! finds the script of its prompt (the user message), and plays the step for
//! that attempt, counting requests and the most in flight at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flow_generate::{
    ApiKey, Completion, GenError, Generator, Journal, Journaled, Message, OpenAiConfig,
    OpenAiGenerator, Request, Result, Sampling, Sink,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk-test-7f3a9c2e-DO-NOT-LEAK";

#[derive(Clone, Debug)]
enum Step {
    Ok,
    /// A status with an error body (which echoes the key, as some servers do).
    Status(u16, Option<&'static str>),
    /// Answers after this long.
    Slow(Duration),
    /// Promises more body than it sends, then closes.
    Truncated,
    /// 200 with an HTML page.
    NotJson,
    /// Reads the request, closes without a word.
    Close,
}

#[derive(Default)]
struct State {
    script: HashMap<String, Vec<Step>>,
    counts: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    total: AtomicUsize,
    auth: Mutex<Vec<String>>,
}

struct Server {
    url: String,
    state: Arc<State>,
}

impl Server {
    fn start(script: &[(&str, Vec<Step>)]) -> Server {
        let state = Arc::new(State {
            script: script
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(s, st.clone()));
                }
            });
        });
        Server { url, state }
    }

    fn count(&self, prompt: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(prompt)
            .copied()
            .unwrap_or(0)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn respond(s: &mut TcpStream, status: u16, headers: &str, body: &str) -> bool {
    let text = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await.is_ok()
}

async fn serve(mut s: TcpStream, st: Arc<State>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // One request: headers, then content-length bytes of body.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut tmp = [0u8; 8192];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 8192];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        if let Some(a) = header("authorization") {
            st.auth.lock().unwrap().push(a);
        }
        let prompt = body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let attempt = {
            let mut c = st.counts.lock().unwrap();
            let n = c.entry(prompt.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        st.total.fetch_add(1, Ordering::SeqCst);
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let step = st
            .script
            .get(&prompt)
            .map(|steps| steps[attempt.min(steps.len() - 1)].clone())
            .unwrap_or(Step::Ok);
        let ok_body = serde_json::json!({
            "choices": [{
                "message": {"role": "assistant",
                            "content": format!("answer to {prompt} (seed {})", body["seed"])},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        })
        .to_string();
        let keep = match step {
            Step::Ok => respond(&mut s, 200, "", &ok_body).await,
            Step::Slow(d) => {
                tokio::time::sleep(d).await;
                respond(&mut s, 200, "", &ok_body).await
            }
            Step::Status(code, retry_after) => {
                let h = retry_after
                    .map(|r| format!("retry-after: {r}\r\n"))
                    .unwrap_or_default();
                let err = format!(
                    "{{\"error\": {{\"message\": \"status {code}; key {KEY} was used\"}}}}"
                );
                respond(&mut s, code, &h, &err).await
            }
            Step::NotJson => {
                respond(&mut s, 200, "", "<html><body>Bad gateway</body></html>").await
            }
            Step::Truncated => {
                let text = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                    ok_body.len(),
                    &ok_body[..ok_body.len() / 3]
                );
                let _ = s.write_all(text.as_bytes()).await;
                false
            }
            Step::Close => false,
        };
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            let _ = s.shutdown().await;
            return;
        }
    }
}

fn config(url: &str) -> OpenAiConfig {
    let mut cfg = OpenAiConfig::new(url, "test-model");
    cfg.api_key = Some(ApiKey::new(KEY));
    cfg.max_concurrency = 4;
    cfg.timeout = Duration::from_millis(400);
    cfg.max_retries = 2;
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(100);
    cfg
}

fn req(prompt: &str) -> Request {
    Request {
        messages: vec![Message::user(prompt)],
        sampling: Sampling {
            seed: 42,
            max_tokens: 16,
            ..Default::default()
        },
    }
}

/// Results by index, checking each is reported once.
struct Collect {
    out: Vec<Option<std::result::Result<Completion, String>>>,
    flushes: usize,
    cancel_after: Option<usize>,
}

impl Collect {
    fn new(n: usize) -> Collect {
        Collect {
            out: vec![None; n],
            flushes: 0,
            cancel_after: None,
        }
    }
}

impl Sink for Collect {
    fn done(&mut self, index: usize, result: Result<Completion>) {
        assert!(self.out[index].is_none(), "request {index} reported twice");
        self.out[index] = Some(result.map_err(|e| e.to_string()));
    }
    fn flush(&mut self) -> Result<()> {
        self.flushes += 1;
        Ok(())
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.out.iter().flatten().count() >= n)
    }
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

#[test]
fn every_request_ends_answered_or_failed_within_its_retry_budget() {
    let slow = Duration::from_millis(1500);
    let script: Vec<(&str, Vec<Step>)> = vec![
        ("ok", vec![Step::Ok]),
        ("429-then-ok", vec![Step::Status(429, Some("0")), Step::Ok]),
        (
            "500-500-ok",
            vec![Step::Status(500, None), Step::Status(500, None), Step::Ok],
        ),
        ("503-forever", vec![Step::Status(503, None)]),
        ("502-then-ok", vec![Step::Status(502, None), Step::Ok]),
        ("slow-then-ok", vec![Step::Slow(slow), Step::Ok]),
        ("slow-forever", vec![Step::Slow(slow)]),
        ("truncated-then-ok", vec![Step::Truncated, Step::Ok]),
        ("not-json-forever", vec![Step::NotJson]),
        ("not-json-then-ok", vec![Step::NotJson, Step::Ok]),
        ("closed-then-ok", vec![Step::Close, Step::Ok]),
        ("closed-forever", vec![Step::Close]),
        ("400-bad-request", vec![Step::Status(400, None)]),
    ];
    // (prompt, answered?, requests the server must have seen)
    let expect: &[(&str, bool, usize)] = &[
        ("ok", true, 1),
        ("429-then-ok", true, 2),
        ("500-500-ok", true, 3),
        ("503-forever", false, 3),
        ("502-then-ok", true, 2),
        ("slow-then-ok", true, 2),
        ("slow-forever", false, 3),
        ("truncated-then-ok", true, 2),
        ("not-json-forever", false, 3),
        ("not-json-then-ok", true, 2),
        ("closed-then-ok", true, 2),
        ("closed-forever", false, 3),
        // A request the server refuses is not asked again.
        ("400-bad-request", false, 1),
    ];
    let server = Server::start(&script);
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal/generate");
    let gen = OpenAiGenerator::new(config(&server.url)).unwrap();
    let mut j = Journaled::new(Box::new(gen), Journal::open(&journal_dir).unwrap());
    let requests: Vec<Request> = expect.iter().map(|(p, _, _)| req(p)).collect();
    let mut sink = Collect::new(requests.len());
    j.generate_batch(&requests, &mut sink).unwrap();

    let mut errors = String::new();
    for ((prompt, answered, sent), r) in expect.iter().zip(&sink.out) {
        let r = r
            .as_ref()
            .unwrap_or_else(|| panic!("{prompt}: never reported"));
        match r {
            Ok(c) => {
                assert!(answered, "{prompt}: answered, should have failed");
                assert_eq!(c.text, format!("answer to {prompt} (seed 42)"));
                assert_eq!((c.prompt_tokens, c.completion_tokens), (10, 5));
            }
            Err(e) => {
                assert!(!answered, "{prompt}: failed: {e}");
                errors += e;
                errors += "\n";
            }
        }
        assert_eq!(server.count(prompt), *sent, "{prompt}: requests sent");
        assert!(
            server.count(prompt) <= 1 + 2,
            "{prompt}: over the retry budget"
        );
    }
    eprintln!("the failures:\n{errors}");
    assert!(errors.contains("503"), "{errors}");
    assert!(errors.contains("400"), "{errors}");
    assert!(
        !errors.contains(KEY),
        "the key leaked into an error: {errors}"
    );

    let s = j.stats();
    let answered = expect.iter().filter(|e| e.1).count() as u64;
    assert_eq!(s.requests, answered);
    assert_eq!(s.failed, expect.len() as u64 - answered);
    let sent: usize = expect.iter().map(|e| e.2).sum();
    assert_eq!(s.retries as usize, sent - expect.len());
    assert_eq!(
        (s.prompt_tokens, s.completion_tokens),
        (10 * answered, 5 * answered)
    );
    assert_eq!(j.calls, answered);
    // The key went to the server, in the header only.
    let auth = server.state.auth.lock().unwrap().clone();
    assert_eq!(auth.len(), sent);
    assert!(auth.iter().all(|a| a == &format!("Bearer {KEY}")));

    // Again: the answered ones come from the journal; only the failed ones
    // are asked again.
    let before: HashMap<&str, usize> = expect.iter().map(|e| (e.0, server.count(e.0))).collect();
    let mut sink = Collect::new(requests.len());
    j.generate_batch(&requests, &mut sink).unwrap();
    assert_eq!(j.hits, answered);
    for (prompt, answered, _) in expect {
        let again = server.count(prompt) - before[prompt];
        if *answered {
            assert_eq!(again, 0, "{prompt} was paid for twice");
        } else {
            assert!(again >= 1, "{prompt} was not asked again");
        }
    }
    drop(j);
    assert_eq!(Journal::open(&journal_dir).unwrap().len() as u64, answered);
    let disk = all_bytes(dir.path());
    assert!(!disk.is_empty());
    assert!(!contains(&disk, KEY), "the key is on disk");
}

#[test]
fn retry_after_is_honoured() {
    let script = vec![("wait", vec![Step::Status(429, Some("1")), Step::Ok])];
    let server = Server::start(&script);
    let mut cfg = config(&server.url);
    cfg.backoff_base = Duration::from_millis(1);
    let mut gen = OpenAiGenerator::new(cfg).unwrap();
    let t0 = Instant::now();
    let out = gen.generate(&[req("wait")]).unwrap();
    let e = t0.elapsed();
    assert_eq!(out[0].text, "answer to wait (seed 42)");
    assert!(e >= Duration::from_secs(1), "retried after {e:?}");
    assert!(e < Duration::from_secs(3), "{e:?}");
    assert_eq!(server.count("wait"), 2);
}

#[test]
fn no_more_requests_in_flight_than_max_concurrency() {
    let prompts: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let script: Vec<(&str, Vec<Step>)> = prompts
        .iter()
        .map(|p| (p.as_str(), vec![Step::Slow(Duration::from_millis(40))]))
        .collect();
    for max in [1, 6] {
        let server = Server::start(&script);
        let mut cfg = config(&server.url);
        cfg.max_concurrency = max;
        let mut gen = OpenAiGenerator::new(cfg).unwrap();
        let requests: Vec<Request> = prompts.iter().map(|p| req(p)).collect();
        let out = gen.generate(&requests).unwrap();
        for (p, c) in prompts.iter().zip(&out) {
            assert_eq!(c.text, format!("answer to {p} (seed 42)"));
        }
        let seen = server.state.max_in_flight.load(Ordering::SeqCst);
        assert!(seen <= max, "{seen} in flight with max_concurrency = {max}");
        assert_eq!(seen, max, "the limit was not used");
        assert_eq!(server.state.total.load(Ordering::SeqCst), 40);
    }
}

#[test]
fn requests_per_minute_paces_the_batch() {
    let server = Server::start(&[]);
    let mut cfg = config(&server.url);
    cfg.max_concurrency = 16;
    // 20 a second, a second's worth at once: 40 requests take about 1 s.
    cfg.requests_per_minute = Some(1200.0);
    let mut gen = OpenAiGenerator::new(cfg).unwrap();
    let requests: Vec<Request> = (0..40).map(|i| req(&format!("r{i}"))).collect();
    let t0 = Instant::now();
    gen.generate(&requests).unwrap();
    let e = t0.elapsed();
    assert!(e >= Duration::from_millis(900), "{e:?}");
    assert!(e < Duration::from_secs(4), "{e:?}");
}

#[test]
fn tokens_per_minute_paces_the_batch() {
    let server = Server::start(&[]);
    let mut cfg = config(&server.url);
    cfg.max_concurrency = 16;
    // Each request is estimated at ~30 tokens (16 max + the prompt) and
    // really uses 15; 6000/min = 100/s: 20 requests need about 2-3 s of
    // tokens beyond the first second's worth.
    cfg.tokens_per_minute = Some(6000.0);
    let mut gen = OpenAiGenerator::new(cfg).unwrap();
    let requests: Vec<Request> = (0..20).map(|i| req(&format!("t{i}"))).collect();
    let t0 = Instant::now();
    gen.generate(&requests).unwrap();
    let e = t0.elapsed();
    assert!(e >= Duration::from_millis(1500), "{e:?}");
    assert!(e < Duration::from_secs(8), "{e:?}");
}

#[test]
fn a_rejected_key_stops_the_batch_without_showing_the_key() {
    let script: Vec<(&str, Vec<Step>)> = (0..10)
        .map(|i| {
            (
                ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"][i],
                vec![Step::Status(401, None)],
            )
        })
        .collect();
    let server = Server::start(&script);
    let mut cfg = config(&server.url);
    cfg.max_concurrency = 2;
    let mut gen = OpenAiGenerator::new(cfg).unwrap();
    let requests: Vec<Request> = script.iter().map(|(p, _)| req(p)).collect();
    let mut sink = Collect::new(requests.len());
    let err = gen.generate_batch(&requests, &mut sink).unwrap_err();
    assert!(matches!(err, GenError::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("401"), "{msg}");
    assert!(msg.contains("api_key_env"), "{msg}");
    assert!(!msg.contains(KEY), "the key leaked: {msg}");
    assert!(!format!("{err:?}").contains(KEY));
    // Not asked once per request: the batch stopped at the first answers.
    let total = server.state.total.load(Ordering::SeqCst);
    assert!(total <= 4, "{total} requests after a 401");
    for r in sink.out.iter().flatten() {
        assert!(!r.as_ref().unwrap_err().contains(KEY));
    }
}

#[test]
fn cancelling_stops_a_batch_of_slow_requests() {
    let prompts: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
    let script: Vec<(&str, Vec<Step>)> = prompts
        .iter()
        .map(|p| (p.as_str(), vec![Step::Slow(Duration::from_millis(100))]))
        .collect();
    let server = Server::start(&script);
    let mut cfg = config(&server.url);
    cfg.max_concurrency = 2;
    let mut gen = OpenAiGenerator::new(cfg).unwrap();
    let requests: Vec<Request> = prompts.iter().map(|p| req(p)).collect();
    let mut sink = Collect::new(requests.len());
    sink.cancel_after = Some(2);
    let t0 = Instant::now();
    let err = gen.generate_batch(&requests, &mut sink).unwrap_err();
    assert!(matches!(err, GenError::Cancelled), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(server.state.total.load(Ordering::SeqCst) < 10);
    assert!(sink.flushes >= 1);
}

#[test]
fn a_server_that_is_not_there_fails_each_request_within_the_budget() {
    // A port nothing listens on: connection refused, retried, then failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gen = OpenAiGenerator::new(config(&format!("http://127.0.0.1:{port}/v1"))).unwrap();
    let mut sink = Collect::new(3);
    gen.generate_batch(&[req("x"), req("y"), req("z")], &mut sink)
        .unwrap();
    for r in &sink.out {
        let e = r.as_ref().unwrap().as_ref().unwrap_err();
        assert!(e.contains("after 3 attempt"), "{e}");
        assert!(!e.contains(KEY));
    }
    assert_eq!(gen.stats().failed, 3);
    assert_eq!(gen.stats().retries, 6);
}

/// The child of the kill test: one batch of slow requests, journaled.
fn kill_child(url: &str, dir: &Path) {
    let mut cfg = config(url);
    cfg.timeout = Duration::from_secs(5);
    let gen = OpenAiGenerator::new(cfg).unwrap();
    let mut j = Journaled::new(Box::new(gen), Journal::open(dir).unwrap());
    let requests: Vec<Request> = (0..60).map(|i| req(&format!("k{i}"))).collect();
    let mut sink = Collect::new(requests.len());
    j.generate_batch(&requests, &mut sink).unwrap();
}

#[test]
fn kill_9_mid_batch_loses_no_answer_and_pays_for_none_twice() {
    const CHILD: &str = "FLOW_HTTP_KILL_CHILD";
    if let Ok(v) = std::env::var(CHILD) {
        let (url, dir) = v.split_once('|').unwrap();
        kill_child(url, Path::new(dir));
        return;
    }
    let prompts: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let script: Vec<(&str, Vec<Step>)> = prompts
        .iter()
        .map(|p| (p.as_str(), vec![Step::Slow(Duration::from_millis(30))]))
        .collect();
    let server = Server::start(&script);
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "kill_9_mid_batch_loses_no_answer_and_pays_for_none_twice",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, format!("{}|{}", server.url, dir.path().display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Lines over every journal file (the base and each writer's segment).
    let journaled = || -> usize {
        Journal::files(dir.path())
            .unwrap_or_default()
            .iter()
            .map(|p| std::fs::read_to_string(p).map_or(0, |t| t.lines().count()))
            .sum()
    };
    let t0 = Instant::now();
    while journaled() < 12 {
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let kept = Journal::open(dir.path()).unwrap().len();
    assert!((12..60).contains(&kept), "{kept} answers kept");
    let sent_before: usize = prompts.iter().map(|p| server.count(p)).sum();
    // In flight at the kill: sent, maybe answered, not yet journaled.
    assert!(
        sent_before - kept <= 4 + 4,
        "{sent_before} sent, {kept} kept"
    );

    let gen = OpenAiGenerator::new(config(&server.url)).unwrap();
    let mut j = Journaled::new(Box::new(gen), Journal::open(dir.path()).unwrap());
    let requests: Vec<Request> = prompts.iter().map(|p| req(p)).collect();
    let mut sink = Collect::new(requests.len());
    j.generate_batch(&requests, &mut sink).unwrap();
    assert!(sink.out.iter().all(|r| matches!(r, Some(Ok(_)))));
    assert_eq!(j.hits as usize, kept, "every kept answer is reused");
    assert_eq!(j.calls as usize, 60 - kept);
    let twice = prompts.iter().filter(|p| server.count(p) > 1).count();
    // Only requests in flight at the kill can have been sent twice.
    assert!(twice <= 4, "{twice} requests sent twice");
    assert_eq!(Journal::open(dir.path()).unwrap().len(), 60);
}
