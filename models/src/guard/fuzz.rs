//! A bounded random-mutation fuzz harness for model-file readers, on stable
//! Rust: tiny valid seed files (a llama GGUF, a safetensors checkpoint), a
//! mutator (bit flips, big integers spliced over header fields and at random
//! offsets, truncation, insertion, deletion, JSON-aware edits of safetensors
//! headers) and a loop that runs a check on each input under
//! `catch_unwind`. An abort (a failed allocation) kills the test process, so
//! it fails the test too.
//!
//! Budget: `FLOW_FUZZ_SECS` (seconds per fuzz test; each test has its own
//! CI-sized default), `FLOW_FUZZ_ITERS` (inputs per test, overrides the
//! time), `FLOW_FUZZ_SEED` (the first seed; CI uses a fixed one).
//! Used by the fuzz tests of this crate, flow-train and flow-generate.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Integers that break readers: zero, one, powers of two and their
/// neighbours, the limits of every width.
pub const INTERESTING: [u64; 32] = [
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    31,
    32,
    33,
    64,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 48,
    1 << 62,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 7,
    u64::MAX - 1,
    u64::MAX,
];

/// Decimal numbers spliced into JSON headers and configs.
const INTERESTING_JSON: [&str; 16] = [
    "0",
    "1",
    "-1",
    "7",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "1e30",
    "0.5",
    "null",
    "\"8\"",
    "[]",
    "100000000",
];

const ST_DTYPES: [&str; 14] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "U16", "BOOL", "F4", "F6_E2M3", "F8_E4M3",
    "C64", "Q4",
];

/// The llama hyperparameters of [`tiny_llama_gguf`].
pub const TINY: TinyLlama = TinyLlama {
    n_embd: 32,
    n_ff: 64,
    n_head: 4,
    n_kv_head: 2,
    n_layer: 2,
    context: 64,
};

pub struct TinyLlama {
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_layer: usize,
    pub context: usize,
}

/// The tokens of [`tiny_llama_gguf`]: three control tokens, then GPT-2's
/// 256 byte-level characters, then the merges' results.
fn tiny_tokens() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let merges = ["h e", "l l", "Ġ t", "he ll"].map(String::from).to_vec();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    (tokens, merges)
}

/// A tiny valid llama GGUF (v2, written by candle): [`TINY`]'s shapes,
/// tensors in F32, F16, Q4_0, Q4_1 and Q8_0, a byte-level BPE tokenizer,
/// an explicit `general.alignment`, scalars of every type and a nested array.
pub fn tiny_llama_gguf() -> Vec<u8> {
    let t = &TINY;
    let (tokens, merges) = tiny_tokens();
    let vocab = tokens.len();
    let hd = t.n_embd / t.n_head;
    let kv = t.n_kv_head * hd;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut q = |rows: usize, cols: usize, dtype: GgmlDType| -> QTensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-0.5f32..0.5))
            .collect();
        let x = Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor");
        QTensor::quantize(&x, dtype).expect("quantize")
    };
    let ones = |n: usize| {
        let x = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("tensor");
        QTensor::quantize(&x, GgmlDType::F32).expect("quantize")
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(vocab, t.n_embd, GgmlDType::Q8_0),
        ),
        ("output_norm.weight".into(), ones(t.n_embd)),
    ];
    for l in 0..t.n_layer {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.extend([
            (p("attn_norm"), ones(t.n_embd)),
            (p("attn_q"), q(t.n_embd, t.n_embd, GgmlDType::F32)),
            (p("attn_k"), q(kv, t.n_embd, GgmlDType::F16)),
            (p("attn_v"), q(kv, t.n_embd, GgmlDType::Q4_0)),
            (p("attn_output"), q(t.n_embd, t.n_embd, GgmlDType::Q4_1)),
            (p("ffn_norm"), ones(t.n_embd)),
            (p("ffn_gate"), q(t.n_ff, t.n_embd, GgmlDType::Q8_0)),
            (p("ffn_up"), q(t.n_ff, t.n_embd, GgmlDType::Q8_0)),
            (p("ffn_down"), q(t.n_embd, t.n_ff, GgmlDType::Q8_0)),
        ]);
    }
    let u32v = |x: usize| Value::U32(x as u32);
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let mut types = vec![Value::I32(1); vocab];
    for t in types.iter_mut().take(3) {
        *t = Value::I32(3);
    }
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny".into())),
        ("general.alignment", Value::U32(32)),
        ("llama.block_count", u32v(t.n_layer)),
        ("llama.context_length", u32v(t.context)),
        ("llama.embedding_length", u32v(t.n_embd)),
        ("llama.feed_forward_length", u32v(t.n_ff)),
        ("llama.attention.head_count", u32v(t.n_head)),
        ("llama.attention.head_count_kv", u32v(t.n_kv_head)),
        ("llama.rope.dimension_count", u32v(hd)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u32v(vocab)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strings(&merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\
                 <|im_end|>\n{% endfor %}<|im_start|>assistant\n"
                    .into(),
            ),
        ),
        ("flow.u8", Value::U8(200)),
        ("flow.i8", Value::I8(-3)),
        ("flow.u16", Value::U16(60000)),
        ("flow.i16", Value::I16(-300)),
        ("flow.u64", Value::U64(1 << 40)),
        ("flow.i64", Value::I64(-(1 << 40))),
        ("flow.f64", Value::F64(0.25)),
        (
            "flow.nested",
            Value::Array(vec![
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
                Value::Array(vec![Value::U32(3)]),
            ]),
        ),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).expect("write gguf");
    out.into_inner()
}

