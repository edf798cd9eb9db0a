//! `topics.json`: a pool of story topics, a JSON array of strings in the
//! order they were found. Written by `topics`, read by `generate_stories`.

use flow_engine::{Context, Outcome, StageError, Upstream};

pub const TOPICS_FILE: &str = "topics.json";

/// Writes `pool` as the stage's `topics.json`: the outcome lists it.
pub fn output(ctx: &Context<'_>, pool: &[String]) -> Result<Outcome, StageError> {
    let path = ctx.out_path(TOPICS_FILE);
    let json = serde_json::to_string_pretty(pool).map_err(|e| StageError::Other(e.to_string()))?;
    std::fs::write(&path, json)
        .map_err(|e| StageError::io(format!("write {}", path.display()), e))?;
    Ok(Outcome::default().output(TOPICS_FILE, path))
}

/// The topic pool of an upstream `topics` instance.
pub fn read(up: &Upstream) -> Result<Vec<String>, StageError> {
    let path = up.file(TOPICS_FILE)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| StageError::invalid(format!("{}: {e}", path.display())))
}
