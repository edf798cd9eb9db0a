//! A whole small manifest (topics -> generate_stories) on `backend = "openai"`,
//! against a real OpenAI-compatible server on loopback: llama-cpp-python's
//! server (installed by `.ci/run`) serving SmolLM2-135M-Instruct (GGUF), with
//! an API key it checks. Then the same stages again (`--force`): every
//! request comes from the journal, none reaches the server. The key must
//! appear nowhere: not in the cache, the results, the output of `flow`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Project;

const KEY_VAR: &str = "FLOW_E2E_HTTP_KEY";
const KEY: &str = "sk-e2e-4b1d9a7c-never-on-disk";
const MODEL_ALIAS: &str = "smollm2-135m-instruct";

fn manifest(port: u16) -> String {
    format!(
        r#"
[flow]
name = "e2e-http"
seed = 5
results = "results"

[generators.remote]
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "{MODEL_ALIAS}"
api_key_env = "{KEY_VAR}"
temperature = 0.7
max_tokens = 48
max_concurrency = 4
timeout_s = 120
max_retries = 2
price_prompt_per_mtok = 0.15
price_completion_per_mtok = 0.6

[stages.real]
kind = "source"
dataset = "rocstories"
limit = 20

[stages.pool]
kind = "topics"
generator = "remote"
count = 4
per_request = 6
max_tokens = 48
min_yield = 0.0

[stages.stories]
kind = "generate_stories"
generator = "remote"
seeds = "real"
topics = "pool"
topic_count = 2
count = 4
seed_stories = 2
max_tokens = 120
max_attempts = 3
min_yield = 0.0
"#
    )
}

