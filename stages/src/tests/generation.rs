//! The generation kinds (`topics`, `generate_stories`, `generate_qa`) on
//! the `openai` backend against a fake server that answers out of order and
//! malformed a third of the time: the same output at any concurrency.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use flow_engine::{Resources, Stage, Upstream, Value};

use crate::contracts::dataset::{Task, DATA_FILE};
use crate::contracts::topics::TOPICS_FILE;
use crate::kinds::generate_qa::GenerateQa;
use crate::kinds::generate_stories::GenerateStories;
use crate::kinds::topics::Topics;
use crate::testutil::{data_upstream, example, inputs, params, run_in};

/// An OpenAI-compatible server on loopback (std threads, keep-alive)
/// whose answer depends only on the request's seed, sent after a delay
/// that also depends on it, so answers come back out of order. A third
/// of the seeds get a malformed answer. Returns the base URL.
fn fake_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    url
}

fn serve(s: std::net::TcpStream) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let seed = req["seed"].as_u64().unwrap();
        let prompt = req["messages"][0]["content"].as_str().unwrap_or("");
        let text = if seed.is_multiple_of(3) {
            "Sorry.".to_string()
        } else if prompt.contains("topics") {
            (0..6)
                .map(|i| {
                    // 40 distinct topics without digits (a topic with one is refused).
                    let x = ((seed / 7 + i) % 40) as u8;
                    let name = [b'a' + x / 8, b'a' + x % 8].map(char::from);
                    format!("{}. Lost dog {}{}", i + 1, name[0], name[1])
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else if prompt.contains("Q:") {
            (0..3)
                .map(|i| format!("Q: Question {} {i} here?\nA: Answer {i}.", seed % 10_000))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            format!(
                "Story number {} began. Tom went out today. He saw a dog there. The dog \
                 was very happy. They played all day long.",
                seed % 10_000
            )
        };
        std::thread::sleep(std::time::Duration::from_millis(seed % 13));
        let answer = serde_json::json!({
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Runs `stage` on the `openai` backend at `url` with `concurrency`, in
/// a fresh cache; returns the bytes of its `data.jsonl` and its metrics.
fn run_remote(
    stage: &dyn Stage,
    given: &[(&str, Value)],
    ins: &BTreeMap<String, Vec<Upstream>>,
    url: &str,
    concurrency: i64,
) -> (Vec<u8>, serde_json::Map<String, serde_json::Value>) {
    let mut resources = Resources::default();
    resources.insert(
        crate::resources::GENERATORS,
        "remote",
        BTreeMap::from([
            ("backend".into(), Value::Str("openai".into())),
            ("base_url".into(), Value::Str(url.into())),
            ("model".into(), Value::Str("fake".into())),
            ("max_concurrency".into(), Value::Int(concurrency)),
            ("price_prompt_per_mtok".into(), Value::Float(2.0)),
        ]),
    );
    let mut given = given.to_vec();
    given.push(("generator", Value::Str("remote".into())));
    let params = params(stage, &given);
    let ran = run_in(stage, &params, ins.clone(), &resources, 11, None).unwrap();
    let data = ran
        .outcome
        .outputs
        .iter()
        .find(|o| o.name == DATA_FILE || o.name == TOPICS_FILE)
        .map(|o| std::fs::read(&o.path).unwrap())
        .unwrap();
    (data, ran.outcome.metrics)
}

fn same_at_any_concurrency(
    stage: &dyn Stage,
    given: &[(&str, Value)],
    ins: &BTreeMap<String, Vec<Upstream>>,
) -> serde_json::Map<String, serde_json::Value> {
    let url = fake_server();
    let (one, m1) = run_remote(stage, given, ins, &url, 1);
    let (many, m8) = run_remote(stage, given, ins, &url, 8);
    assert!(!one.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&one),
        String::from_utf8_lossy(&many),
        "{} differs between concurrency 1 and 8",
        stage.kind()
    );
    for k in [
        "asked",
        "got",
        "dropped",
        "retried",
        "generated",
        "prompt_tokens",
    ] {
        assert_eq!(m1.get(k), m8.get(k), "{k}");
    }
    assert_eq!(m1["failed"], 0);
    m8
}

fn stories_upstreams(dir: &Path) -> BTreeMap<String, Vec<Upstream>> {
    let seeds: Vec<_> = (0..5)
        .map(|i| {
            example(
                &format!("s{i}"),
                Task::Story,
                None,
                "Ann had a cat. It was gray. It liked milk. One day it ran.",
                "Ann found it in the barn.",
            )
        })
        .collect();
    let topics = dir.join("topics.json");
    std::fs::write(&topics, r#"["Dogs", "Rain", "A lost key", "School"]"#).unwrap();
    let topics = Upstream {
        instance: "pool".into(),
        bindings: Vec::new(),
        files: BTreeMap::from([(TOPICS_FILE.to_string(), topics)]),
        metrics: Default::default(),
    };
    inputs(vec![
        ("seeds", data_upstream(dir, "real", &seeds)),
        ("topics", topics),
    ])
}

#[test]
fn stories_are_the_same_whatever_the_concurrency_and_malformed_ones_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ins = stories_upstreams(dir.path());
    let m = same_at_any_concurrency(
        &GenerateStories,
        &[
            ("topic_count", Value::Int(3)),
            ("count", Value::Int(30)),
            ("max_attempts", Value::Int(3)),
        ],
        &ins,
    );
    // About a third malformed at each attempt: retried, a few dropped.
    assert!(m["retried"].as_u64().unwrap() > 0, "{m:?}");
    assert_eq!(
        m["got"].as_u64().unwrap() + m["dropped"].as_u64().unwrap(),
        30
    );
    let asked = m["generated"].as_u64().unwrap();
    assert_eq!(asked, 30 + m["retried"].as_u64().unwrap());
    let cost = m["cost_usd"].as_f64().unwrap();
    assert!((cost - asked as f64 * 7.0 * 2.0 / 1e6).abs() < 1e-12);
}

#[test]
fn qa_pairs_and_topics_are_the_same_whatever_the_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let real: Vec<_> = (0..12)
        .map(|i| {
            let mut e = example(
                &format!("q{i}"),
                Task::Qa,
                Some(&format!("doc{}", i % 4)),
                &format!("Who is person {i}?"),
                "A farmer.",
            );
            e.context = Some(format!("Summary of document {}.", i % 4));
            e
        })
        .collect();
    let ins = inputs(vec![("contexts", data_upstream(dir.path(), "real", &real))]);
    let m = same_at_any_concurrency(
        &GenerateQa,
        &[("k", Value::Int(7)), ("per_request", Value::Int(3))],
        &ins,
    );
    assert_eq!(m["asked"], 28);
    let m = same_at_any_concurrency(
        &Topics,
        &[("count", Value::Int(25)), ("per_request", Value::Int(6))],
        &BTreeMap::new(),
    );
    assert_eq!(m["topics"], 25);
}