/// Where the header of a valid GGUF v2/v3 file ends, and the offsets of its
/// integer fields (counts, lengths, value types, values, dimensions, tensor
/// types and offsets) with their widths: the mutator's targets.
pub fn gguf_fields(b: &[u8]) -> (usize, Vec<(usize, usize)>) {
    let mut w = Walker {
        b,
        p: 24,
        fields: vec![(4, 4), (8, 8), (16, 8)],
    };
    let (n_tensors, n_kv) = (w.u64_at(8), w.u64_at(16));
    for _ in 0..n_kv {
        w.string();
        let ty = w.field(4) as u32;
        w.value(ty);
    }
    for _ in 0..n_tensors {
        w.string();
        let n_dims = w.field(4);
        for _ in 0..n_dims {
            w.field(8);
        }
        w.field(4);
        w.field(8);
    }
    (w.p, w.fields)
}

/// Walks a valid GGUF header for [`gguf_fields`].
struct Walker<'a> {
    b: &'a [u8],
    p: usize,
    fields: Vec<(usize, usize)>,
}

impl Walker<'_> {
    fn u64_at(&self, p: usize) -> usize {
        u64::from_le_bytes(self.b[p..p + 8].try_into().expect("8 bytes")) as usize
    }

    /// Records the integer field of `width` bytes here and returns it.
    fn field(&mut self, width: usize) -> usize {
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&self.b[self.p..self.p + width]);
        self.fields.push((self.p, width));
        self.p += width;
        u64::from_le_bytes(v) as usize
    }

    fn string(&mut self) {
        let n = self.field(8);
        self.p += n;
    }

    fn value(&mut self, ty: u32) {
        match ty {
            8 => self.string(),
            9 => {
                let elem = self.field(4) as u32;
                let n = self.field(8);
                for _ in 0..n {
                    self.value(elem);
                }
            }
            0 | 1 | 7 => _ = self.field(1),
            2 | 3 => _ = self.field(2),
            4..=6 => _ = self.field(4),
            _ => _ = self.field(8),
        }
    }
}

