use std::collections::BTreeSet;

use flow_engine::{Stage, StageError, Value};

use super::{counts, Counts, Mix};
use crate::contracts::dataset::{Example, Task};
use crate::testutil::{data_upstream, example, inputs, params, run, Ran};

fn side(prefix: &str, n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| example(&format!("{prefix}{i}"), Task::Story, None, "a b c", "d e"))
        .collect()
}

fn mix(n_real: usize, n_gen: usize, seed: u64, given: &[(&str, Value)]) -> Result<Ran, StageError> {
    let dir = tempfile::tempdir().unwrap();
    let ins = inputs(vec![
        (
            "real",
            data_upstream(dir.path(), "real", &side("r", n_real)),
        ),
        (
            "generated",
            data_upstream(dir.path(), "gen", &side("g", n_gen)),
        ),
    ]);
    let mut all = vec![("real", "real".into()), ("generated", "gen".into())];
    all.extend(given.iter().cloned());
    let p = params(&Mix, &all);
    run(&Mix, &p, ins, seed, None)
}

fn sides(ran: &Ran) -> (usize, usize) {
    let data = ran.data();
    let real = data.iter().filter(|e| e.id.starts_with('r')).count();
    (real, data.len() - real)
}

#[test]
fn fixed_mode_keeps_the_real_size() {
    let ran = mix(100, 100, 1, &[("ratio", 0.3.into())]).unwrap();
    assert_eq!(sides(&ran), (70, 30));
    assert_eq!(ran.metric("n_real"), 70);
    assert_eq!(ran.metric("n_generated"), 30);
    assert_eq!(ran.metric("n"), 100);
    let ids: BTreeSet<String> = ran.data().into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 100, "sampling is without replacement");

    let sized = mix(100, 100, 1, &[("ratio", 0.5.into()), ("size", 50.into())]).unwrap();
    assert_eq!(sides(&sized), (25, 25));
}

#[test]
fn smaller_side_default_fits_every_ratio() {
    for ratio in [0.0, 0.5, 1.0] {
        let given = [("ratio", ratio.into()), ("default_size", "smaller".into())];
        let ran = mix(100, 30, 1, &given).unwrap();
        assert_eq!(ran.metric("n"), 30, "ratio {ratio}");
    }
}

#[test]
fn ratio_zero_and_one() {
    assert_eq!(
        sides(&mix(40, 60, 1, &[("ratio", 0.0.into())]).unwrap()),
        (40, 0)
    );
    assert_eq!(
        sides(&mix(40, 60, 1, &[("ratio", 1.into())]).unwrap()),
        (0, 40)
    );
    let variable = [("ratio", 0.0.into()), ("mode", "variable".into())];
    assert_eq!(sides(&mix(40, 60, 1, &variable).unwrap()), (40, 0));
}

#[test]
fn variable_mode_adds_generated_data() {
    let given = [("ratio", 0.2.into()), ("mode", "variable".into())];
    let ran = mix(40, 60, 1, &given).unwrap();
    // 0.2 / 0.8 * 40 = 10 generated; 10 / 50 = 0.2.
    assert_eq!(sides(&ran), (40, 10));
    assert_eq!(ran.metric("generated_share"), 0.2);
    assert_eq!(
        counts(0.6, true, None, 2000),
        Counts {
            real: 2000,
            generated: 3000
        }
    );
    assert_eq!(
        counts(0.8, true, None, 2000),
        Counts {
            real: 2000,
            generated: 8000
        }
    );
}

#[test]
fn check_rejects_impossible_variable_settings() {
    let p = params(
        &Mix,
        &[
            ("real", "a".into()),
            ("generated", "b".into()),
            ("ratio", 1.0.into()),
            ("mode", "variable".into()),
            ("size", 10.into()),
        ],
    );
    let problems: Vec<String> = Mix.check(&p).into_iter().map(|p| p.param).collect();
    assert_eq!(problems, ["ratio", "size"]);
    let fixed = params(
        &Mix,
        &[
            ("real", "a".into()),
            ("generated", "b".into()),
            ("ratio", 1.0.into()),
        ],
    );
    assert!(Mix.check(&fixed).is_empty());
}

#[test]
fn deterministic_under_a_seed() {
    let given = [("ratio", 0.4.into())];
    let a = mix(50, 50, 9, &given).unwrap().data();
    assert_eq!(a, mix(50, 50, 9, &given).unwrap().data());
    assert_ne!(a, mix(50, 50, 10, &given).unwrap().data());
}

#[test]
fn ratios_share_their_data() {
    let ids = |ratio: f64| -> BTreeSet<String> {
        let ran = mix(100, 100, 3, &[("ratio", ratio.into())]).unwrap();
        ran.data().into_iter().map(|e| e.id).collect()
    };
    let (low, high) = (ids(0.2), ids(0.6));
    let real = |s: &BTreeSet<String>| -> BTreeSet<String> {
        s.iter().filter(|i| i.starts_with('r')).cloned().collect()
    };
    assert!(real(&high).is_subset(&real(&low)));
}

#[test]
fn not_enough_data_names_the_counts() {
    let err = mix(100, 20, 1, &[("ratio", 0.5.into())]).err().unwrap();
    assert!(matches!(err, StageError::Invalid(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("needs 50 generated") && msg.contains("only 20"),
        "{msg}"
    );

    let err = mix(10, 100, 1, &[("ratio", 0.5.into()), ("size", 40.into())])
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("needs 20 real") && msg.contains("size = 40"),
        "{msg}"
    );
}

#[test]
fn tasks_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let qa = vec![example("q", Task::Qa, Some("d"), "who?", "me")];
    let ins = inputs(vec![
        ("real", data_upstream(dir.path(), "real", &side("r", 3))),
        ("generated", data_upstream(dir.path(), "gen", &qa)),
    ]);
    let p = params(
        &Mix,
        &[
            ("real", "real".into()),
            ("generated", "gen".into()),
            ("ratio", 0.0.into()),
        ],
    );
    let err = run(&Mix, &p, ins, 1, None).err().unwrap();
    assert!(err.to_string().contains("cannot mix story"), "{err}");
}
