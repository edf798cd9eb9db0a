//! Checks on model files before anything is allocated from what they say.
//!
//! A model file states counts and sizes (tensors, metadata entries, string
//! and array lengths, dimensions, offsets, layer and head counts) that
//! readers turn into allocations. A hostile or corrupt file that states
//! 0xFFFFFFFF blocks, a 2^60-byte string or an alignment of 0 must fail its
//! stage with an error naming the file and the field, never abort the process
//! (a failed allocation aborts: no failure is recorded and every running
//! stage dies) or panic.
//!
//! - GGUF: [`check_gguf`] scans the header itself (magic and version, the
//!   tensor and metadata counts against the bytes left, every string and array
//!   length, array nesting, `general.alignment`, each tensor's dimensions,
//!   type, offset and size) before candle's reader sees the file;
//!   [`read_gguf`] and [`open_gguf`] check, then read with candle. The
//!   hyperparameters a llama config takes from the metadata are checked
//!   against the tensors present by [`check_llama_hparams`].
//! - safetensors: [`check_safetensors_file`] / [`check_safetensors_bytes`]
//!   check the 8-byte header length, the JSON header, every tensor's dtype,
//!   shape and data offsets (within the data section, consistent with
//!   dtype × shape, no overflow, no gaps).
//! - `config.json`: [`check_config_json`] bounds the values models size
//!   allocations by (layer, head and width counts, positions) by the tensors
//!   the checkpoint holds.
//! - `tokenizer.json`: [`check_tokenizer`] bounds the padding it asks for
//!   (every encoding is padded to it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

#[doc(hidden)]
pub mod fuzz;
#[cfg(test)]
mod tests;

/// Longest string value accepted (candle's and llama.cpp's cap).
pub const MAX_STRING: u64 = 1 << 30;
/// Longest metadata key or tensor name (the GGUF spec's limit for keys).
pub const MAX_NAME: u64 = 65_535;
/// Most elements of one metadata array (candle's and llama.cpp's cap).
pub const MAX_ARRAY: u64 = 1 << 30;
/// Elements in all metadata arrays together. candle holds each element as a
/// 32-byte value, so this bounds its metadata to about 512 MiB; real files
/// hold far fewer (a 256k vocabulary's tokens, scores and types: under a
/// million).
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;
/// Deepest nesting of arrays in metadata (real files nest none).
pub const MAX_DEPTH: usize = 8;
/// Most dimensions of a GGUF tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Largest context length or position count taken from a file.
pub const MAX_CONTEXT: u64 = 1 << 24;
/// Largest safetensors JSON header (the safetensors crate's own cap).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;
/// Longest metadata string kept in a [`GgufSummary`] (longer ones are only
/// bounds-checked).
const KEEP_STRING: u64 = 256;

/// A model file that cannot be used, with the file and the offending field.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("model file {}: {context}: {source}", path.display())]
    Io {
        path: PathBuf,
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A count, size, offset or hyperparameter out of bounds or inconsistent
    /// with the file's size or the tensors it holds.
    #[error("model file {}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The file passed the checks, but candle could not read it.
    #[error("model file {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
}

impl FileError {
    /// The offending field (`metadata `llama.block_count``, `tensor `x``,
    /// `header length`, ...), for invalid files.
    pub fn field(&self) -> Option<&str> {
        match self {
            FileError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. }
            | FileError::Invalid { path, .. }
            | FileError::Unreadable { path, .. } => path,
        }
    }
}

pub type Result<T> = std::result::Result<T, FileError>;

