//! A bounded random-mutation fuzz of the manifest loader and planner (stable Rust, no
//! cargo-fuzz): the shipped manifests, mutated by byte flips, deletions, duplicated lines
//! and splices of hostile tokens (huge numbers, `..`, brackets, quotes, control and
//! multi-byte characters), are loaded, planned under each profile and their errors
//! rendered. None may panic; an abort (say, on a huge allocation) kills the test binary.
//!
//! CI runs it for a few seconds; `FLOW_FUZZ_SECS=600 cargo test --release --test
//! fuzz_manifest -- --nocapture` runs it longer and prints how many inputs it tried.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Rng;
use flow_engine::{plan, LoadError, Manifest, Registry};

const TOKENS: &[&str] = &[
    "9223372036854775807",
    "-9223372036854775808",
    "1e300",
    "-1e300",
    "nan",
    "inf",
    "0",
    "-1",
    "4294967296",
    "\"../../../etc\"",
    "\"/abs\"",
    "\"a,b=c/d\"",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "\"",
    "'''",
    "=",
    ".",
    ",",
    "\n",
    "\n[stages.x]\nkind = \"source\"\n",
    "\n[profile.p]\n\"x.y\" = 1\n",
    "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{1F600}",
    "\r\n",
    "#",
    "true",
    "kind",
    "seed",
    "results",
    "max_instances",
    "include",
];

fn shipped() -> Vec<(PathBuf, String)> {
    common::shipped_manifests()
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn mutate(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        if bytes.is_empty() {
            bytes.extend_from_slice(b"[flow]\n");
        }
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(6) {
            0 => {
                let i = at.min(bytes.len() - 1);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let len = rng.below(64) as usize;
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            2 | 3 => {
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                bytes.splice(at..at, token.bytes());
            }
            4 => common::duplicate_line(&mut bytes, at),
            _ => {
                // Replace a number-looking run with a hostile number.
                let token = TOKENS[rng.below(9) as usize];
                let end = bytes[at..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(bytes.len(), |p| at + p);
                bytes.splice(at..end, token.bytes());
            }
        }
    }
    bytes
}

/// Loads, plans under every profile, renders errors. Returns whether it loaded.
fn exercise(registry: &Registry, path: &Path, bytes: &[u8]) -> bool {
    // The loader reads text; invalid UTF-8 is refused when the file is read.
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return false;
    };
    match Manifest::parse(path, text, registry) {
        Ok(m) => {
            let mut profiles: Vec<Option<&str>> = vec![None];
            profiles.extend(m.profiles.keys().map(|p| Some(p.as_str())));
            for p in profiles {
                if let Err(e) = plan(&m, registry, p) {
                    let _ = e.render();
                }
            }
            true
        }
        Err(LoadError::Invalid(e)) => {
            let _ = e.render();
            false
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

#[test]
fn mutated_manifests_never_panic() {
    let (budget, seed) = common::fuzz_budget_and_seed(8.0, 0x5eed_f10a);
    let mut registry = Registry::new();
    flow_stages::register_all(&mut registry);
    let corpus = shipped();
    assert!(!corpus.is_empty());
    // The unmutated manifests load: the harness exercises the real paths.
    for (path, text) in &corpus {
        assert!(
            exercise(&registry, path, text.as_bytes()),
            "{}",
            path.display()
        );
    }
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let (mut tried, mut loaded) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(budget) {
        let (path, text) = &corpus[rng.below(corpus.len() as u64) as usize];
        let input = mutate(&mut rng, text);
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&registry, path, &input)));
        match outcome {
            Ok(ok) => loaded += u64::from(ok),
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("flow-fuzz-panic-{tried}.toml"));
                let _ = std::fs::write(&keep, &input);
                panic!(
                    "the loader panicked on a mutation of {} (seed {seed}, input {tried}); \
                     the input is in {}",
                    path.display(),
                    keep.display()
                );
            }
        }
        tried += 1;
    }
    eprintln!(
        "fuzz_manifest: {tried} inputs in {:.1}s, {loaded} loaded, none panicked (seed {seed})",
        start.elapsed().as_secs_f64()
    );
    assert!(tried > 0);
}
