//! The `flow status --json` schema (docs/status.md), through every state: never run, fresh,
//! stale because a parameter changed, failed. `common::parse_status` checks each object:
//! `stage`, `instance`, `kind`, `state` in {fresh, stale, failed}, `reason`, `key`.

mod common;

use std::collections::BTreeMap;

use common::{parse_status, Pipeline, Project, Row};

/// The document-level rules: dependency order, keys present exactly when every input is
/// fresh, kinds matching the manifest, the text summary agreeing with the JSON.
fn check_document(p: &Project, rows: &[Row], kinds: &BTreeMap<String, String>) {
    let dag = p.dag(&kinds.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        rows.iter()
            .map(|r| r.instance.clone())
            .collect::<std::collections::BTreeSet<_>>(),
        dag.all(),
        "status lists every instance once"
    );
    let pos: BTreeMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.instance.as_str(), i))
        .collect();
    let state: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.instance.as_str(), r.state.as_str()))
        .collect();
    for r in rows {
        assert_eq!(kinds[&r.stage], r.kind, "kind of {}", r.instance);
        let ups = &dag.inputs[&r.instance];
        for u in ups {
            assert!(
                pos[u.as_str()] < pos[r.instance.as_str()],
                "{u} listed after {}",
                r.instance
            );
        }
        let inputs_fresh = ups.iter().all(|u| state[u.as_str()] == "fresh");
        assert_eq!(
            r.key.is_some(),
            inputs_fresh,
            "{}: key {:?} with inputs fresh = {inputs_fresh}",
            r.instance,
            r.key
        );
    }
    let text = p.status_text();
    let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
    let want = format!(
        "{} instances: {} fresh, {} stale, {} failed",
        rows.len(),
        count("fresh"),
        count("stale"),
        count("failed")
    );
    assert!(
        text.stdout.contains(&want),
        "want {want:?}:\n{}",
        text.show()
    );
}

#[test]
fn status_json_schema_through_every_state() {
    let data = require_data!();
    let p = Project::new(&data);
    let mut pipe = Pipeline::new("status");
    // Fails at run time: more test stories than the split holds.
    pipe.extra = "[stages.big]\nkind = \"source\"\ndataset = \"rocstories\"\nsplit = \"test\"\n\
                  limit = 1000000\n\n"
        .to_string();
    let mut pipe = pipe.resolve(&p);
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for s in pipe.stage_names() {
        let kind = match s.as_str() {
            "real" | "gen" | "big" => "source".to_string(),
            other => other.to_string(),
        };
        kinds.insert(s, kind);
    }

    // Never run.
    let rows = p.status();
    assert!(rows.iter().all(|r| r.state == "stale"));
    check_document(&p, &rows, &kinds);

    // Run: all fresh but `big`, which failed.
    let r = p.run(&[]);
    assert_eq!(r.out.code, Some(1), "{}", r.out.show());
    let rows = p.status();
    for r in &rows {
        let want = if r.instance == "big" {
            "failed"
        } else {
            "fresh"
        };
        assert_eq!(r.state, want, "{}: {}", r.instance, r.reason);
    }
    assert!(rows
        .iter()
        .any(|r| r.reason.starts_with("failed last time: ")));
    check_document(&p, &rows, &kinds);

    // A changed parameter: stale, with the documented wording.
    pipe.gen_limit += 10;
    p.write_manifest(&pipe.render());
    let rows = p.status();
    let gen = rows.iter().find(|r| r.instance == "gen").unwrap();
    assert_eq!(gen.state, "stale");
    assert_eq!(
        gen.reason,
        format!(
            "parameter `limit` changed from {} to {}",
            pipe.gen_limit - 10,
            pipe.gen_limit
        )
    );
    check_document(&p, &rows, &kinds);

    // The parser itself rejects what the schema forbids.
    let bad = [
        r#"[{"instance":"a","kind":"source","state":"fresh","reason":"","key":null}]"#,
        r#"[{"stage":"a","instance":"a","kind":"source","state":"done","reason":"","key":null}]"#,
        r#"[{"stage":"a","instance":"a","kind":"source","state":"stale","reason":"x","key":"12"}]"#,
        r#"[{"stage":"a","instance":"a","kind":"source","state":"stale","reason":"x"}]"#,
        r#"[{"stage":"a","instance":"b","kind":"source","state":"stale","reason":"x","key":null}]"#,
    ];
    for json in bad {
        let caught = std::panic::catch_unwind(|| parse_status(json));
        assert!(caught.is_err(), "schema check accepted {json}");
    }
}