fn invalid(path: &Path, field: impl Into<String>, message: impl Into<String>) -> FileError {
    FileError::Invalid {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

fn io_err<'a>(path: &'a Path, context: &'a str) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

// ---------------------------------------------------------------- GGUF ---

/// One metadata value, as far as the checks need it.
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    /// An integer, with its GGUF value type (0..=5, 10, 11).
    Int {
        ty: u32,
        value: i128,
    },
    Float(f64),
    Bool(bool),
    /// A string: its text when short, else `None` (only its bounds were checked).
    Str(Option<String>),
    /// An array: its element type and length (its elements were checked).
    Array {
        elem: u32,
        len: u64,
    },
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// Dimensions in file order (`ne[0]`, the row width, first).
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// What the header check learned of a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufSummary {
    pub version: u32,
    pub file_size: u64,
    pub metadata: BTreeMap<String, Meta>,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub alignment: u64,
    /// Where the tensor data starts.
    pub data_offset: u64,
}

/// candle's GGUF tensor types by their number (ggml's `ggml_type`).
fn ggml_dtype(u: u32) -> Option<GgmlDType> {
    Some(match u {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

const TY_ARRAY: u32 = 9;
const TY_STRING: u32 = 8;

fn type_name(ty: u32) -> &'static str {
    match ty {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown type",
    }
}

/// Bytes of one fixed-size value of type `ty`, `None` for strings and arrays.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// A bounds-checked reader over a file of known size.
struct Scanner<'p, R> {
    r: BufReader<R>,
    pos: u64,
    size: u64,
    path: &'p Path,
    /// GGUF v1 writes lengths as u32, later versions as u64.
    v1: bool,
    /// Elements of all metadata arrays so far.
    elements: u64,
}

impl<R: Read + Seek> Scanner<'_, R> {
    fn left(&self) -> u64 {
        self.size - self.pos
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> FileError {
        invalid(self.path, field, message)
    }

    /// Fails unless `n` more bytes are there.
    fn need(&self, n: u64, field: &dyn Fn() -> String, what: &str) -> Result<()> {
        if n > self.left() {
            let field = field();
            return Err(self.invalid(
                field.clone(),
                format!(
                    "{field}: {what} needs {n} bytes at offset {}, but the file ends {} bytes \
                     later (it is {} bytes)",
                    self.pos,
                    self.left(),
                    self.size
                ),
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, field, "its value")?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(io_err(self.path, "read the header"))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(field)?))
    }

    /// A length or count (u32 in GGUF v1, u64 after).
    fn len(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        match self.v1 {
            true => Ok(self.u32(field)? as u64),
            false => self.u64(field),
        }
    }

    fn skip(&mut self, n: u64, field: &dyn Fn() -> String, what: &str) -> Result<()> {
        self.need(n, field, what)?;
        // n <= file size, which a seek offset (i64) holds.
        self.r
            .seek_relative(n as i64)
            .map_err(io_err(self.path, "read the header"))?;
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string of at most `max` bytes; its text (decoded as
    /// candle does) when at most `keep` bytes, else `None`.
    fn string(
        &mut self,
        field: &dyn Fn() -> String,
        max: u64,
        keep: u64,
    ) -> Result<Option<String>> {
        let len = self.len(field)?;
        if len > max {
            let field = field();
            return Err(self.invalid(
                field.clone(),
                format!("{field}: a string of {len} bytes (at most {max} accepted)"),
            ));
        }
        if len > keep {
            self.skip(len, field, &format!("a string of {len} bytes"))?;
            return Ok(None);
        }
        self.need(len, field, &format!("a string of {len} bytes"))?;
        let mut v = vec![0u8; len as usize];
        self.r
            .read_exact(&mut v)
            .map_err(io_err(self.path, "read the header"))?;
        self.pos += len;
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(Some(String::from_utf8_lossy(&v).into_owned()))
    }

    /// A metadata value of type `ty`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Meta> {
        let field = || format!("metadata `{key}`");
        let int = |ty, value: i128| Meta::Int { ty, value };
        Ok(match ty {
            0 => int(ty, u8::from_le_bytes(self.bytes(&field)?) as i128),
            1 => int(ty, i8::from_le_bytes(self.bytes(&field)?) as i128),
            2 => int(ty, u16::from_le_bytes(self.bytes(&field)?) as i128),
            3 => int(ty, i16::from_le_bytes(self.bytes(&field)?) as i128),
            4 => int(ty, u32::from_le_bytes(self.bytes(&field)?) as i128),
            5 => int(ty, i32::from_le_bytes(self.bytes(&field)?) as i128),
            10 => int(ty, u64::from_le_bytes(self.bytes(&field)?) as i128),
            11 => int(ty, i64::from_le_bytes(self.bytes(&field)?) as i128),
            6 => Meta::Float(f32::from_le_bytes(self.bytes(&field)?) as f64),
            12 => Meta::Float(f64::from_le_bytes(self.bytes(&field)?)),
            7 => match u8::from_le_bytes(self.bytes(&field)?) {
                0 => Meta::Bool(false),
                1 => Meta::Bool(true),
                b => {
                    return Err(self.invalid(
                        field(),
                        format!("metadata `{key}`: a bool stored as {b} (must be 0 or 1)"),
                    ))
                }
            },
            TY_STRING => Meta::Str(self.string(&field, MAX_STRING, KEEP_STRING)?),
            TY_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(self.invalid(
                        field(),
                        format!("metadata `{key}`: arrays nested more than {MAX_DEPTH} deep"),
                    ));
                }
                let elem = self.u32(&field)?;
                if elem > 12 {
                    return Err(self.invalid(
                        field(),
                        format!("metadata `{key}`: an array of unknown value type {elem}"),
                    ));
                }
                let len = self.len(&field)?;
                if len > MAX_ARRAY {
                    return Err(self.invalid(
                        field(),
                        format!(
                            "metadata `{key}`: an array of {len} elements (at most {MAX_ARRAY} \
                             accepted)"
                        ),
                    ));
                }
                self.elements = self.elements.saturating_add(len);
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(self.invalid(
                        field(),
                        format!(
                            "metadata `{key}`: an array of {len} elements brings the metadata to \
                             {} array elements (at most {MAX_METADATA_ELEMENTS} accepted)",
                            self.elements
                        ),
                    ));
                }
                let prefix = if self.v1 { 4 } else { 8 };
                let min = match elem {
                    TY_STRING => prefix,
                    TY_ARRAY => 4 + prefix,
                    other => fixed_size(other).unwrap_or(1),
                };
                let what = format!("an array of {len} {}s", type_name(elem));
                self.need(len.saturating_mul(min), &field, &what)?;
                match fixed_size(elem) {
                    // Bools are checked one by one, as candle reads them.
                    Some(size) if elem != 7 => self.skip(len * size, &field, &what)?,
                    _ => {
                        for _ in 0..len {
                            self.value(elem, key, depth + 1)?;
                        }
                    }
                }
                Meta::Array { elem, len }
            }
            other => {
                return Err(self.invalid(
                    field(),
                    format!("metadata `{key}`: unknown value type {other}"),
                ))
            }
        })
    }
}

