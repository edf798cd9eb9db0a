//! The remote cache end to end, against a real S3 server (moto on loopback, started and
//! stopped here): `flow push` of a cache, `flow pull` into an empty cache at another path
//! (then `flow run` runs nothing), `flow run --remote` (read-through), concurrent pushes of
//! overlapping caches, an altered remote object caught on pull, and no credential in
//! anything flow wrote.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Out, Project};
use flow_testkit::moto::Moto;

/// source -> subset (fanned out) -> score -> table: seconds, no model.
fn manifest(limits: &[u32]) -> String {
    let limits: Vec<String> = limits.iter().map(u32::to_string).collect();
    format!(
        r#"[flow]
name = "remote"
seed = 7
results = "results"

[stages.stories]
kind = "source"
dataset = "rocstories"
split = "train"
limit = 300

[stages.sample]
kind = "subset"
data = "stories"
limit = [{}]

[stages.score]
kind = "score"
data = "sample"
reference = "stories"
metrics = ["distinct", "lengths", "kl"]

[stages.table]
kind = "table"
from = "score"
"#,
        limits.join(", ")
    )
}

/// moto, or `None` (the skip shown, or a failure where it must be there).
fn moto() -> Option<Moto> {
    match Moto::start() {
        Ok(m) => Some(m),
        Err(why) => {
            common::skip_or_fail(&why);
            None
        }
    }
}

/// The test's S3 server, its bucket and credentials.
struct S3 {
    moto: Moto,
    bucket: String,
    secret: String,
}

impl S3 {
    fn start(bucket: &str) -> Option<S3> {
        let moto = moto()?;
        moto.create_bucket(bucket).expect("create the bucket");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Some(S3 {
            moto,
            bucket: bucket.to_string(),
            secret: format!("flow-e2e-secret-{}-{nanos}", std::process::id()),
        })
    }

    fn url(&self) -> String {
        format!("s3://{}/team/cache", self.bucket)
    }

    /// The variables a user sets; plain HTTP allowed (the server is on loopback).
    fn env(&self, cmd: &mut Command) {
        for k in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_SKIP_SIGNATURE",
            "FLOW_REMOTE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("AWS_ACCESS_KEY_ID", "flowe2ekeyid")
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.moto.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
    }

    /// `flow ARGS` in `p` with the S3 variables, checked for the secret.
    fn flow(&self, p: &Project, args: &[&str]) -> Out {
        let mut cmd = p.command(args);
        self.env(&mut cmd);
        let out = cmd.output().expect("run flow");
        let out = Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !out.stdout.contains(&self.secret) && !out.stderr.contains(&self.secret),
            "flow printed the secret key:\n{}",
            out.show()
        );
        out
    }

    fn flow_ok(&self, p: &Project, args: &[&str]) -> Out {
        let out = self.flow(p, args);
        assert_eq!(out.code, Some(0), "flow {args:?} failed:\n{}", out.show());
        out
    }

    /// The record keys on the remote.
    fn remote_records(&self) -> BTreeSet<String> {
        self.moto
            .list_keys(&self.bucket, "team/cache/records/")
            .expect("list the remote")
            .iter()
            .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json"))
            .map(str::to_string)
            .collect()
    }

    /// No file under `dir` holds the secret key.
    fn assert_no_secret_under(&self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        let mut files = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read a folder").flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    files += 1;
                    assert!(
                        !bytes
                            .windows(self.secret.len())
                            .any(|w| w == self.secret.as_bytes()),
                        "{} holds the secret key",
                        path.display()
                    );
                }
            }
        }
        assert!(files > 0, "nothing under {}", dir.display());
    }
}

/// The `pushed N records, ...` / `pulled N records, ...` count of a push or pull.
fn records_moved(out: &Out, verb: &str) -> usize {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(verb))
        .unwrap_or_else(|| panic!("no `{verb}` line:\n{}", out.show()));
    line[verb.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad `{verb}` line {line:?}"))
}