/// The SmolLM2 GGUF where flow keeps models: `FLOW_MODELS_DIR`, then the
/// download cache (`$XDG_CACHE_HOME` or `~/.cache`, `flow/models`).
fn find_gguf() -> Option<PathBuf> {
    fn walk(dir: &Path, depth: usize) -> Option<PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let name = p.file_name()?.to_string_lossy().to_lowercase();
            if p.is_file() && name.contains("smollm2-135m-instruct") && name.ends_with(".gguf") {
                return Some(p);
            }
            if p.is_dir() && depth > 0 {
                if let Some(f) = walk(&p, depth - 1) {
                    return Some(f);
                }
            }
        }
        None
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("FLOW_MODELS_DIR") {
        roots.push(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        roots.push(PathBuf::from(d).join("flow/models"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(h).join(".cache/flow/models"));
    }
    roots.iter().find_map(|r| walk(r, 5))
}

/// The model, fetched through flow's own resolver (a one-request local run)
/// when no earlier run left a copy.
fn model(data: &Path) -> PathBuf {
    if let Some(p) = find_gguf() {
        return p;
    }
    let p = Project::new(data);
    p.write_manifest(
        r#"
[flow]
name = "fetch-model"
[models.smollm2]
name = "smollm2-135m-instruct"
format = "gguf"
[generators.local]
backend = "local"
model = "smollm2"
max_tokens = 4
[stages.pool]
kind = "topics"
generator = "local"
count = 1
max_requests = 1
max_tokens = 4
min_yield = 0.0
"#,
    );
    let r = p.run(&[]);
    find_gguf().unwrap_or_else(|| panic!("no SmolLM2 GGUF after a local run:\n{}", r.out.show()))
}

fn python_server_available() -> bool {
    Command::new("python3")
        .args(["-c", "import llama_cpp.server.app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// llama-cpp-python's server, stopped when dropped; its access log is kept
/// to count the requests it answered.
struct LlamaServer {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl LlamaServer {
    fn start(model: &Path) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--model_alias", MODEL_ALIAS, "--api_key", KEY])
            .args(["--n_ctx", "2048", "--verbose", "False"])
            // One token per forward pass: llama.cpp's AMX kernels (built in
            // where the wheel was compiled on a CPU with AMX, used only for
            // batched matmuls) fault at `ldtilecfg` in VMs that do not enable
            // AMX state, so a batched prompt would crash the server (SIGSEGV).
            .args(["--n_ubatch", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 -m llama_cpp.server");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut server = LlamaServer { child, port, log };
        let t0 = Instant::now();
        // Ready when it answers HTTP: a bare TCP connect can succeed on
        // nothing (a socket connected to itself on the same port).
        while !server.answers_http() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the server ended ({status}):\n{}", server.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the server did not start:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET /v1/models` gets an HTTP status line back.
    fn answers_http(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\
             Connection: close\r\n\r\n"
        );
        let mut head = [0u8; 12];
        s.write_all(req.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && head.starts_with(b"HTTP/1.1 200")
    }

    /// Whether the server still runs, and what it printed: for failure messages.
    fn state(&mut self) -> String {
        let alive = match self.child.try_wait() {
            Ok(None) => "still running".to_string(),
            Ok(Some(status)) => format!("ended: {status}"),
            Err(e) => format!("unknown: {e}"),
        };
        format!("--- the server ({alive}) printed:\n{}", self.log())
    }

    /// Chat completions the server answered.
    fn answered(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("POST /v1/chat/completions") && l.contains("200"))
            .count()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metrics(p: &Project, kind: &str) -> serde_json::Map<String, serde_json::Value> {
    let recs: Vec<_> = p
        .records()
        .values()
        .map(|r| r.record())
        .filter(|r| r.key_fields.kind == kind)
        .collect();
    assert_eq!(recs.len(), 1, "one `{kind}` record");
    recs[0].metrics.clone()
}

fn u(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> u64 {
    m.get(k)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("metric `{k}` missing in {m:?}"))
}

/// Every file under `dir` that holds `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with(&p, needle));
        } else if std::fs::read(&p)
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
        {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_manifest_runs_on_an_openai_compatible_server_and_reruns_from_the_journal() {
    let data = require_data!();
    if !python_server_available() {
        common::skip_or_fail(
            "the llama.cpp server: `python3 -c \"import llama_cpp.server.app\"` fails; \
             install it with `python3 -m pip install 'llama-cpp-python[server]==0.3.36'` \
             (.ci/run does)",
        );
        return;
    }
    let gguf = model(&data);
    let mut server = LlamaServer::start(&gguf);
    let p = Project::new(&data);
    p.write_manifest(&manifest(server.port));
    let m = p.manifest().to_string_lossy().into_owned();
    let mut outputs = String::new();

    // No key in the environment: a clear error naming the entry and the variable.
    let out = Out::of(p.command(&["run", &m, "--no-progress"]).env_remove(KEY_VAR));
    assert_ne!(out.code, Some(0), "{}", out.show());
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("generator `remote`") && all.contains(KEY_VAR),
        "{}",
        out.show()
    );
    assert_eq!(server.answered(), 0);

    // The real run.
    let out = Out::of(p.command(&["run", &m, "--no-progress"]).env(KEY_VAR, KEY));
    assert_eq!(out.code, Some(0), "{}\n{}", out.show(), server.state());
    outputs += &out.show();
    let pool = metrics(&p, "topics");
    let stories = metrics(&p, "generate_stories");
    eprintln!("topics: {pool:?}\nstories: {stories:?}");
    let sent = server.answered();
    assert_eq!(
        (u(&pool, "generated") + u(&stories, "generated")) as usize,
        sent,
        "every answer the server gave was journaled once"
    );
    assert!(u(&pool, "topics") >= 2, "{pool:?}");
    assert_eq!(u(&stories, "asked"), 4);
    let journal: String = flow_generate::Journal::files(&p.cache_dir().join("journal/generate"))
        .expect("the journal")
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("a journal file"))
        .collect();
    assert!(
        u(&stories, "n") >= 1,
        "no story parsed; the answers:\n{journal}"
    );
    assert!(u(&stories, "generated") >= 4);
    assert!(u(&stories, "prompt_tokens") > 0 && u(&stories, "completion_tokens") > 0);
    assert_eq!(u(&stories, "failed"), 0);
    let cost = stories["cost_usd"].as_f64().expect("cost_usd");
    let expect = (u(&stories, "prompt_tokens") as f64 * 0.15
        + u(&stories, "completion_tokens") as f64 * 0.6)
        / 1e6;
    assert!((cost - expect).abs() < 1e-12, "{cost} vs {expect}");
    let data_out = p
        .outputs()
        .into_iter()
        .find(|(name, _)| name == "stories")
        .map(|(_, (_, outs))| outs)
        .expect("stories is fresh");
    assert!(data_out.contains_key("data.jsonl"), "{data_out:?}");
    let shown = p.flow(&["show", &m, "stories", "--json"]);
    assert_eq!(shown.code, Some(0), "{}", shown.show());
    assert!(
        shown.stdout.contains("completion_tokens"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("cost_usd"), "{}", shown.stdout);
    outputs += &shown.show();

    // Again, forced: every request is a journal hit, the server sees none.
    let out = Out::of(
        p.command(&[
            "run",
            &m,
            "--no-progress",
            "--force",
            "pool",
            "--force",
            "stories",
        ])
        .env(KEY_VAR, KEY),
    );
    assert_eq!(out.code, Some(0), "{}", out.show());
    outputs += &out.show();
    let pool2 = metrics(&p, "topics");
    let stories2 = metrics(&p, "generate_stories");
    assert_eq!(u(&pool2, "generated"), 0, "{pool2:?}");
    assert_eq!(u(&stories2, "generated"), 0, "{stories2:?}");
    assert!(u(&stories2, "journal_hits") >= 4);
    assert_eq!(stories2["cost_usd"].as_f64(), Some(0.0));
    assert_eq!(
        server.answered(),
        sent,
        "an answered request was paid for twice"
    );
    // Same results from the journal.
    assert_eq!(pool2["topics"], pool["topics"]);
    assert_eq!(stories2["n"], stories["n"]);

    // The key: nowhere on disk, nowhere in what flow printed.
    let leaks: Vec<PathBuf> = [p.cache_dir(), p.results_dir(), p.root.clone()]
        .iter()
        .flat_map(|d| files_with(d, KEY.as_bytes()))
        .collect();
    assert!(leaks.is_empty(), "the key is in {leaks:?}");
    assert!(!outputs.contains(KEY), "the key was printed:\n{outputs}");
}

/// The exit code and output of one command.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn of(cmd: &mut Command) -> Out {
        let o = cmd.output().expect("run flow");
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A backend nobody answers on: the run fails naming why, and no empty
/// result is cached in its place (`min_yield = 0.0` tolerates poor answers,
/// not none at all), so the next run asks again.
#[test]
fn an_unreachable_backend_fails_the_stage_and_caches_nothing() {
    let data = require_data!();
    // A loopback port nothing listens on once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Project::new(&data);
    p.write_manifest(&manifest(port).replace("max_retries = 2", "max_retries = 0"));
    let m = p.manifest().to_string_lossy().into_owned();
    for attempt in 0..2 {
        let out = Out::of(p.command(&["run", &m, "--no-progress"]).env(KEY_VAR, KEY));
        assert_ne!(out.code, Some(0), "run {attempt}: {}", out.show());
        assert!(
            out.stderr.contains("stage `pool` failed")
                && out.stderr.contains("was answered")
                && out.stderr.contains("Connection refused"),
            "run {attempt}: {}",
            out.show()
        );
        let cached: Vec<String> = p
            .records()
            .values()
            .map(|r| r.record().key_fields.kind)
            .filter(|k| k == "topics" || k == "generate_stories")
            .collect();
        assert!(cached.is_empty(), "run {attempt} cached {cached:?}");
    }
}