/// Checks the header of the GGUF file at `path` (see the module doc).
pub fn check_gguf(path: &Path) -> Result<GgufSummary> {
    let mut f = std::fs::File::open(path).map_err(io_err(path, "open"))?;
    check_gguf_reader(&mut f, path)
}

/// [`check_gguf`] on any reader (from its start); `path` names it in errors.
pub fn check_gguf_reader<R: Read + Seek>(mut reader: R, path: &Path) -> Result<GgufSummary> {
    let size = reader
        .seek(SeekFrom::End(0))
        .map_err(io_err(path, "seek"))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(io_err(path, "seek"))?;
    let mut s = Scanner {
        r: BufReader::with_capacity(1 << 16, reader),
        pos: 0,
        size,
        path,
        v1: false,
        elements: 0,
    };
    let magic = s.u32(&|| "magic".into())?;
    // candle accepts the magic in either byte order.
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return Err(s.invalid(
            "magic",
            format!("not a GGUF file (magic 0x{magic:08x}, expected `GGUF`)"),
        ));
    }
    let version = s.u32(&|| "version".into())?;
    if !(1..=3).contains(&version) {
        return Err(s.invalid(
            "version",
            format!("GGUF version {version} is not supported (1 to 3)"),
        ));
    }
    s.v1 = version == 1;
    let tensor_count = s.len(&|| "tensor count".into())?;
    let kv_count = s.len(&|| "metadata count".into())?;
    // The least bytes an entry takes: a metadata entry is a key (length
    // prefix), a value type and at least one byte of value; a tensor entry a
    // name (length prefix), a dimension count, a type and an offset.
    let prefix = if s.v1 { 4 } else { 8 };
    let min_kv = prefix + 4 + 1;
    let min_tensor = prefix + 4 + 4 + 8;
    let left = s.left();
    for (field, count, min, what) in [
        ("tensor count", tensor_count, min_tensor, "tensors"),
        ("metadata count", kv_count, min_kv, "metadata entries"),
    ] {
        if count > MAX_ARRAY || count.saturating_mul(min) > left {
            return Err(s.invalid(
                field,
                format!(
                    "the header declares {count} {what}, which need at least {} bytes, but the \
                     file has {left} bytes after the header",
                    count.saturating_mul(min)
                ),
            ));
        }
    }
    if (tensor_count * min_tensor).saturating_add(kv_count * min_kv) > left {
        return Err(s.invalid(
            "tensor count",
            format!(
                "the header declares {tensor_count} tensors and {kv_count} metadata entries, \
                 which need at least {} bytes, but the file has {left} bytes after the header",
                tensor_count * min_tensor + kv_count * min_kv
            ),
        ));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = s
            .string(&|| format!("metadata key #{i}"), MAX_NAME, MAX_NAME)?
            .unwrap_or_default();
        let ty = s.u32(&|| format!("metadata `{key}`"))?;
        let value = s.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(s.invalid(
                format!("metadata `{key}`"),
                format!("metadata `{key}` appears twice"),
            ));
        }
    }

    let mut tensors = BTreeMap::new();
    for i in 0..tensor_count {
        let name = s
            .string(&|| format!("tensor #{i}'s name"), MAX_NAME, MAX_NAME)?
            .unwrap_or_default();
        let field = || format!("tensor `{name}`");
        let n_dims = s.u32(&field)?;
        if n_dims > MAX_DIMS {
            return Err(s.invalid(
                field(),
                format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(match s.v1 {
                true => s.u32(&field)? as u64,
                false => s.u64(&field)?,
            });
        }
        if dims.contains(&0) {
            return Err(s.invalid(
                field(),
                format!("tensor `{name}` has a dimension of 0: {dims:?}"),
            ));
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| {
                s.invalid(
                    field(),
                    format!("tensor `{name}`: dimensions {dims:?} overflow the element count"),
                )
            })?;
        let ty = s.u32(&field)?;
        let dtype = ggml_dtype(ty).ok_or_else(|| {
            s.invalid(
                field(),
                format!("tensor `{name}` has unknown ggml type {ty}"),
            )
        })?;
        let block = dtype.block_size() as u64;
        if dims.is_empty() {
            return Err(s.invalid(field(), format!("tensor `{name}` has no dimensions")));
        }
        if dims[0] % block != 0 {
            return Err(s.invalid(
                field(),
                format!(
                    "tensor `{name}`: rows of {} elements are not whole {dtype:?} blocks of {block}",
                    dims[0]
                ),
            ));
        }
        let bytes = (elements / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| {
                s.invalid(
                    field(),
                    format!("tensor `{name}`: dimensions {dims:?} overflow its size in bytes"),
                )
            })?;
        let offset = s.u64(&field)?;
        if tensors
            .insert(
                name.clone(),
                TensorEntry {
                    dims,
                    dtype,
                    offset,
                    bytes,
                },
            )
            .is_some()
        {
            return Err(s.invalid(field(), format!("tensor `{name}` appears twice")));
        }
    }

    // Where candle puts the data: the header's end, rounded up to the
    // alignment it reads (integers of these types; anything else, 32).
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(Meta::Int { ty, value }) if matches!(*ty, 0..=5) && *value >= 0 => {
            let a = *value as u64;
            if !a.is_power_of_two() {
                return Err(s.invalid(
                    "metadata `general.alignment`",
                    format!("metadata `general.alignment` = {a} (must be a power of two)"),
                ));
            }
            a
        }
        Some(other) => {
            return Err(s.invalid(
                "metadata `general.alignment`",
                format!("metadata `general.alignment` = {other:?} (must be a u32 power of two)"),
            ))
        }
    };
    let data_offset = s
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| {
            s.invalid(
                "metadata `general.alignment`",
                format!("metadata `general.alignment` = {alignment} puts the data past any file"),
            )
        })?;
    for (name, t) in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(t.bytes));
        if end.is_none_or(|end| end > size) {
            return Err(s.invalid(
                format!("tensor `{name}`"),
                format!(
                    "tensor `{name}`: its {} bytes at offset {} (+ data start {data_offset}) run \
                     past the end of the file ({size} bytes)",
                    t.bytes, t.offset
                ),
            ));
        }
    }
    Ok(GgufSummary {
        version,
        file_size: size,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Checks `reader` ([`check_gguf_reader`]), then reads it with candle.
pub fn read_gguf_from<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<Content> {
    let summary = check_gguf_reader(&mut *reader, path)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(io_err(path, "seek"))?;
    let content =
        Content::read(&mut BufReader::with_capacity(1 << 16, &mut *reader)).map_err(|e| {
            FileError::Unreadable {
                path: path.to_path_buf(),
                message: format!("not a readable GGUF file: {e}"),
            }
        })?;
    // Both read the same header; a difference is a bug here, not in the file.
    if content.tensor_data_offset != summary.data_offset
        || content.tensor_infos.len() != summary.tensors.len()
    {
        return Err(FileError::Unreadable {
            path: path.to_path_buf(),
            message: format!(
                "candle reads the tensor data at {} ({} tensors), the check at {} ({} tensors)",
                content.tensor_data_offset,
                content.tensor_infos.len(),
                summary.data_offset,
                summary.tensors.len()
            ),
        });
    }
    Ok(content)
}

/// The checked GGUF file at `path`, open for reading tensors, and its content.
pub fn open_gguf(path: &Path) -> Result<(std::fs::File, Content)> {
    let mut f = std::fs::File::open(path).map_err(io_err(path, "open"))?;
    let content = read_gguf_from(&mut f, path)?;
    Ok((f, content))
}

/// The content (metadata and tensor index) of the checked GGUF file at `path`.
pub fn read_gguf(path: &Path) -> Result<Content> {
    open_gguf(path).map(|(_, c)| c)
}

/// Llama hyperparameters from GGUF metadata, checked against the tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlamaHparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Rows of `token_embd.weight`.
    pub n_vocab: usize,
    pub context: Option<usize>,
    pub rope_dim: Option<usize>,
}

/// An integer metadata value (any integer type, not negative).
fn meta_int(c: &Content, key: &str, path: &Path) -> Result<Option<u64>> {
    let v = match c.metadata.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    let signed = match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        other => {
            return Err(invalid(
                path,
                format!("metadata `{key}`"),
                format!(
                    "metadata `{key}` is a {:?}, not an integer",
                    other.value_type()
                ),
            ))
        }
    };
    u64::try_from(signed).map(Some).map_err(|_| {
        invalid(
            path,
            format!("metadata `{key}`"),
            format!("metadata `{key}` = {signed} (must not be negative)"),
        )
    })
}