#[test]
fn a_pushed_cache_pulled_elsewhere_reruns_nothing() {
    let data = require_data!();
    let Some(s3) = S3::start("shared-cache") else {
        return;
    };
    let url = s3.url();
    let a = Project::new(&data);
    a.write_manifest(&manifest(&[50, 100]));
    let first = a.run_ok(&[]);
    let n = first.ran;
    assert!(n >= 6, "{}", first.out.show());
    let (objects, records) = a.verify_cache();
    assert_eq!(records, n);

    // Plain HTTP is refused unless allowed, and says how to allow it.
    let mut cmd = a.command(&["push", "--remote", &url]);
    s3.env(&mut cmd);
    cmd.env_remove("AWS_ALLOW_HTTP");
    let refused = cmd.output().expect("run flow");
    assert_eq!(refused.status.code(), Some(2));
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("--allow-http"), "{text}");

    let push = s3.flow_ok(&a, &["push", "--remote", &url]);
    assert_eq!(records_moved(&push, "pushed"), n, "{}", push.show());
    assert!(
        push.stdout.contains(&format!("{objects} objects")),
        "{}",
        push.show()
    );
    assert_eq!(s3.remote_records().len(), n);
    // Pushing again uploads nothing: everything is there.
    let again = s3.flow_ok(&a, &["push", "--remote", &url]);
    assert_eq!(records_moved(&again, "pushed"), 0, "{}", again.show());
    assert!(
        again
            .stdout
            .contains(&format!("already there: {n} records")),
        "{}",
        again.show()
    );

    // Another machine: the same manifest at another path, an empty cache.
    let b = Project::new(&data);
    b.write_manifest(&manifest(&[50, 100]));
    let pull = s3.flow_ok(&b, &["pull", "--remote", &url]);
    assert_eq!(records_moved(&pull, "pulled"), n, "{}", pull.show());
    assert_eq!(b.verify_cache(), (objects, n));
    let rerun = b.run_ok(&[]);
    assert_eq!((rerun.ran, rerun.cached), (0, n), "{}", rerun.out.show());
    assert_eq!(b.results(), a.results(), "published results");

    // Read-through: `flow run --remote` into a third, empty cache.
    let c = Project::new(&data);
    c.write_manifest(&manifest(&[50, 100]));
    let m = c.manifest().to_string_lossy().into_owned();
    let run = s3.flow_ok(&c, &["run", &m, "--no-progress", "--remote", &url]);
    assert!(
        run.stdout.contains(&format!("remote: 0 ran, {n} cached")),
        "{}",
        run.show()
    );
    assert!(
        run.stderr.contains(&format!("pulled {n} records")),
        "{}",
        run.show()
    );
    // A manifest with a new instance: read-through pulls what exists, computes the rest.
    c.write_manifest(&manifest(&[50, 100, 150]));
    let run = s3.flow_ok(&c, &["run", &m, "--no-progress", "--remote", &url]);
    assert!(run.stdout.contains(" ran, "), "{}", run.show());
    let ran: usize = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("remote: "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{}", run.show()));
    // sample@150, score@150 and the table that gathers them.
    assert_eq!(ran, 3, "{}", run.show());

    for p in [&a, &b, &c] {
        s3.assert_no_secret_under(&p.root);
    }
}

