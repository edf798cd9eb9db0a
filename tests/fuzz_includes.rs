//! Included files, fuzzed: a copy of manifests/ whose `common/` files are mutated (byte
//! flips, deletions, duplicated lines, hostile tokens, broken and circular `include`s) is
//! loaded through the figure manifests, planned under each profile and its errors
//! rendered. None may panic, and every error must name a file of the copy with a line and
//! column: a span of an included file rendered against the wrong file would not.
//!
//! `FLOW_FUZZ_SECS=600 cargo test --release --test fuzz_includes -- --nocapture` runs it
//! longer (default: 3 seconds).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Rng;
use flow_engine::{plan, LoadError, Manifest, Registry};

const TOKENS: &[&str] = &[
    "9223372036854775807",
    "1e300",
    "nan",
    "-1",
    "[",
    "]",
    "{",
    "\"",
    "=",
    "\n",
    "é",
    "\u{0}",
    "\n[flow]\nname = \"x\"\n",
    "\n[stages.qa_real]\nkind = \"source\"\n",
    "\n[stages.fig2]\nkind = \"plot\"\n",
    "\n[models.smollm2]\n",
    "\n[profile.tiny]\n\"flow.seed\" = 3\n",
    "\n[profile.tinny]\n\"qa_real.limit\" = 3\n",
    "\n[profile.tiny]\n\"stories_real.limit\" = 3\n",
    "include = [\"smollm2.toml\"]\n",
    "include = [\"levels.toml\"]\n",
    "include = [\"../fig2.toml\"]\n",
    "include = [\"nope.toml\"]\n",
    "include = [\".\"]\n",
    "include = 3\n",
];

/// A copy of manifests/ (the manifests and common/) in a temporary folder.
fn copy_manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"),
        dir.path(),
    );
    dir
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(48) as usize).min(bytes.len());
                bytes.drain(at..end);
            }
            // A stage or a profile line defined twice.
            2 => common::duplicate_line(&mut bytes, at),
            3 => {
                // An `include` goes above the first section to take effect.
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                let at = if token.starts_with("include") { 0 } else { at };
                bytes.splice(at..at, token.bytes());
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                bytes.splice(at..at, token.bytes());
            }
        }
    }
    // The loader reads text: invalid UTF-8 is refused when a file is read.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Loads, plans under every profile, renders errors; every error must be located in a
/// file of `root`. Returns whether it loaded.
fn exercise(registry: &Registry, root: &Path, manifest: &Path) -> bool {
    let located = |rendered: &str| {
        assert!(
            rendered.contains(&format!("{}/", root.display())),
            "an error names no file of the copy:\n{rendered}"
        );
    };
    match Manifest::load(manifest, registry) {
        Ok(m) => {
            let mut profiles: Vec<Option<&str>> = vec![None];
            profiles.extend(m.profiles.keys().map(|p| Some(p.as_str())));
            for p in profiles {
                if let Err(e) = plan(&m, registry, p) {
                    located(&e.render());
                }
            }
            true
        }
        Err(LoadError::Invalid(e)) => {
            located(&e.render());
            false
        }
        Err(e) => panic!("{}: {e}", manifest.display()),
    }
}

#[test]
fn mutated_included_files_never_panic_and_errors_point_into_them() {
    let (budget, seed) = common::fuzz_budget_and_seed(3.0, 0x1c1_0de5);
    let mut registry = Registry::new();
    flow_stages::register_all(&mut registry);
    let dir = copy_manifests();
    let root = dir.path();
    let manifests = common::toml_files(root);
    let common = common::toml_files(&root.join("common"));
    assert!(
        !common.is_empty(),
        "manifests/common holds the shared stages"
    );
    for m in &manifests {
        assert!(exercise(&registry, root, m), "{} loads", m.display());
    }
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let (mut tried, mut loaded) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(budget) {
        let file = &common[rng.below(common.len() as u64) as usize];
        let text = std::fs::read_to_string(file).unwrap();
        let mutated = mutate(&mut rng, &text);
        std::fs::write(file, &mutated).unwrap();
        let manifest = &manifests[rng.below(manifests.len() as u64) as usize];
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&registry, root, manifest)));
        std::fs::write(file, &text).unwrap();
        match outcome {
            Ok(ok) => loaded += u64::from(ok),
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("flow-fuzz-include-{tried}.toml"));
                let _ = std::fs::write(&keep, &mutated);
                panic!(
                    "loading {} with a mutated {} failed (seed {seed}, input {tried}); the \
                     mutated file is in {}",
                    manifest.display(),
                    file.display(),
                    keep.display()
                );
            }
        }
        tried += 1;
    }
    eprintln!(
        "fuzz_includes: {tried} inputs in {:.1}s, {loaded} loaded (seed {seed})",
        start.elapsed().as_secs_f64()
    );
    assert!(tried > 0);
}