/// Checks what a llama config takes from GGUF metadata against the tensors
/// the file holds, before anything is allocated from it: the block count
/// against the `blk.N.` tensors, the embedding length and vocabulary against
/// `token_embd.weight`, the feed-forward length against `blk.0.ffn_up.weight`,
/// head counts (nonzero, dividing), the rope dimension (at most a head), the
/// context length (at most [`MAX_CONTEXT`]) and the special token ids.
pub fn check_llama_hparams(c: &Content, path: &Path) -> Result<LlamaHparams> {
    let arch = match c.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(invalid(
                path,
                "metadata `general.architecture`",
                "metadata `general.architecture` is not a string",
            ))
        }
        None => {
            return Err(invalid(
                path,
                "metadata `general.architecture`",
                "metadata `general.architecture` is missing",
            ))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |k: &str, message: String| invalid(path, format!("metadata `{k}`"), message);
    let required = |k: &str| -> Result<u64> {
        meta_int(c, k, path)?.ok_or_else(|| bad(k, format!("metadata `{k}` is missing")))
    };
    // usize::try_from cannot fail below: every value is bounded by a tensor
    // dimension or a constant first.
    let dims = |name: &str| c.tensor_infos.get(name).map(|t| t.shape.dims().to_vec());
    let max_dim = c
        .tensor_infos
        .values()
        .flat_map(|t| t.shape.dims().iter().copied())
        .max()
        .unwrap_or(0) as u64;

    let k = key("block_count");
    let n_layer = required(&k)?;
    let blocks: BTreeSet<u64> = c
        .tensor_infos
        .keys()
        .filter_map(|n| n.strip_prefix("blk.")?.split('.').next()?.parse().ok())
        .collect();
    if n_layer != blocks.len() as u64 {
        return Err(bad(
            &k,
            format!(
                "metadata `{k}` = {n_layer} but the file holds {} blocks",
                blocks.len()
            ),
        ));
    }
    if let Some(&last) = blocks.last() {
        if last + 1 != n_layer {
            return Err(bad(
                &k,
                format!(
                    "metadata `{k}` = {n_layer} but the file's blocks are numbered up to {last}"
                ),
            ));
        }
    }

    let (n_vocab, width) = match dims("token_embd.weight").as_deref() {
        Some(&[rows, cols]) => (rows as u64, cols as u64),
        Some(other) => {
            return Err(invalid(
                path,
                "tensor `token_embd.weight`",
                format!("tensor `token_embd.weight` has shape {other:?}, not a matrix"),
            ))
        }
        None => {
            return Err(invalid(
                path,
                "tensor `token_embd.weight`",
                "the file has no `token_embd.weight` tensor",
            ))
        }
    };
    let k = key("embedding_length");
    let n_embd = required(&k)?;
    if n_embd != width {
        return Err(bad(
            &k,
            format!("metadata `{k}` = {n_embd} but `token_embd.weight` is {width} wide"),
        ));
    }
    let k = key("attention.head_count");
    let n_head = required(&k)?;
    if n_head == 0 || n_head > n_embd || !n_embd.is_multiple_of(n_head) {
        return Err(bad(
            &k,
            format!("metadata `{k}` = {n_head} does not divide the embedding length {n_embd}"),
        ));
    }
    let k = key("attention.head_count_kv");
    let n_kv_head = meta_int(c, &k, path)?.unwrap_or(n_head);
    if n_kv_head == 0 || n_kv_head > n_head || !n_head.is_multiple_of(n_kv_head) {
        return Err(bad(
            &k,
            format!("metadata `{k}` = {n_kv_head} does not divide the {n_head} attention heads"),
        ));
    }
    let head_dim = n_embd / n_head;
    let k = key("rope.dimension_count");
    let rope_dim = meta_int(c, &k, path)?;
    if let Some(r) = rope_dim {
        if r > head_dim || r % 2 != 0 {
            return Err(bad(
                &k,
                format!(
                    "metadata `{k}` = {r} but a head is {head_dim} wide (must be even and at \
                     most that)"
                ),
            ));
        }
    }
    let k = key("context_length");
    let context = meta_int(c, &k, path)?;
    if let Some(n) = context {
        if n == 0 || n > MAX_CONTEXT {
            return Err(bad(
                &k,
                format!("metadata `{k}` = {n} (must be 1 to {MAX_CONTEXT})"),
            ));
        }
    }
    let k = key("feed_forward_length");
    let n_ff = required(&k)?;
    match dims("blk.0.ffn_up.weight").as_deref() {
        Some(&[rows, _]) if rows as u64 != n_ff => {
            return Err(bad(
                &k,
                format!("metadata `{k}` = {n_ff} but `blk.0.ffn_up.weight` has {rows} rows"),
            ))
        }
        _ if n_ff > max_dim => {
            return Err(bad(
                &k,
                format!("metadata `{k}` = {n_ff} but no tensor is that large ({max_dim})"),
            ))
        }
        _ => {}
    }
    let k = key("vocab_size");
    if let Some(v) = meta_int(c, &k, path)? {
        if v != n_vocab {
            return Err(bad(
                &k,
                format!("metadata `{k}` = {v} but `token_embd.weight` has {n_vocab} rows"),
            ));
        }
    }
    let k = "tokenizer.ggml.tokens";
    let tokens = match c.metadata.get(k) {
        Some(Value::Array(a)) => Some(a.len() as u64),
        Some(_) => return Err(bad(k, format!("metadata `{k}` is not an array"))),
        None => None,
    };
    if let Some(n) = tokens {
        if n > n_vocab {
            return Err(bad(
                k,
                format!("metadata `{k}` has {n} tokens but `token_embd.weight` has {n_vocab} rows"),
            ));
        }
    }
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"] {
        if let Some(id) = meta_int(c, k, path)? {
            let n = tokens.unwrap_or(n_vocab);
            if id >= n {
                return Err(bad(
                    k,
                    format!("metadata `{k}` = {id} but the vocabulary has {n} tokens"),
                ));
            }
        }
    }
    // Every value is now at most a tensor dimension or MAX_CONTEXT.
    let us = |v: u64| v as usize;
    Ok(LlamaHparams {
        n_layer: us(n_layer),
        n_embd: us(n_embd),
        n_head: us(n_head),
        n_kv_head: us(n_kv_head),
        head_dim: us(head_dim),
        n_ff: us(n_ff),
        n_vocab: us(n_vocab),
        context: context.map(us),
        rope_dim: rope_dim.map(us),
    })
}

