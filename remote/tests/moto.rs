//! The remote cache against a real S3 server (moto on loopback): push and pull of records
//! and objects (single PUTs and multipart), create-only writes, verification on pull,
//! damaged local objects, concurrent pushers.

use std::collections::BTreeMap;

use flow_cache::{Cache, ObjectState, OutputRef, Record, RecordState};
use flow_remote::{Options, Remote, RemoteError};
use flow_testkit::moto::Moto;

const SECRET: &str = "flow-remote-test-secret-Zq8v";

/// moto, or `None` (the skip shown, or a failure where it must be there).
fn moto() -> Option<Moto> {
    match Moto::start() {
        Ok(m) => Some(m),
        Err(why) => {
            flow_testkit::skip_or_fail!(&why);
            None
        }
    }
}

fn env(moto: &Moto) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "flowtestkey"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", moto.endpoint().as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Small limits, so a few hundred KiB go up in parts.
fn opts() -> Options {
    Options {
        allow_http: true,
        jobs: 4,
        single_put_max: 64 << 10,
        part_size: 5 << 20,
    }
}

fn remote(moto: &Moto, url: &str) -> Remote {
    Remote::open_with_env(url, opts(), env(moto)).expect("open the remote")
}

/// A record for `name` whose outputs are `payloads`, stored in `cache`.
fn add_record(cache: &Cache, name: &str, payloads: &[Vec<u8>]) -> Record {
    let mut outputs = BTreeMap::new();
    for (i, p) in payloads.iter().enumerate() {
        let hash = cache.put_bytes(p).unwrap();
        outputs.insert(
            format!("out{i}"),
            OutputRef {
                hash,
                size: p.len() as u64,
                publish: false,
            },
        );
    }
    // Built from JSON, as records are read, so fields added later keep their defaults.
    let record: Record = serde_json::from_value(serde_json::json!({
        "key": flow_cache::hash_bytes(name.as_bytes()),
        "stage": name,
        "instance": name,
        "kind": "test",
        "version": 1,
        "params": {},
        "inputs": {},
        "fingerprints": {},
        "seed": 7,
        "outputs": outputs,
        "metrics": {},
        "log": [format!("made {name}")],
        "started_unix": 1.0,
        "duration_s": 0.5,
    }))
    .unwrap();
    cache.write_record(&record).unwrap();
    record
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn push_then_pull_round_trips_and_is_create_only() {
    let Some(moto) = moto() else { return };
    moto.create_bucket("roundtrip").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = Cache::open(&dir.path().join("a")).unwrap();
    let shared = payload(9, 1000);
    let r1 = add_record(&a, "one", &[payload(1, 10), shared.clone()]);
    // 300 KiB: above single_put_max, so multipart.
    let r2 = add_record(&a, "two", &[payload(2, 300 << 10), shared.clone()]);
    let r3 = add_record(&a, "empty", &[Vec::new()]);
    let remote = remote(&moto, "s3://roundtrip/team/cache");

    let push = remote.push(&a, None).unwrap();
    assert!(push.failed.is_empty(), "{:?}", push.failed);
    assert_eq!(
        (push.pushed.records, push.pushed.objects),
        (3, 4),
        "one object is shared"
    );
    assert_eq!(push.pushed.bytes, 10 + 1000 + (300 << 10));
    assert_eq!(
        moto.get_object("roundtrip", "team/cache/VERSION").unwrap(),
        Some(b"1\n".to_vec())
    );
    let mut keys = vec![r1.key.clone(), r2.key.clone(), r3.key.clone()];
    keys.sort();
    assert_eq!(remote.record_keys().unwrap(), keys);

    // Again: everything is there already.
    let again = remote.push(&a, None).unwrap();
    assert_eq!(again.pushed, Default::default());
    assert_eq!(again.already_there.records, 3);

    // A record already on the remote is never overwritten by another machine's.
    let b = Cache::open(&dir.path().join("b")).unwrap();
    let mut other = r1.clone();
    other.log = vec!["another machine".into()];
    for out in other.outputs.values() {
        let bytes = std::fs::read(a.object_path(&out.hash)).unwrap();
        b.put_bytes(&bytes).unwrap();
    }
    b.write_record(&other).unwrap();
    let push_b = remote.push(&b, None).unwrap();
    assert_eq!(
        (push_b.pushed.records, push_b.already_there.records),
        (0, 1)
    );

    // Pull into an empty cache elsewhere: the same records, objects that verify.
    let c = Cache::open(&dir.path().join("c")).unwrap();
    let pull = remote.pull(&c, None).unwrap();
    assert!(pull.failed.is_empty(), "{:?}", pull.failed);
    assert_eq!((pull.pulled.records, pull.pulled.objects), (3, 4));
    for r in [&r1, &r2, &r3] {
        assert_eq!(c.read_record(&r.key), RecordState::Ok(r.clone()));
        for o in r.outputs.values() {
            assert_eq!(c.check_object(&o.hash), ObjectState::Ok);
        }
    }
    // Pulling again moves nothing; asking for a key the remote lacks says so.
    let missing = flow_cache::hash_bytes(b"never pushed");
    let again = remote.pull(&c, Some(&[r1.key.clone(), missing])).unwrap();
    assert_eq!(again.pulled, Default::default());
    assert_eq!((again.already_here.records, again.not_on_remote), (1, 1));
}

#[test]
fn an_altered_remote_object_is_detected_and_not_installed() {
    let Some(moto) = moto() else { return };
    moto.create_bucket("altered").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = Cache::open(&dir.path().join("a")).unwrap();
    let good = add_record(&a, "good", &[payload(1, 100)]);
    let bad = add_record(&a, "bad", &[payload(2, 100), payload(3, 200 << 10)]);
    let remote = remote(&moto, "s3://altered");
    assert!(remote.push(&a, None).unwrap().failed.is_empty());

    // Same size, other bytes; and a truncated large object.
    let small = &bad.outputs["out0"].hash;
    let large = &bad.outputs["out1"].hash;
    let key = |h: &str| format!("objects/{}/{}", &h[..2], &h[2..]);
    let mut altered = payload(2, 100);
    altered[50] ^= 1;
    assert_eq!(
        moto.put_object("altered", &key(small), &altered).unwrap(),
        200
    );
    let c = Cache::open(&dir.path().join("c")).unwrap();
    let pull = remote.pull(&c, None).unwrap();
    assert_eq!(pull.pulled.records, 1, "{:?}", pull.failed);
    assert_eq!(pull.failed.len(), 1, "{:?}", pull.failed);
    let err = &pull.failed[0];
    let msg = err.to_string();
    assert!(matches!(err, RemoteError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains(&format!("s3://altered/{}", key(small))),
        "{msg}"
    );
    assert!(msg.contains(&bad.key), "{msg}");
    assert_eq!(c.check_object(small), ObjectState::Missing);
    assert_eq!(c.read_record(&bad.key), RecordState::Missing);
    assert!(matches!(c.read_record(&good.key), RecordState::Ok(_)));

    assert_eq!(
        moto.put_object("altered", &key(small), &payload(2, 100))
            .unwrap(),
        200
    );
    assert_eq!(
        moto.put_object("altered", &key(large), &payload(3, 1000))
            .unwrap(),
        200
    );
    // Into a new cache: `c` may hold the large object already (verified and installed by
    // the first pull while the small one failed; only the record waits for both).
    let d = Cache::open(&dir.path().join("d")).unwrap();
    let pull = remote.pull(&d, None).unwrap();
    assert!(
        matches!(pull.failed.as_slice(), [RemoteError::WrongSize { .. }]),
        "{:?}",
        pull.failed
    );
    assert_eq!(d.check_object(large), ObjectState::Missing);
    assert_eq!(d.read_record(&bad.key), RecordState::Missing);
    for e in &pull.failed {
        assert!(!e.to_string().contains(SECRET));
    }
}

#[test]
fn a_damaged_local_object_is_not_pushed() {
    let Some(moto) = moto() else { return };
    moto.create_bucket("damaged").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = Cache::open(&dir.path().join("a")).unwrap();
    let ok = add_record(&a, "ok", &[payload(1, 100)]);
    let bad = add_record(&a, "bad", &[payload(2, 100)]);
    let path = a.object_path(&bad.outputs["out0"].hash);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, payload(3, 100)).unwrap();
    let remote = remote(&moto, "s3://damaged/p");
    let push = remote.push(&a, None).unwrap();
    assert_eq!(push.pushed.records, 1);
    assert!(
        matches!(push.failed.as_slice(), [RemoteError::LocalObject { key, .. }] if *key == bad.key),
        "{:?}",
        push.failed
    );
    assert_eq!(remote.record_keys().unwrap(), vec![ok.key.clone()]);
    let h = &bad.outputs["out0"].hash;
    assert_eq!(
        moto.get_object("damaged", &format!("p/objects/{}/{}", &h[..2], &h[2..]))
            .unwrap(),
        None
    );
}

#[test]
fn concurrent_pushes_of_overlapping_caches_are_safe() {
    let Some(moto) = moto() else { return };
    moto.create_bucket("concurrent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let caches: Vec<Cache> = (0..3)
        .map(|i| Cache::open(&dir.path().join(format!("c{i}"))).unwrap())
        .collect();
    // Each cache holds records 0..12 shifted by 4: pairs overlap in 8 records.
    let mut all = BTreeMap::new();
    for (i, cache) in caches.iter().enumerate() {
        for r in 4 * i..4 * i + 12 {
            let rec = add_record(
                cache,
                &format!("r{r}"),
                &[payload(r as u8, 500 + r), payload(0, 70 << 10)],
            );
            all.insert(rec.key.clone(), rec);
        }
    }
    let url = "s3://concurrent/shared";
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = caches
            .iter()
            .map(|c| s.spawn(|| remote(&moto, url).push(c, None)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut pushed_records = 0;
    for r in reports {
        let r = r.unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(r.pushed.records + r.already_there.records, 12);
        pushed_records += r.pushed.records;
    }
    assert_eq!(pushed_records, all.len(), "each record is written once");
    let remote = remote(&moto, url);
    assert_eq!(
        remote.record_keys().unwrap(),
        all.keys().cloned().collect::<Vec<_>>()
    );
    let fresh = Cache::open(&dir.path().join("fresh")).unwrap();
    let pull = remote.pull(&fresh, None).unwrap();
    assert!(pull.failed.is_empty(), "{:?}", pull.failed);
    assert_eq!(pull.pulled.records, all.len());
    for rec in all.values() {
        assert_eq!(fresh.read_record(&rec.key), RecordState::Ok(rec.clone()));
        for o in rec.outputs.values() {
            assert_eq!(fresh.check_object(&o.hash), ObjectState::Ok);
        }
    }
}
