//! Throughput of the HTTP generator against a server that answers at once,
//! and the engine's own cost per request.
//!
//!   cargo run --release -p flow-generate --example http_bench -- [REQUESTS]
//!
//! The server is this program again, in a child process (`--serve`: tokio,
//! one worker thread, keep-alive, a fixed chat-completion answer), so the
//! CPU time of this process is the client's alone. For concurrency 1, 16
//! and 64 it reports requests per second of `OpenAiGenerator` alone and
//! behind the journal (`Journaled`, one fsynced write per burst of answers),
//! and the client's CPU time per request (all its threads). The overhead
//! per request is the wall time per request at concurrency 1 minus that of
//! a bare reqwest loop (same client settings: POST the same body, read the
//! answer) measured beside it: what flow adds on top of the HTTP round trip.

use std::time::{Duration, Instant};

use flow_generate::{
    Completion, Generator, Journal, Journaled, Message, OpenAiConfig, OpenAiGenerator, Request,
    Result, Sampling, Sink,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Once upon a time there was a benchmark. It ran fast. Everyone was happy. The end came soon. Nobody minded."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":25,"total_tokens":65}}"#;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP/1.1 server that answers every POST with `ANSWER`; prints its URL
/// and serves until killed.
fn serve() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    println!("http://{}/v1", listener.local_addr().expect("addr"));
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
                    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
                    let mut tmp = [0u8; 16 << 10];
                    loop {
                        let end = loop {
                            if let Some(p) = find(&buf, b"\r\n\r\n") {
                                break p + 4;
                            }
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        buf.drain(..end + len);
                        if s.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

/// The server in a child process, killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("this program");
        let mut child = std::process::Command::new(exe)
            .arg("--serve")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut url = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .expect("the server's URL");
        Server {
            child,
            url: url.trim().to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of this process (every thread: the caller's and the runtime's).
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn requests(n: usize, tag: &str) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            messages: vec![
                Message::system("You write five-sentence stories."),
                Message::user(format!(
                    "Write a short story about topic {tag}-{i}. Use exactly five sentences."
                )),
            ],
            sampling: Sampling {
                seed: i as u64,
                max_tokens: 160,
                ..Default::default()
            },
        })
        .collect()
}

struct Count(usize);

impl Sink for Count {
    fn done(&mut self, _: usize, r: Result<Completion>) {
        if r.is_ok() {
            self.0 += 1;
        }
    }
}

fn generator(url: &str, concurrency: usize) -> OpenAiGenerator {
    let mut cfg = OpenAiConfig::new(url, "bench");
    cfg.max_concurrency = concurrency;
    cfg.max_retries = 0;
    OpenAiGenerator::new(cfg).expect("generator")
}

/// (wall, client-thread CPU) of one batch.
fn run(
    gen: &mut dyn FnMut(&[Request], &mut Count) -> Result<()>,
    reqs: &[Request],
) -> (Duration, Duration) {
    let mut sink = Count(0);
    let (t, c) = (Instant::now(), process_cpu());
    gen(reqs, &mut sink).expect("batch");
    let out = (t.elapsed(), process_cpu() - c);
    assert_eq!(sink.0, reqs.len(), "every request answered");
    out
}

/// A bare reqwest loop, one request at a time: the HTTP round trip alone.
fn bare_loop(url: &str, n: usize) -> (Duration, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let url = format!("{url}/chat/completions");
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "bench",
        "messages": requests(1, "bare")[0].messages,
        "temperature": 0.7, "top_p": 1.0, "max_tokens": 160, "seed": 1, "stream": false
    }))
    .expect("body");
    rt.block_on(async {
        let (t, c) = (Instant::now(), process_cpu());
        for _ in 0..n {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("send");
            let b = r.bytes().await.expect("body");
            assert!(!b.is_empty());
        }
        (t.elapsed(), process_cpu() - c)
    })
}

fn us(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        serve();
        return;
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let server = Server::start();
    let url = server.url.clone();
    // Warm up: connections, allocator, page cache.
    bare_loop(&url, 200);
    let mut g = generator(&url, 64);
    g.generate(&requests(200, "warm")).expect("warm-up");

    println!("{n} requests per row, instant server on loopback (a child process)\n");
    println!(
        "{:<34} {:>11} {:>12} {:>14}",
        "client", "requests/s", "wall us/req", "client CPU us/req"
    );
    let (bw, bc) = bare_loop(&url, n);
    println!(
        "{:<34} {:>11.0} {:>12.1} {:>14.1}",
        "bare reqwest loop, 1 at a time",
        n as f64 / bw.as_secs_f64(),
        us(bw, n),
        us(bc, n)
    );
    let mut c1_wall = Duration::ZERO;
    let mut c1_journal_wall = Duration::ZERO;
    for c in [1, 16, 64] {
        let mut g = generator(&url, c);
        let reqs = requests(n, &format!("plain{c}"));
        let (w, cpu) = run(&mut |r, s| g.generate_batch(r, s), &reqs);
        println!(
            "{:<34} {:>11.0} {:>12.1} {:>14.1}",
            format!("OpenAiGenerator, concurrency {c}"),
            n as f64 / w.as_secs_f64(),
            us(w, n),
            us(cpu, n)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journaled::new(
            Box::new(generator(&url, c)),
            Journal::open(dir.path()).expect("journal"),
        );
        let reqs = requests(n, &format!("journal{c}"));
        let (jw, jcpu) = run(&mut |r, s| j.generate_batch(r, s), &reqs);
        println!(
            "{:<34} {:>11.0} {:>12.1} {:>14.1}",
            format!("  + journal (fsync), concurrency {c}"),
            n as f64 / jw.as_secs_f64(),
            us(jw, n),
            us(jcpu, n)
        );
        if c == 1 {
            c1_wall = w;
            c1_journal_wall = jw;
        }
    }
    println!(
        "\noverhead per request at concurrency 1 (wall, minus the bare loop): {:.1} us; with \
         the journal's fsync per answer: {:.1} us",
        us(c1_wall, n) - us(bw, n),
        us(c1_journal_wall, n) - us(bw, n)
    );
}
