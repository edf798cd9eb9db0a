//! One QA context window (issue 19): what `source` cuts is what `generate_qa` shows the
//! generator and what training and evaluation put before the question.

use std::collections::BTreeMap;

use flow_train::data::{format, Text};

use crate::contracts::dataset::Example;
use crate::kinds::generate_qa::{generator_context, request_text, window_record, DEFAULT_PROMPT};
use crate::kinds::source::Source;
use crate::testutil::{data_dir, params, run};
use crate::toolkit::corpora::narrativeqa::{CONTEXT_CHARS_FULL, CONTEXT_CUT};

/// The context the generator is asked about is, to the character, the
/// one `flow_train::data::format` puts before the question in training
/// and evaluation: the window `source` cut.
#[test]
fn generator_learner_and_evaluator_see_one_window() {
    let Some(data) = data_dir() else { return };
    let p = params(
        &Source,
        &[
            ("dataset", "narrativeqa".into()),
            ("contexts", 6.into()),
            ("per_context", 4.into()),
            ("context_chars", 800.into()),
        ],
    );
    let real = run(&Source, &p, BTreeMap::new(), 7, Some(&data))
        .expect("source runs")
        .data();
    let mut groups: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for e in &real {
        groups
            .entry(e.group.as_deref().unwrap())
            .or_default()
            .push(e);
    }
    assert_eq!(groups.len(), 6);
    let mut cut = 0;
    for pairs in groups.values() {
        let first = pairs[0];
        let window = first.context.as_deref().unwrap();
        assert!(window.chars().count() <= 800);
        cut += usize::from(first.extra[CONTEXT_CUT] == true);
        // Generation: the text between the prompt's own words.
        let prompt = request_text(
            DEFAULT_PROMPT,
            &generator_context(first, None),
            &pairs[1..],
            5,
        );
        let shown = prompt
            .strip_prefix("Read this story summary.\n\n")
            .and_then(|rest| rest.split_once("\n\nHere are questions"))
            .map(|(context, _)| context)
            .unwrap();
        assert_eq!(shown, window);
        for e in pairs {
            // Training and evaluation: every pair of the context has it.
            let text = Text {
                context: e.context.clone(),
                input: e.input.clone(),
                target: e.target.clone(),
            };
            let (learner, _) = format(&text);
            let (seen, question) = learner.split_once("\n\nQuestion: ").unwrap();
            assert_eq!(seen, shown);
            assert!(question.starts_with(&e.input));
        }
        // The pairs generated from it keep the window's record.
        assert_eq!(window_record(first)[CONTEXT_CUT], first.extra[CONTEXT_CUT]);
        assert_eq!(
            window_record(first)[CONTEXT_CHARS_FULL],
            first.extra[CONTEXT_CHARS_FULL]
        );
        // The option shows the generator less than the learner sees.
        if window.chars().count() > 400 {
            let less = generator_context(first, Some(400));
            assert!(window.starts_with(&less) && less.len() < window.len());
        }
    }
    assert!(cut > 0, "some summary of 6 is longer than 800 characters");
}