// --------------------------------------------------------- safetensors ---

/// One tensor of a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: u64,
    pub end: u64,
}

/// What the header check learned of a safetensors file.
#[derive(Clone, Debug)]
pub struct SafetensorsSummary {
    pub header_len: u64,
    pub data_len: u64,
    pub tensors: BTreeMap<String, SafetensorsEntry>,
}

impl SafetensorsSummary {
    /// (name, shape) of every tensor, for [`check_config_json`].
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.shape.as_slice()))
    }
}

/// Bits per element of a safetensors dtype.
fn st_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Checks the safetensors file at `path`, reading only its header.
pub fn check_safetensors_file(path: &Path) -> Result<SafetensorsSummary> {
    let mut f = std::fs::File::open(path).map_err(io_err(path, "open"))?;
    let size = f.metadata().map_err(io_err(path, "stat"))?.len();
    check_safetensors_with(size, path, |first, header_len| {
        let mut h = vec![0u8; if first { 8 } else { header_len }];
        f.read_exact(&mut h).map_err(io_err(path, "read"))?;
        Ok(h)
    })
}

/// Checks a safetensors file held in memory.
pub fn check_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<SafetensorsSummary> {
    check_safetensors_with(bytes.len() as u64, path, |prefix, header_len| {
        Ok(match prefix {
            true => bytes[..8].to_vec(),
            false => bytes[8..8 + header_len].to_vec(),
        })
    })
}