#[test]
fn concurrent_pushes_of_overlapping_caches_both_succeed() {
    let data = require_data!();
    let Some(s3) = S3::start("concurrent-pushes") else {
        return;
    };
    let url = s3.url();
    // Two machines whose caches share `stories`, `sample@limit=100`, `score@limit=100`.
    let a = Project::new(&data);
    a.write_manifest(&manifest(&[50, 100]));
    let b = Project::new(&data);
    b.write_manifest(&manifest(&[100, 150]));
    let (na, nb) = (a.run_ok(&[]).ran, b.run_ok(&[]).ran);
    let keys = |p: &Project| -> BTreeSet<String> { p.records().into_keys().collect() };
    let (ka, kb) = (keys(&a), keys(&b));
    assert_eq!((ka.len(), kb.len()), (na, nb));
    let shared = ka.intersection(&kb).count();
    assert!(shared >= 3, "the caches overlap in {shared} records");
    let union: BTreeSet<String> = ka.union(&kb).cloned().collect();

    // Both pushes at once, twice over (four processes).
    let children: Vec<_> = [&a, &b, &a, &b]
        .iter()
        .map(|p| {
            let mut cmd = p.command(&["push", "--remote", &url]);
            s3.env(&mut cmd);
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn flow push")
        })
        .collect();
    let mut pushed = 0;
    for child in children {
        let out = child.wait_with_output().expect("wait for flow push");
        let out = Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(
            out.code,
            Some(0),
            "a concurrent push failed:\n{}",
            out.show()
        );
        pushed += records_moved(&out, "pushed");
    }
    assert_eq!(pushed, union.len(), "each record is written once");
    assert_eq!(s3.remote_records(), union, "the remote holds both caches");

    // Consistent: an empty cache pulls it all, every object verifies, and both manifests
    // run nothing there.
    let c = Project::new(&data);
    let pull = s3.flow_ok(&c, &["pull", "--remote", &url]);
    assert_eq!(
        records_moved(&pull, "pulled"),
        union.len(),
        "{}",
        pull.show()
    );
    let (_, records) = c.verify_cache();
    assert_eq!(records, union.len());
    for m in [manifest(&[50, 100]), manifest(&[100, 150])] {
        c.write_manifest(&m);
        let run = c.run_ok(&[]);
        assert_eq!(run.ran, 0, "{}", run.out.show());
    }
}

#[test]
fn an_altered_remote_object_is_detected_on_pull() {
    let data = require_data!();
    let Some(s3) = S3::start("altered-object") else {
        return;
    };
    let url = s3.url();
    let a = Project::new(&data);
    a.write_manifest(&manifest(&[50]));
    let n = a.run_ok(&[]).ran;
    s3.flow_ok(&a, &["push", "--remote", &url]);

    // The score's output, overwritten on the remote with other bytes of the same size.
    let score = a
        .records()
        .into_values()
        .map(|r| r.record())
        .find(|r| r.stage == "score")
        .expect("a score record");
    let hash = score
        .outputs
        .values()
        .next()
        .expect("an output")
        .hash
        .clone();
    let key = format!("team/cache/objects/{}/{}", &hash[..2], &hash[2..]);
    let mut bytes = s3
        .moto
        .get_object(&s3.bucket, &key)
        .expect("read the object")
        .expect("the object is on the remote");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    assert_eq!(s3.moto.put_object(&s3.bucket, &key, &bytes), Ok(200));

    let b = Project::new(&data);
    b.write_manifest(&manifest(&[50]));
    let pull = s3.flow(&b, &["pull", "--remote", &url]);
    assert_eq!(pull.code, Some(1), "{}", pull.show());
    let location = format!("s3://{}/{key}", s3.bucket);
    assert!(
        pull.stderr.contains(&location) && pull.stderr.contains("altered"),
        "the error names the altered object:\n{}",
        pull.show()
    );
    let cache = b.open_cache();
    assert_eq!(
        cache.check_object(&hash),
        flow_cache::ObjectState::Missing,
        "the altered object is not installed"
    );
    assert!(matches!(
        cache.read_record(&score.key),
        flow_cache::RecordState::Missing
    ));
    // The rest came; a run computes only the damaged instance and what reads it.
    assert_eq!(records_moved(&pull, "pulled"), n - 1, "{}", pull.show());
    b.verify_cache();
    let run = b.run_ok(&[]);
    assert_eq!(
        run.ran_names,
        BTreeSet::from(["score@limit=50".to_string()]),
        "{}",
        run.out.show()
    );
    s3.assert_no_secret_under(&b.root);
}
