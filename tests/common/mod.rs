//! Shared helpers of the end-to-end tests: a throwaway project per test, running the
//! `flow` binary, reading `flow status --json` (checking its schema every time), the stage
//! DAG from `flow show --json`, and verifying a cache from the outside.
//!
//! The manifests are built from the stage kinds the binary has (`flow kinds`), so the tests
//! use the fullest chain available: source -> mix -> score -> table.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

use flow_cache::{Cache, ObjectState, Record, RecordState};
use serde_json::Value;

pub const FLOW: &str = env!("CARGO_BIN_EXE_flow");

/// The real data mirror: `FLOW_DATA_DIR`, else `<repo>/../shared/data`. `None` when it is
/// missing (the skip shown and recorded, see [`skip_or_fail`]), so the caller can skip; a
/// failure where the data must be there.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FLOW_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("rocstories/stories.jsonl").is_file() {
        // Absolute, since flow runs in the project folder.
        Some(std::fs::canonicalize(&dir).unwrap_or(dir))
    } else {
        skip_or_fail(&format!(
            "no real data mirror at {} (set FLOW_DATA_DIR to a folder holding \
             rocstories/stories.jsonl)",
            dir.display()
        ));
        None
    }
}

/// The running test cannot run for want of `what`: see `flow_testkit::skip_or_fail!`.
pub fn skip_or_fail(what: &str) {
    flow_testkit::skip_or_fail!(what)
}