/// The check, with `read(true, _)` giving the 8 length bytes and then
/// `read(false, n)` the `n` header bytes after them.
fn check_safetensors_with(
    size: u64,
    path: &Path,
    mut read: impl FnMut(bool, usize) -> Result<Vec<u8>>,
) -> Result<SafetensorsSummary> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    if size < 8 {
        return Err(bad(
            "header length",
            format!("a safetensors file of {size} bytes has no room for its 8-byte header length"),
        ));
    }
    let prefix: [u8; 8] = read(true, 0)?.try_into().expect("8 bytes");
    let n = u64::from_le_bytes(prefix);
    if n > size - 8 || n > MAX_SAFETENSORS_HEADER {
        return Err(bad(
            "header length",
            format!(
                "header length {n}, but the file has {} bytes after it (and at most \
                 {MAX_SAFETENSORS_HEADER} are accepted)",
                size - 8
            ),
        ));
    }
    let header = read(false, n as usize)?;
    let text = std::str::from_utf8(&header)
        .map_err(|e| bad("header", format!("the JSON header is not UTF-8: {e}")))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| bad("header", format!("the JSON header does not parse: {e}")))?;
    let data_len = size - 8 - n;
    let mut tensors = BTreeMap::new();
    for (name, v) in json {
        let field = format!("tensor `{name}`");
        if name == "__metadata__" {
            let ok = v
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()));
            if !ok {
                return Err(bad(
                    "__metadata__",
                    "`__metadata__` is not a map of strings".into(),
                ));
            }
            continue;
        }
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| bad(&field, format!("{field} has no `dtype` string")))?;
        let bits = st_bits(dtype)
            .ok_or_else(|| bad(&field, format!("{field} has unknown dtype `{dtype}`")))?;
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| {
                bad(
                    &field,
                    format!("{field}: `shape` is not a list of non-negative integers"),
                )
            })?;
        let offsets = v["data_offsets"]
            .as_array()
            .and_then(|a| match a.as_slice() {
                [s, e] => Some((s.as_u64()?, e.as_u64()?)),
                _ => None,
            });
        let (start, end) = offsets.ok_or_else(|| {
            bad(
                &field,
                format!("{field}: `data_offsets` is not two non-negative integers"),
            )
        })?;
        if start > end || end > data_len {
            return Err(bad(
                &field,
                format!(
                    "{field}: data_offsets [{start}, {end}] are not within the data section \
                     ({data_len} bytes)"
                ),
            ));
        }
        let nbits = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(bits))
            .ok_or_else(|| {
                bad(
                    &field,
                    format!("{field}: shape {shape:?} overflows its size in bytes"),
                )
            })?;
        if nbits % 8 != 0 || nbits / 8 != end - start {
            return Err(bad(
                &field,
                format!(
                    "{field}: {dtype} of shape {shape:?} is {nbits} bits, but data_offsets \
                     [{start}, {end}] hold {} bytes",
                    end - start
                ),
            ));
        }
        tensors.insert(
            name,
            SafetensorsEntry {
                dtype: dtype.to_string(),
                shape,
                start,
                end,
            },
        );
    }
    // The tensors tile the data section: no gap, no overlap, nothing after.
    let mut ranges: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|(n, t)| (t.start, t.end, n.as_str()))
        .collect();
    ranges.sort();
    let mut at = 0;
    for (s, e, name) in ranges {
        if s != at {
            return Err(bad(
                &format!("tensor `{name}`"),
                format!(
                    "tensor `{name}`: data_offsets start at {s}, where the data so far ends at {at}"
                ),
            ));
        }
        at = e;
    }
    if at != data_len {
        return Err(bad(
            "data_offsets",
            format!("the tensors hold {at} bytes, but the data section is {data_len} bytes"),
        ));
    }
    Ok(SafetensorsSummary {
        header_len: n,
        data_len,
        tensors,
    })
}