/// A tiny valid safetensors file (tensors named like a 2-layer llama, in
/// F32, F16, BF16, F64, I64, U8 and U16) and a `config.json` that fits it.
pub fn tiny_safetensors() -> (Vec<u8>, serde_json::Value) {
    let specs: [(&str, &str, &[usize], usize); 8] = [
        ("model.embed_tokens.weight", "F32", &[16, 8], 4),
        ("model.layers.0.mlp.up_proj.weight", "F16", &[12, 8], 2),
        ("model.layers.1.self_attn.q_proj.weight", "BF16", &[8, 8], 2),
        ("model.layers.0.input_layernorm.weight", "F32", &[8], 4),
        ("model.layers.1.input_layernorm.weight", "F64", &[8], 8),
        ("ids", "I64", &[3], 8),
        ("mask", "U8", &[5], 1),
        ("half_words", "U16", &[4], 2),
    ];
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (name, dtype, shape, size) in specs {
        let n: usize = shape.iter().product::<usize>() * size;
        let start = data.len();
        // Small values in every dtype: the low byte random, the rest zero.
        for i in 0..n {
            data.push(if i % size == 0 {
                rng.random_range(0..64u8)
            } else {
                0
            });
        }
        header.insert(
            name.into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data);
    let config = serde_json::json!({
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 8,
        "intermediate_size": 12,
        "vocab_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "head_dim": 4,
    });
    (out, config)
}

/// Random mutations of seed files.
pub struct Mutator {
    pub rng: ChaCha8Rng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A big or boundary integer, sometimes relative to `len` (the file's size).
    fn interesting(&mut self, len: usize) -> u64 {
        match self.below(4) {
            0 => (len as u64)
                .wrapping_add(self.below(64) as u64)
                .wrapping_sub(32),
            1 => self.rng.random(),
            _ => INTERESTING[self.below(INTERESTING.len())],
        }
    }

    fn splice(&mut self, b: &mut [u8], at: usize, width: usize) {
        let v = self.interesting(b.len()).to_le_bytes();
        for (i, x) in v.iter().take(width).enumerate() {
            if let Some(slot) = b.get_mut(at + i) {
                *slot = *x;
            }
        }
    }

    /// An offset, nine times in ten within the first `hot` bytes.
    fn offset(&mut self, len: usize, hot: usize) -> usize {
        match self.chance(0.9) && hot > 0 {
            true => self.below(hot.min(len)),
            false => self.below(len),
        }
    }

    /// 1 to 4 byte-level mutations of `seed`: mostly within its first `hot`
    /// bytes (the header), a third of them big integers over the integer
    /// `fields` (offset, width).
    pub fn mutate(&mut self, seed: &[u8], hot: usize, fields: &[(usize, usize)]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            if b.is_empty() {
                break;
            }
            let len = b.len();
            match self.below(10) {
                0 | 1 => {
                    let at = self.offset(len, hot);
                    b[at] ^= 1 << self.below(8);
                }
                2 => {
                    let at = self.offset(len, hot);
                    b[at] = self.rng.random();
                }
                3..=5 if !fields.is_empty() => {
                    let (at, width) = fields[self.below(fields.len())];
                    self.splice(&mut b, at, width);
                }
                3..=6 => {
                    let at = self.offset(len, hot);
                    let width = [1, 2, 4, 8][self.below(4)];
                    self.splice(&mut b, at, width);
                }
                7 => {
                    let at = match self.chance(0.5) {
                        true => self.offset(len, hot),
                        false => self.below(len),
                    };
                    b.truncate(at);
                }
                8 => {
                    let at = self.offset(len, hot);
                    let n = 1 + self.below(16);
                    let junk: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                    b.splice(at..at, junk);
                }
                _ => {
                    let at = self.offset(len, hot);
                    let end = (at + 1 + self.below(16)).min(len);
                    b.drain(at..end);
                }
            }
        }
        b
    }

    /// A mutated safetensors file: half the time the JSON header is edited
    /// (a number, a dtype, an entry dropped or duplicated under a new name)
    /// and the length prefix mostly rewritten to match, else byte mutations.
    pub fn mutate_safetensors(&mut self, seed: &[u8]) -> Vec<u8> {
        let n = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) as usize;
        if self.chance(0.5) {
            return self.mutate(seed, 8 + n, &[(0, 8)]);
        }
        let header = std::str::from_utf8(&seed[8..8 + n]).expect("UTF-8 header");
        let mut text = self.mutate_json(header);
        if self.chance(0.2) {
            // A renamed copy of an entry: overlapping data.
            if let Some(i) = text.find("\"model.layers.0") {
                let rest = &text[i..];
                if let Some(end) = rest.find('}') {
                    let entry = rest[..=end].replacen("layers.0", "layers.7", 1);
                    text.insert_str(i, &format!("{entry},"));
                }
            }
        }
        let mut out = match self.chance(0.85) {
            true => (text.len() as u64).to_le_bytes().to_vec(),
            false => seed[..8].to_vec(),
        };
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&seed[8 + n..]);
        if self.chance(0.2) {
            let at = 8 + self.below(out.len() - 8);
            out.truncate(at);
        }
        out
    }

    /// `json` with 1 to 3 of its numbers or dtype strings replaced.
    pub fn mutate_json(&mut self, json: &str) -> String {
        let mut text = json.to_string();
        for _ in 0..1 + self.below(3) {
            let numbers: Vec<(usize, usize)> = {
                let b = text.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
                        let s = i;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        if i >= b.len() || !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
                            out.push((s, i));
                        }
                    } else {
                        i += 1;
                    }
                }
                out
            };
            let dtypes: Vec<usize> = text
                .match_indices("\"dtype\":\"")
                .map(|(i, _)| i + 9)
                .collect();
            if !dtypes.is_empty() && self.chance(0.2) {
                let at = dtypes[self.below(dtypes.len())];
                let end = at + text[at..].find('"').unwrap_or(0);
                let new = ST_DTYPES[self.below(ST_DTYPES.len())];
                text.replace_range(at..end, new);
            } else if !numbers.is_empty() {
                let (s, e) = numbers[self.below(numbers.len())];
                let new = match self.chance(0.7) {
                    true => INTERESTING_JSON[self.below(INTERESTING_JSON.len())].to_string(),
                    false => self.interesting(0).to_string(),
                };
                text.replace_range(s..e, &new);
            }
        }
        text
    }
}

