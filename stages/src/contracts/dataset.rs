//! The one on-disk dataset format every data stage reads and writes.
//!
//! `data.jsonl`: JSON Lines, one example per line:
//! `{"id", "task": "story"|"qa", "group": str|null, "context": str|null,
//!   "input", "target", "origin": "real"|"generated", "alt_targets"?: [..]}`.
//! Fields a later stage adds (a generator's topic, say) are kept as they are
//! by stages that only pass examples through (see [`Example::extra`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flow_engine::{Context, Outcome, StageError, Upstream};
use serde::{Deserialize, Serialize};

/// The output name of every stage that produces examples.
pub const DATA_FILE: &str = "data.jsonl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// ROCStories: input = first 4 sentences, target = the 5th.
    Story,
    /// NarrativeQA: group = document, context = summary, input = question.
    Qa,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Story => "story",
            Task::Qa => "qa",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Real,
    Generated,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub task: Task,
    /// QA: the NarrativeQA document id, so metrics can work per context.
    pub group: Option<String>,
    /// QA: the document summary. Never part of diversity metrics.
    pub context: Option<String>,
    pub input: String,
    pub target: String,
    pub origin: Origin,
    /// Further accepted answers (NarrativeQA's answer2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_targets: Vec<String>,
    /// Any other fields, carried through unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Reads an upstream stage's `data.jsonl`.
pub fn read_upstream(upstream: &Upstream) -> Result<Vec<Example>, StageError> {
    read(upstream.file(DATA_FILE)?)
}

/// Reads an upstream stage's `data.jsonl`, which must hold at least one
/// example: `purpose` ends the error, e.g. "to train on".
pub fn read_nonempty(upstream: &Upstream, purpose: &str) -> Result<Vec<Example>, StageError> {
    let examples = read_upstream(upstream)?;
    if examples.is_empty() {
        return Err(StageError::invalid(format!(
            "`{}` has no examples {purpose}",
            upstream.instance
        )));
    }
    Ok(examples)
}

/// Reads a dataset; errors name the file and the line.
pub fn read(path: &Path) -> Result<Vec<Example>, StageError> {
    let mut examples = Vec::new();
    crate::toolkit::jsonl::for_each_line(path, |number, line| {
        let example: Example = serde_json::from_str(line).map_err(|e| {
            StageError::invalid(format!(
                "{}:{number}: not a valid example: {e}",
                path.display()
            ))
        })?;
        examples.push(example);
        Ok(())
    })?;
    Ok(examples)
}

/// Writes a dataset, one example per line.
pub fn write(path: &Path, examples: &[Example]) -> Result<(), StageError> {
    let io_err = |e| StageError::io(format!("write {}", path.display()), e);
    let file = File::create(path).map_err(io_err)?;
    let mut out = BufWriter::new(file);
    for example in examples {
        serde_json::to_writer(&mut out, example)
            .map_err(|e| StageError::Other(format!("write {}: {e}", path.display())))?;
        out.write_all(b"\n").map_err(io_err)?;
    }
    out.flush().map_err(io_err)
}

/// Writes `examples` as the stage's `data.jsonl`: the outcome lists it.
pub fn output(ctx: &Context<'_>, examples: &[Example]) -> Result<Outcome, StageError> {
    let path = ctx.out_path(DATA_FILE);
    write(&path, examples)?;
    Ok(Outcome::default().output(DATA_FILE, path))
}

/// The task all `examples` share, as a metric value for figures (`None`
/// when they are empty or mixed).
pub fn task_name(examples: &[Example]) -> Option<&'static str> {
    common_task(examples, "").ok().flatten().map(Task::as_str)
}

/// The task all examples share, or an error naming both tasks found.
pub fn common_task(examples: &[Example], what: &str) -> Result<Option<Task>, StageError> {
    let Some(first) = examples.first() else {
        return Ok(None);
    };
    if let Some(other) = examples.iter().find(|e| e.task != first.task) {
        return Err(StageError::invalid(format!(
            "{what} mixes tasks: `{}` is {} but `{}` is {}",
            first.id,
            first.task.as_str(),
            other.id,
            other.task.as_str()
        )));
    }
    Ok(Some(first.task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(id: &str) -> Example {
        Example {
            id: id.into(),
            task: Task::Story,
            group: None,
            context: None,
            input: "A b. C d.".into(),
            target: "E f.".into(),
            origin: Origin::Real,
            alt_targets: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn round_trip_keeps_nulls_and_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATA_FILE);
        let mut ex = story("s1");
        ex.extra.insert("topic".into(), "Betrayal".into());
        write(&path, &[ex.clone(), story("s2")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.contains(r#""group":null"#), "{first}");
        assert!(first.contains(r#""task":"story""#), "{first}");
        assert!(!first.contains("alt_targets"), "{first}");
        assert_eq!(read(&path).unwrap(), vec![ex, story("s2")]);
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATA_FILE);
        let good = serde_json::to_string(&story("s1")).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"id\": 3}}\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("data.jsonl:2:"), "{err}");
    }

    #[test]
    fn mixed_tasks_are_reported() {
        let mut qa = story("q1");
        qa.task = Task::Qa;
        let err = common_task(&[story("s1"), qa], "input `x`").unwrap_err();
        assert!(err.to_string().contains("mixes tasks"));
    }
}