// ---------------------------------------------------------- config.json ---

/// Keys that count layers (Hugging Face names across architectures).
const LAYER_KEYS: [&str; 3] = ["num_hidden_layers", "n_layer", "num_layers"];
/// Keys that count attention heads.
const HEAD_KEYS: [&str; 3] = ["num_attention_heads", "n_head", "num_key_value_heads"];
/// Keys that are a width some tensor has.
const WIDTH_KEYS: [&str; 10] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "n_embd",
    "n_inner",
    "ffn_dim",
    "word_embed_proj_dim",
    "head_dim",
    "type_vocab_size",
    "relative_attention_num_buckets",
];
/// Keys that count positions.
const POSITION_KEYS: [&str; 3] = ["max_position_embeddings", "n_positions", "n_ctx"];
/// Name segments after which a number is a layer index
/// (`model.layers.3.`, `transformer.h.3.`, `encoder.layer.3.`).
const LAYER_SEGMENTS: [&str; 4] = ["layers", "h", "layer", "blocks"];

/// Bounds the values of a checkpoint's `config.json` that models size
/// allocations by, given the checkpoint's tensors (`(name, shape)`): layer
/// counts at most the layers present, head counts 1 to the largest
/// dimension, widths at most the largest dimension, positions at most
/// [`MAX_CONTEXT`]. Absent and `null` values pass (the model's defaults
/// apply); values of the wrong type are left to the model's own parsing.
pub fn check_config_json<'a>(
    config: &serde_json::Value,
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    path: &Path,
) -> Result<()> {
    let mut max_dim = 0u64;
    let mut layers = BTreeSet::new();
    for (name, shape) in tensors {
        if shape.iter().all(|&d| d > 0) {
            max_dim = max_dim.max(shape.iter().copied().max().unwrap_or(0) as u64);
        }
        let segs: Vec<&str> = name.split('.').collect();
        for w in segs.windows(2) {
            if LAYER_SEGMENTS.contains(&w[0]) {
                if let Ok(i) = w[1].parse::<u64>() {
                    layers.insert(i);
                }
            }
        }
    }
    let get = |k: &str| -> Result<Option<u64>> {
        match config.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v)),
                None => Err(invalid(
                    path,
                    format!("`{k}`"),
                    format!("`{k}` = {n} (must be a non-negative integer)"),
                )),
            },
            Some(_) => Ok(None),
        }
    };
    let bad = |k: &str, message: String| Err(invalid(path, format!("`{k}`"), message));
    for k in LAYER_KEYS {
        if let Some(v) = get(k)? {
            if v > layers.len() as u64 {
                return bad(
                    k,
                    format!(
                        "`{k}` = {v} but the checkpoint holds {} layers",
                        layers.len()
                    ),
                );
            }
        }
    }
    for k in HEAD_KEYS {
        if let Some(v) = get(k)? {
            if v == 0 || v > max_dim {
                return bad(
                    k,
                    format!("`{k}` = {v} (must be 1 to the largest tensor dimension, {max_dim})"),
                );
            }
        }
    }
    for k in WIDTH_KEYS {
        if let Some(v) = get(k)? {
            if v > max_dim {
                return bad(
                    k,
                    format!(
                        "`{k}` = {v} but no tensor of the checkpoint is that large ({max_dim})"
                    ),
                );
            }
        }
    }
    for k in POSITION_KEYS {
        if let Some(v) = get(k)? {
            if v > MAX_CONTEXT {
                return bad(k, format!("`{k}` = {v} (at most {MAX_CONTEXT} accepted)"));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------- tokenizer.json ---

/// Bounds what a tokenizer file makes every encoding allocate: a fixed
/// padding length and a padding multiple of at most [`MAX_CONTEXT`] (a
/// `tokenizer.json` padding to 2^40 tokens aborts the first encode on a
/// failed allocation). Truncation only shortens, and the rest of the file
/// is held as it is (vocabulary, merges, added tokens).
pub fn check_tokenizer(tk: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
    let Some(p) = tk.get_padding() else {
        return Ok(());
    };
    let fixed = match p.strategy {
        tokenizers::PaddingStrategy::Fixed(n) => Some(n),
        tokenizers::PaddingStrategy::BatchLongest => None,
    };
    for (field, v) in [
        ("padding.strategy.Fixed", fixed),
        ("padding.pad_to_multiple_of", p.pad_to_multiple_of),
    ] {
        if let Some(v) = v.filter(|&v| v as u64 > MAX_CONTEXT) {
            return Err(invalid(
                path,
                format!("`{field}`"),
                format!("`{field}` = {v} (at most {MAX_CONTEXT} tokens accepted)"),
            ));
        }
    }
    Ok(())
}