/// How long a fuzz test runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub time: Duration,
    /// Inputs to try (overrides the time when set).
    pub iters: Option<u64>,
    pub seed: u64,
}

impl Budget {
    /// `default_secs`, or `FLOW_FUZZ_SECS` / `FLOW_FUZZ_ITERS` / `FLOW_FUZZ_SEED`.
    pub fn from_env(default_secs: f64) -> Budget {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Budget {
            time: Duration::from_secs_f64(
                env("FLOW_FUZZ_SECS")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(default_secs)
                    .max(0.0),
            ),
            iters: env("FLOW_FUZZ_ITERS").and_then(|v| v.parse().ok()),
            seed: env("FLOW_FUZZ_SEED")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0x5eed),
        }
    }
}

/// What a fuzz run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub inputs: u64,
    /// Inputs every check accepted (and the readers then loaded).
    pub accepted: u64,
    pub seconds: f64,
}

/// Runs `check` on inputs from `make` until the budget is spent.
/// `check` returns whether the input was accepted; a panic in it fails the
/// run (the input is saved to the temp folder and named in the message).
pub fn run(
    name: &str,
    budget: Budget,
    mut make: impl FnMut(&mut Mutator) -> Vec<u8>,
    mut check: impl FnMut(&[u8]) -> bool,
) -> Report {
    let start = Instant::now();
    let mut m = Mutator::new(budget.seed);
    let mut r = Report::default();
    loop {
        let done = match budget.iters {
            Some(n) => r.inputs >= n,
            None => start.elapsed() >= budget.time && r.inputs > 0,
        };
        if done {
            break;
        }
        let input = make(&mut m);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(accepted) => r.accepted += accepted as u64,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = std::env::temp_dir().join(format!(
                    "flow-fuzz-{name}-seed{}-input{}.bin",
                    budget.seed, r.inputs
                ));
                let saved = std::fs::write(&path, &input).is_ok();
                panic!(
                    "fuzz {name}: input #{} (seed {}) panicked: {msg}{}",
                    r.inputs,
                    budget.seed,
                    match saved {
                        true => format!("; the input is in {}", path.display()),
                        false => String::new(),
                    }
                );
            }
        }
        r.inputs += 1;
    }
    r.seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {} inputs in {:.1} s (seed {}), {} accepted, none panicked or aborted",
        r.inputs, r.seconds, budget.seed, r.accepted
    );
    r
}