/// `let data = require_data!();` returns early (the test passes, saying why) without data.
#[macro_export]
macro_rules! require_data {
    () => {
        match common::data_dir() {
            Some(d) => d,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Projects and running the binary

/// A temporary project: a folder with `.git` (so it is the project root), a manifest
/// `flow.toml`, its cache in `.flow/` and the results folder `results/`.
pub struct Project {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
}

/// What one `flow` invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The outcome of a `flow run`: its summary line and the instances it says it ran.
#[derive(Debug)]
pub struct RunOut {
    pub out: Out,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Names from the `  ran  NAME (1.2s)` lines.
    pub ran_names: BTreeSet<String>,
}

impl Project {
    pub fn new(data: &Path) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("flow-e2e-")
            .tempdir()
            .expect("create a temporary project");
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        std::fs::create_dir_all(root.join(".git")).expect("create .git");
        Project {
            _dir: dir,
            root,
            data: data.to_path_buf(),
        }
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join("flow.toml")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join(".flow")
    }

    pub fn results_dir(&self) -> PathBuf {
        self.root.join("results")
    }

    pub fn write_manifest(&self, text: &str) {
        std::fs::write(self.manifest(), text).expect("write the manifest");
    }

    /// A `flow` command in the project, with the data dir and cache dir set explicitly.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FLOW);
        cmd.args(args)
            .current_dir(&self.root)
            .env("FLOW_DATA_DIR", &self.data)
            .env("FLOW_CACHE_DIR", self.cache_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn flow(&self, args: &[&str]) -> Out {
        Out::from(self.command(args).output().expect("run flow"))
    }

    fn run_args<'a>(&'a self, manifest: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", manifest, "--no-progress"];
        args.extend_from_slice(extra);
        args
    }

    /// `flow run flow.toml --no-progress EXTRA...`, whatever its exit code.
    pub fn run(&self, extra: &[&str]) -> RunOut {
        let manifest = self.manifest().to_string_lossy().into_owned();
        let out = self.flow(&self.run_args(&manifest, extra));
        parse_run(out)
    }

    /// A run that must succeed (exit 0, nothing failed or skipped).
    pub fn run_ok(&self, extra: &[&str]) -> RunOut {
        let r = self.run(extra);
        assert_eq!(r.out.code, Some(0), "flow run failed:\n{}", r.out.show());
        assert_eq!((r.failed, r.skipped), (0, 0), "{}", r.out.show());
        r
    }

    /// `flow run` in the background, output discarded (for killing it).
    pub fn spawn_run(&self, extra: &[&str]) -> Child {
        let manifest = self.manifest().to_string_lossy().into_owned();
        self.command(&self.run_args(&manifest, extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn flow run")
    }

    /// `flow run` in the background, output captured (collect with `wait_with_output`).
    pub fn spawn_run_captured(&self, extra: &[&str]) -> Child {
        let manifest = self.manifest().to_string_lossy().into_owned();
        self.command(&self.run_args(&manifest, extra))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flow run")
    }

    /// `flow status --json`, schema-checked.
    pub fn status(&self) -> Vec<Row> {
        let manifest = self.manifest().to_string_lossy().into_owned();
        let out = self.flow(&["status", &manifest, "--json"]);
        assert_eq!(out.code, Some(0), "flow status failed:\n{}", out.show());
        parse_status(&out.stdout)
    }

    /// `flow status` (text).
    pub fn status_text(&self) -> Out {
        let manifest = self.manifest().to_string_lossy().into_owned();
        self.flow(&["status", &manifest])
    }

    /// `flow run --dry-run`: instance -> reason.
    pub fn dry_run(&self, extra: &[&str]) -> BTreeMap<String, String> {
        let manifest = self.manifest().to_string_lossy().into_owned();
        let mut args = vec!["run", manifest.as_str(), "--dry-run", "--no-progress"];
        args.extend_from_slice(extra);
        let out = self.flow(&args);
        assert_eq!(
            out.code,
            Some(0),
            "flow run --dry-run failed:\n{}",
            out.show()
        );
        let mut planned = BTreeMap::new();
        for line in out.stdout.lines() {
            if let Some(rest) = line.strip_prefix("would run ") {
                let (name, reason) = rest
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("unexpected dry-run line {line:?}"));
                planned.insert(name.to_string(), reason.to_string());
            } else if line.starts_with("nothing to run") {
                assert!(planned.is_empty(), "{}", out.show());
            }
        }
        if planned.is_empty() {
            assert!(
                out.stdout.contains("nothing to run"),
                "a dry run with nothing to run should say so:\n{}",
                out.show()
            );
        }
        planned
    }

    /// Instance -> the instances it reads directly, from `flow show STAGE --json` for every
    /// stage in `stages`.
    pub fn dag(&self, stages: &[String]) -> Dag {
        let manifest = self.manifest().to_string_lossy().into_owned();
        let mut inputs = BTreeMap::new();
        for stage in stages {
            let out = self.flow(&["show", &manifest, stage, "--json"]);
            assert_eq!(out.code, Some(0), "flow show failed:\n{}", out.show());
            let shown: Value = serde_json::from_str(&out.stdout).expect("show --json is JSON");
            for inst in shown.as_array().expect("show --json is an array") {
                let name = inst["instance"].as_str().expect("instance").to_string();
                let ups: BTreeSet<String> = inst["inputs"]
                    .as_object()
                    .expect("inputs object")
                    .values()
                    .flat_map(|v| v.as_array().expect("input list").clone())
                    .map(|v| v.as_str().expect("input name").to_string())
                    .collect();
                inputs.insert(name, ups);
            }
        }
        Dag { inputs }
    }

    pub fn open_cache(&self) -> Cache {
        Cache::open(&self.cache_dir()).expect("open the cache")
    }

    /// Instance -> its record, for every record in the cache.
    pub fn records_by_instance(&self) -> BTreeMap<String, flow_cache::Record> {
        self.records()
            .values()
            .map(|f| {
                let r = f.record();
                (r.instance.clone(), r)
            })
            .collect()
    }

    /// Key -> what the record file holds and when it was written.
    pub fn records(&self) -> BTreeMap<String, RecordFile> {
        let mut out = BTreeMap::new();
        let dir = self.cache_dir().join("records");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        for e in entries {
            let e = e.expect("records entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes = std::fs::read(e.path()).expect("read record");
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .expect("record mtime");
            out.insert(key.to_string(), RecordFile { bytes, mtime });
        }
        out
    }

    /// Every object hashes to its name, every record parses, holds its own key and points at
    /// objects that verify. Returns the number of objects and records checked.
    pub fn verify_cache(&self) -> (usize, usize) {
        verify_cache(&self.cache_dir())
    }

    /// Instance -> (key, output name -> object hash), for the instances status reports fresh.
    pub fn outputs(&self) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
        let cache = self.open_cache();
        let mut out = BTreeMap::new();
        for row in self.status() {
            if row.state != "fresh" {
                continue;
            }
            let key = row.key.clone().expect("a fresh instance has a key");
            let RecordState::Ok(rec) = cache.read_record(&key) else {
                panic!("fresh instance {} has no readable record", row.instance);
            };
            let outs = rec
                .outputs
                .iter()
                .map(|(k, o)| (k.clone(), o.hash.clone()))
                .collect();
            out.insert(row.instance, (key, outs));
        }
        out
    }

    /// The results folder: relative path -> bytes.
    pub fn results(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        collect_files(&self.results_dir(), &self.results_dir(), &mut out);
        out
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(base, &p, out);
        } else {
            let bytes = std::fs::read(&p).expect("read result file");
            out.insert(p.strip_prefix(base).unwrap().to_path_buf(), bytes);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFile {
    pub bytes: Vec<u8>,
    pub mtime: SystemTime,
}

impl RecordFile {
    pub fn record(&self) -> Record {
        serde_json::from_slice(&self.bytes).expect("record parses")
    }
}

/// Asserts that every record of `before` is still there, byte for byte and not rewritten
/// (same mtime), except the keys in `allowed`.
pub fn assert_records_untouched(
    before: &BTreeMap<String, RecordFile>,
    after: &BTreeMap<String, RecordFile>,
    allowed: &BTreeSet<String>,
    context: &str,
) {
    for (key, old) in before {
        if allowed.contains(key) {
            continue;
        }
        let new = after
            .get(key)
            .unwrap_or_else(|| panic!("{context}: record {key} disappeared"));
        let (o, n) = (old.record(), new.record());
        assert_eq!(
            o.started_unix, n.started_unix,
            "{context}: record of {} ({key}) was recomputed",
            o.instance
        );
        assert!(
            old == new,
            "{context}: record file of {} ({key}) was rewritten",
            o.instance
        );
    }
}

fn parse_run(out: Out) -> RunOut {
    let summary = out
        .stdout
        .lines()
        .find_map(parse_summary)
        .unwrap_or_else(|| panic!("no `N ran, M cached` summary line:\n{}", out.show()));
    let ran_names = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ran  "))
        .map(|rest| {
            rest.rsplit_once(" (")
                .map_or(rest, |(name, _)| name)
                .to_string()
        })
        .collect();
    RunOut {
        ran: summary.0,
        cached: summary.1,
        failed: summary.2,
        skipped: summary.3,
        ran_names,
        out,
    }
}

/// `NAME: 3 ran, 4 cached, 0 failed, 0 skipped`.
fn parse_summary(line: &str) -> Option<(usize, usize, usize, usize)> {
    let (_, rest) = line.rsplit_once(": ")?;
    let parts: Vec<&str> = rest.split(", ").collect();
    if parts.len() != 4 {
        return None;
    }
    let mut nums = [0usize; 4];
    for (i, (part, word)) in parts
        .iter()
        .zip(["ran", "cached", "failed", "skipped"])
        .enumerate()
    {
        let (n, w) = part.split_once(' ')?;
        if w != word {
            return None;
        }
        nums[i] = n.parse().ok()?;
    }
    Some((nums[0], nums[1], nums[2], nums[3]))
}

// ---------------------------------------------------------------------------------------
// `flow status --json`

/// One row of `flow status --json` (docs/status.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub stage: String,
    pub instance: String,
    pub kind: String,
    pub state: String,
    pub reason: String,
    /// `reason_code`: null when fresh.
    pub reason_code: Option<String>,
    /// `changes`: what changed, for `reason_code = "changed"`.
    pub changes: Vec<String>,
    pub key: Option<String>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Parses `flow status --json` and checks the documented schema of every object.
pub fn parse_status(json: &str) -> Vec<Row> {
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{json}"));
    let arr = v.as_array().expect("status --json is an array");
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for obj in arr {
        let o = obj
            .as_object()
            .unwrap_or_else(|| panic!("status row is not an object: {obj}"));
        let string = |field: &str| -> String {
            o.get(field)
                .unwrap_or_else(|| panic!("status row lacks `{field}`: {obj}"))
                .as_str()
                .unwrap_or_else(|| panic!("status row field `{field}` is not a string: {obj}"))
                .to_string()
        };
        let row = Row {
            stage: string("stage"),
            instance: string("instance"),
            kind: string("kind"),
            state: string("state"),
            reason: string("reason"),
            reason_code: match o
                .get("reason_code")
                .unwrap_or_else(|| panic!("status row lacks `reason_code`: {obj}"))
            {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => panic!("status `reason_code` is neither null nor a string: {other}"),
            },
            changes: o
                .get("changes")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("status row lacks the array `changes`: {obj}"))
                .iter()
                .map(|c| c.as_str().expect("change codes are strings").to_string())
                .collect(),
            key: match o
                .get("key")
                .unwrap_or_else(|| panic!("status row lacks `key`: {obj}"))
            {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => panic!("status `key` is neither null nor a string: {other}"),
            },
        };
        assert!(
            ["fresh", "stale", "failed"].contains(&row.state.as_str()),
            "state {:?} is not fresh/stale/failed: {obj}",
            row.state
        );
        assert!(
            row.instance == row.stage || row.instance.starts_with(&format!("{}@", row.stage)),
            "instance {:?} is not `stage` or `stage@...`: {obj}",
            row.instance
        );
        assert!(!row.kind.is_empty(), "empty kind: {obj}");
        if let Some(k) = &row.key {
            assert!(
                is_hex64(k),
                "key {k:?} is not 64 lowercase hex chars: {obj}"
            );
        }
        match row.state.as_str() {
            "fresh" => {
                assert!(row.reason.is_empty(), "fresh with a reason: {obj}");
                assert!(row.reason_code.is_none(), "fresh with a reason code: {obj}");
                assert!(row.key.is_some(), "fresh without a key: {obj}");
            }
            _ => {
                assert!(
                    !row.reason.is_empty(),
                    "{} without a reason: {obj}",
                    row.state
                );
                const CODES: &[&str] = &[
                    "never_run",
                    "previous_run_gone",
                    "input_stale",
                    "input_failed",
                    "key_unknown",
                    "output_missing",
                    "output_corrupt",
                    "record_unreadable",
                    "failed_last_time",
                    "changed",
                ];
                let code = row.reason_code.as_deref().unwrap_or("");
                assert!(CODES.contains(&code), "undocumented reason code: {obj}");
                assert_eq!(
                    code == "failed_last_time",
                    row.state == "failed",
                    "state and reason code disagree: {obj}"
                );
            }
        }
        assert_eq!(
            row.changes.is_empty(),
            row.reason_code.as_deref() != Some("changed"),
            "`changes` is filled exactly for reason code `changed`: {obj}"
        );
        if row.state == "failed" {
            assert!(row.key.is_some(), "failed without a key: {obj}");
        }
        assert!(
            seen.insert(row.instance.clone()),
            "instance {} listed twice",
            row.instance
        );
        rows.push(row);
    }
    rows
}

pub fn by_instance(rows: &[Row]) -> BTreeMap<String, Row> {
    rows.iter()
        .map(|r| (r.instance.clone(), r.clone()))
        .collect()
}

pub fn names_where(rows: &[Row], state: &str) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.state == state)
        .map(|r| r.instance.clone())
        .collect()
}

pub fn assert_all_fresh(rows: &[Row], context: &str) {
    let not: Vec<String> = rows
        .iter()
        .filter(|r| r.state != "fresh")
        .map(|r| format!("{} {}: {}", r.state, r.instance, r.reason))
        .collect();
    assert!(
        not.is_empty(),
        "{context}: not everything is fresh:\n  {}",
        not.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// The DAG

#[derive(Clone, Debug)]
pub struct Dag {
    /// Instance -> the instances it reads directly.
    pub inputs: BTreeMap<String, BTreeSet<String>>,
}

impl Dag {
    /// `from` and everything that reads it, transitively.
    pub fn downstream(&self, from: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = from.clone();
        loop {
            let before = out.len();
            for (inst, ups) in &self.inputs {
                if ups.iter().any(|u| out.contains(u)) {
                    out.insert(inst.clone());
                }
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// `from` and everything it reads, transitively.
    pub fn upstream(&self, from: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = from.clone();
        let mut todo: Vec<String> = from.iter().cloned().collect();
        while let Some(i) = todo.pop() {
            for u in self.inputs.get(&i).into_iter().flatten() {
                if out.insert(u.clone()) {
                    todo.push(u.clone());
                }
            }
        }
        out
    }

    pub fn all(&self) -> BTreeSet<String> {
        self.inputs.keys().cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------
// Cache verification

/// Every object under `objects/` hashes to its name; every record under `records/` parses,
/// names its own key and points at objects that verify.
pub fn verify_cache(cache_dir: &Path) -> (usize, usize) {
    let cache = Cache::open(cache_dir).expect("open the cache");
    let mut objects = 0;
    for hash in object_hashes(cache_dir) {
        assert_eq!(
            cache.check_object(&hash),
            ObjectState::Ok,
            "object {hash} does not hash to its name"
        );
        objects += 1;
    }
    let mut records = 0;
    let dir = cache_dir.join("records");
    for e in std::fs::read_dir(&dir).expect("records/ exists") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        let key = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("unexpected file records/{name}"));
        let rec = match cache.read_record(key) {
            RecordState::Ok(r) => r,
            other => panic!("record {name} is not whole: {other:?}"),
        };
        for (out, o) in &rec.outputs {
            assert_eq!(
                cache.check_object(&o.hash),
                ObjectState::Ok,
                "record {key} ({}) output `{out}` does not verify",
                rec.instance
            );
            let size = std::fs::metadata(cache.object_path(&o.hash)).unwrap().len();
            assert_eq!(size, o.size, "record {key} output `{out}` size");
        }
        records += 1;
    }
    (objects, records)
}

/// The hashes of every object stored under `objects/`.
pub fn object_hashes(cache_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(shards) = std::fs::read_dir(cache_dir.join("objects")) else {
        return out;
    };
    for shard in shards.flatten() {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for e in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            out.insert(format!("{prefix}{}", e.file_name().to_string_lossy()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Manifests built from the kinds the binary has

/// Stage kinds the binary registers, and the parameters of each.
pub struct Kinds {
    pub params: BTreeMap<String, Vec<KindParam>>,
}

#[derive(Clone, Debug)]
pub struct KindParam {
    pub name: String,
    pub required: bool,
}

impl Kinds {
    pub fn has(&self, kind: &str) -> bool {
        self.params.contains_key(kind)
    }

    pub fn required(&self, kind: &str) -> Vec<String> {
        self.params
            .get(kind)
            .map(|ps| {
                ps.iter()
                    .filter(|p| p.required)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `flow kinds` and `flow kinds KIND`, read once per test binary.
pub fn kinds() -> &'static Kinds {
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    KINDS.get_or_init(|| {
        let out = Out::from(
            Command::new(FLOW)
                .arg("kinds")
                .output()
                .expect("flow kinds"),
        );
        assert_eq!(out.code, Some(0), "{}", out.show());
        let mut params = BTreeMap::new();
        for line in out.stdout.lines() {
            let Some((kind, _)) = line.split_once(" (v") else {
                continue;
            };
            if kind.is_empty() || kind.starts_with(' ') {
                continue;
            }
            let detail = Out::from(
                Command::new(FLOW)
                    .args(["kinds", kind])
                    .output()
                    .expect("flow kinds KIND"),
            );
            let ps = detail
                .stdout
                .lines()
                .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
                .map(|l| {
                    let name = l.split_whitespace().next().unwrap_or("").to_string();
                    KindParam {
                        name,
                        required: l.contains("(required)"),
                    }
                })
                .collect();
            params.insert(kind.to_string(), ps);
        }
        params
            .contains_key("source")
            .then_some(())
            .expect("the binary has the `source` kind");
        Kinds { params }
    })
}

/// The test pipeline: `real` (rocstories train, fanned out over `real_limits`) and `gen`
/// (rocstories test, standing in for generated data), then, as far as the kinds exist,
/// `mix` (real x generated at each ratio, paired on real's limit axis), `score` and `table`.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    pub seed: u64,
    pub real_limits: Vec<u32>,
    pub gen_limit: u32,
    pub ratios: Vec<f64>,
    /// Extra TOML appended to the manifest (more stages).
    pub extra: String,
    /// Stages to render, in order (decided by [`Pipeline::resolve`]).
    pub stages: Vec<&'static str>,
    /// Optional parameters too (KL against a reference, a normalized column); dropped by
    /// [`Pipeline::resolve`] when the kinds reject them.
    pub rich: bool,
}

impl Pipeline {
    pub fn new(name: &str) -> Pipeline {
        Pipeline {
            name: name.to_string(),
            seed: 7,
            real_limits: vec![60, 90, 120],
            gen_limit: 150,
            ratios: vec![0.25, 0.5, 0.75],
            extra: String::new(),
            stages: Vec::new(),
            rich: true,
        }
    }

    pub fn has(&self, stage: &str) -> bool {
        self.stages.contains(&stage)
    }

    /// Stage names of the manifest (the pipeline's plus any in `extra`).
    pub fn stage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stages.iter().map(|s| s.to_string()).collect();
        for line in self.extra.lines() {
            if let Some(rest) = line.trim().strip_prefix("[stages.") {
                names.push(rest.trim_end_matches(']').to_string());
            }
        }
        names
    }

    /// The stage scores and tables read: the last data stage.
    fn data_stage(stages: &[&'static str]) -> &'static str {
        if stages.contains(&"mix") {
            "mix"
        } else {
            "real"
        }
    }

    fn list<T: std::fmt::Display>(items: &[T]) -> String {
        if items.len() == 1 {
            return items[0].to_string();
        }
        let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        format!("[{}]", inner.join(", "))
    }

    fn float_list(items: &[f64]) -> String {
        let inner: Vec<String> = items.iter().map(|f| format!("{f:?}")).collect();
        if items.len() == 1 {
            inner[0].clone()
        } else {
            format!("[{}]", inner.join(", "))
        }
    }

    /// The manifest text for `stages`.
    pub fn render_with(&self, stages: &[&'static str]) -> String {
        let mut t = format!(
            "[flow]\nname = \"{}\"\nseed = {}\nresults = \"results\"\n\n",
            self.name, self.seed
        );
        t += &format!(
            "[stages.real]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"train\"\n\
             limit = {}\n\n",
            Self::list(&self.real_limits)
        );
        t += &format!(
            "[stages.gen]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"test\"\n\
             limit = {}\n\n",
            self.gen_limit
        );
        if stages.contains(&"mix") {
            t += &format!(
                "[stages.mix]\nkind = \"mix\"\nreal = \"real\"\ngenerated = \"gen\"\n\
                 ratio = {}\nmode = \"fixed\"\n\n",
                Self::float_list(&self.ratios)
            );
        }
        if stages.contains(&"score") {
            t += &format!(
                "[stages.score]\nkind = \"score\"\ndata = \"{}\"\n",
                Self::data_stage(stages)
            );
            if self.rich {
                // KL against the reference needs `reference`; the metric names are the
                // kind's (a rejected variant falls back to the minimal one).
                t += "reference = \"gen\"\nmetrics = [\"distinct\", \"lengths\", \"kl\"]\n";
            } else {
                for p in kinds().required("score") {
                    match p.as_str() {
                        "data" => {}
                        "reference" => t += "reference = \"gen\"\n",
                        other => panic!("score requires `{other}`, which the tests cannot fill"),
                    }
                }
            }
            t += "\n";
        }
        if stages.contains(&"table") {
            let from = if stages.contains(&"score") {
                "score"
            } else {
                Self::data_stage(stages)
            };
            t += &format!("[stages.table]\nkind = \"table\"\nfrom = \"{from}\"\n");
            if self.rich && stages.contains(&"score") {
                t += "normalize = [\"distinct_5\"]\n";
            }
            for p in kinds().required("table") {
                match p.as_str() {
                    "from" => {}
                    other => panic!("table requires `{other}`, which the tests cannot fill"),
                }
            }
            t += "\n";
        }
        t += &self.extra;
        t
    }

    pub fn render(&self) -> String {
        assert!(!self.stages.is_empty(), "call resolve() first");
        self.render_with(&self.stages)
    }

    /// Picks the fullest chain the binary supports: every kind of source -> mix -> score ->
    /// table that exists and whose manifest `flow check` accepts. What is left out is said.
    pub fn resolve(mut self, project: &Project) -> Pipeline {
        let k = kinds();
        let mut stages: Vec<&'static str> = vec!["real", "gen"];
        for s in ["mix", "score", "table"] {
            if !k.has(s) {
                eprintln!("note: stage kind `{s}` does not exist (yet); testing without it");
                continue;
            }
            let score_fillable = s != "score"
                || k.required("score")
                    .iter()
                    .all(|p| p == "data" || p == "reference");
            let table_fillable = s != "table" || k.required("table").iter().all(|p| p == "from");
            if !(score_fillable && table_fillable) {
                eprintln!("note: stage kind `{s}` needs parameters the tests cannot fill");
                continue;
            }
            let mut trial = stages.clone();
            trial.push(s);
            let mut accepted = false;
            for rich in [self.rich, false] {
                self.rich = rich;
                project.write_manifest(&self.render_with(&trial));
                let m = project.manifest().to_string_lossy().into_owned();
                let out = project.flow(&["check", &m]);
                if out.code == Some(0) {
                    accepted = true;
                    break;
                }
                eprintln!(
                    "note: a manifest with a `{s}` stage (rich = {rich}) is rejected:\n{}",
                    out.show()
                );
            }
            if accepted {
                stages = trial;
            } else {
                eprintln!("note: testing without a `{s}` stage");
            }
        }
        self.stages = stages;
        project.write_manifest(&self.render());
        let m = project.manifest().to_string_lossy().into_owned();
        let out = project.flow(&["check", &m]);
        assert_eq!(
            out.code,
            Some(0),
            "the test manifest is invalid:\n{}",
            out.show()
        );
        self
    }
}

// ---------------------------------------------------------------------------------------
// Small deterministic PRNG (splitmix64), for seeded kill points.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------
// Shipped manifests and the fuzz harnesses over them

/// Every `.toml` file of `dir` (not recursive), sorted.
pub fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    out
}

/// The shipped manifests: `manifests/*.toml` (not the included files of `common/`).
pub fn shipped_manifests() -> Vec<PathBuf> {
    toml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"))
}

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the folder");
    for entry in std::fs::read_dir(from).expect("read the folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy a file");
        }
    }
}

/// A fuzz harness's time budget and seed: `FLOW_FUZZ_SECS` and `FLOW_FUZZ_SEED`, else the
/// harness's defaults (a few seconds in CI).
pub fn fuzz_budget_and_seed(default_secs: f64, default_seed: u64) -> (f64, u64) {
    let var = |name: &str| std::env::var(name).ok();
    (
        var("FLOW_FUZZ_SECS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_secs),
        var("FLOW_FUZZ_SEED")
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed),
    )
}

/// Duplicates the line of `bytes` that holds offset `at` (a key, table or stage defined
/// twice), inserting the copy after it.
pub fn duplicate_line(bytes: &mut Vec<u8>, at: usize) {
    let start = bytes[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let end = bytes[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| at + p + 1);
    let line = bytes[start..end].to_vec();
    bytes.splice(end..end, line);
}
