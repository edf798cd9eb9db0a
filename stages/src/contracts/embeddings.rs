//! `embeddings.npy` + `ids.json`: sentence embeddings of a dataset's
//! examples. Written by `embed`, read by `embed_kl` and `tsne`.
//!
//! `embeddings.npy` is float32, shape `[n, dim]`, C order (numpy's
//! `np.load` reads it); row i is the i-th entry of `ids.json`
//! (`[{"id", "task", "origin"}]`).

use std::io::Write;
use std::path::Path;

use flow_engine::{Context, Outcome, StageError, Upstream};
use serde::{Deserialize, Serialize};

use crate::contracts::dataset::{Example, Origin};

pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
pub const IDS_FILE: &str = "ids.json";

/// One row of `ids.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub task: String,
    pub origin: String,
}

impl Row {
    /// The row of an embedded example.
    pub fn of(e: &Example) -> Row {
        Row {
            id: e.id.clone(),
            task: e.task.as_str().to_string(),
            origin: match e.origin {
                Origin::Real => "real".into(),
                Origin::Generated => "generated".into(),
            },
        }
    }
}

/// Writes `vectors` (row-major, `rows.len() x dim`) and their rows as the
/// stage's `embeddings.npy` and `ids.json`: the outcome lists both.
pub fn output(
    ctx: &Context<'_>,
    vectors: &[f32],
    dim: usize,
    rows: &[Row],
) -> Result<Outcome, StageError> {
    let emb_path = ctx.out_path(EMBEDDINGS_FILE);
    write_npy(&emb_path, vectors, rows.len(), dim)?;
    let ids_path = ctx.out_path(IDS_FILE);
    let json =
        serde_json::to_string(rows).map_err(|e| StageError::Other(format!("encode ids: {e}")))?;
    std::fs::write(&ids_path, json + "\n")
        .map_err(|e| StageError::io(format!("write {}", ids_path.display()), e))?;
    Ok(Outcome::default()
        .output(EMBEDDINGS_FILE, emb_path)
        .output(IDS_FILE, ids_path))
}

/// Writes a float32 matrix as a `.npy` file (format 1.0, C order), which
/// numpy reads with `np.load`.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<(), StageError> {
    let io = |e| StageError::io(format!("write {}", path.display()), e);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    f.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    f.write_all(header.as_bytes()).map_err(io)?;
    for x in data {
        f.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    f.flush().map_err(io)
}

/// A float32 matrix read from a `.npy` file written by [`write_npy`].
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, usize, usize), StageError> {
    let bad = |why: &str| StageError::invalid(format!("{}: {why}", path.display()));
    let bytes =
        std::fs::read(path).map_err(|e| StageError::io(format!("read {}", path.display()), e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(bad("not a version 1 .npy file"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("not a C-order float32 array"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape"))?;
    let [rows, cols] = dims[..] else {
        return Err(bad("not a matrix"));
    };
    let body = &bytes[10 + hlen..];
    if body.len() != rows * cols * 4 {
        return Err(bad("size does not match the shape"));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((data, rows, cols))
}

/// The embeddings of one finished `embed` instance.
pub struct Embeddings {
    pub instance: String,
    pub rows: Vec<Row>,
    pub dim: usize,
    /// Row-major, `rows.len() * dim`.
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reads the outputs of an upstream `embed` instance.
pub fn read(up: &Upstream) -> Result<Embeddings, StageError> {
    let (data, n, dim) = read_npy(up.file(EMBEDDINGS_FILE)?)?;
    let ids_path = up.file(IDS_FILE)?;
    let text = std::fs::read_to_string(ids_path)
        .map_err(|e| StageError::io(format!("read {}", ids_path.display()), e))?;
    let rows: Vec<Row> = serde_json::from_str(&text)
        .map_err(|e| StageError::invalid(format!("{}: {e}", ids_path.display())))?;
    if rows.len() != n {
        return Err(StageError::invalid(format!(
            "`{}`: {} ids for {n} embeddings",
            up.instance,
            rows.len()
        )));
    }
    Ok(Embeddings {
        instance: up.instance.clone(),
        rows,
        dim,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npy(&path, &data, 3, 4).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // numpy requires the data to start at a multiple of 64 bytes.
        assert_eq!((bytes.len() - 48) % 64, 0);
        assert_eq!(read_npy(&path).unwrap(), (data, 3, 4));
        std::fs::write(&path, b"not numpy").unwrap();
        assert!(read_npy(&path).is_err());
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_npy(&path).unwrap_err().to_string();
        assert!(err.contains("size"), "{err}");
    }
}
