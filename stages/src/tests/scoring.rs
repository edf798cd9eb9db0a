//! `source` -> `score` on real NarrativeQA.

use std::collections::BTreeMap;

use crate::kinds::score::Score;
use crate::kinds::source::Source;
use crate::testutil::{data_dir, inputs, params, run};

#[test]
fn real_qa_sample_scores_per_context() {
    let Some(dir) = data_dir() else { return };
    let p = params(
        &Source,
        &[
            ("dataset", "narrativeqa".into()),
            ("contexts", 4.into()),
            ("per_context", 20.into()),
        ],
    );
    let src = run(&Source, &p, BTreeMap::new(), 11, Some(&dir)).unwrap();
    let ins = inputs(vec![("data", src.upstream("qa", vec![]))]);
    let ran = run(
        &Score,
        &params(&Score, &[("data", "qa".into())]),
        ins,
        11,
        None,
    )
    .unwrap();
    assert_eq!(ran.metric("groups"), 4);
    let d = ran.num("distinct_5");
    // Four contexts of fairly diverse questions: each value in (0.5, 1].
    assert!(d > 2.0 && d <= 4.0, "{d}");
    assert!(ran.num("length_mean") > 1.0);
}
