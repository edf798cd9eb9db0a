//! Reading JSON Lines files line by line, with errors that name the file
//! and the line: the dataset contract and the real corpora use it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use flow_engine::StageError;
use serde::de::DeserializeOwned;

/// Calls `f` with each non-blank line of a text file and its 1-based number; a line that
/// is not UTF-8 is an error naming the file, the line and the column.
pub fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let file =
        File::open(path).map_err(|e| StageError::io(format!("open {}", path.display()), e))?;
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    for number in 1.. {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        let line = std::str::from_utf8(&raw).map_err(|e| {
            StageError::invalid(format!(
                "{}:{number}: not UTF-8 text (invalid byte at column {})",
                path.display(),
                e.valid_up_to() + 1
            ))
        })?;
        if !line.trim().is_empty() {
            f(number, line)?;
        }
    }
    Ok(())
}

/// Reads JSON Lines records; errors name the file and the line. A file with no records is
/// an error: an empty mirror file would otherwise give a silent table of zeros.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, StageError> {
    let mut records = Vec::new();
    for_each_line(path, |number, line| {
        let record = serde_json::from_str(line).map_err(|e| {
            StageError::invalid(format!(
                "{}:{number}: unexpected record: {e}",
                path.display()
            ))
        })?;
        records.push(record);
        Ok(())
    })?;
    if records.is_empty() {
        return Err(StageError::invalid(format!(
            "{} holds no records (the file is empty)",
            path.display()
        )));
    }
    Ok(records)
}
