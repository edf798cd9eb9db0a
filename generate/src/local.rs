//! In-process generation on candle: a quantized GGUF llama on the CPU.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as Strategy};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use flow_models::{Format, ResolvedModel};

use crate::chat::{ChatTemplate, CHATML};
use crate::{Completion, Finish, GenError, Generator, Request, Result, Sink, Stats};

/// Bump when a change here changes generated text: it is part of every journal key.
/// v2: block types without a SIMD kernel in candle are requantized to Q8_0.
const IMPL: &str = "flow-generate/local/v2";

pub struct LocalGenerator {
    model: ModelWeights,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    /// Tokens that end the assistant's turn.
    eos: Vec<u32>,
    bos: Option<u32>,
    device: Device,
    identity: String,
    stats: Stats,
}

fn cerr(e: candle_core::Error) -> GenError {
    GenError::Other(format!("candle: {e}"))
}

/// blake3 of a file, hex.
pub fn blake3_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|source| GenError::Io {
        context: format!("open {}", path.display()),
        source,
    })?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| GenError::Io {
            context: format!("read {}", path.display()),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

impl LocalGenerator {
    /// Loads a GGUF model. `weights_id` identifies the weights (their blake3);
    /// computed from the file when `None`.
    pub fn load(model: &ResolvedModel, weights_id: Option<String>) -> Result<Self> {
        if model.format != Format::Gguf {
            return Err(GenError::Other(format!(
                "{}: the local generator runs GGUF weights; got {}",
                model.weights.display(),
                model.format.as_str()
            )));
        }
        let device = Device::Cpu;
        let path = &model.weights;
        let mut file = std::fs::File::open(path).map_err(|source| GenError::Io {
            context: format!("open {}", path.display()),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(cerr)?;
        let md = &content.metadata;
        let tokens: Vec<String> = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| {
                v.iter()
                    .filter_map(|t| t.to_string().ok().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let id_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let tok_str = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_default()
        };
        let eos_id = id_of("tokenizer.ggml.eos_token_id");
        let bos_id = id_of("tokenizer.ggml.bos_token_id");
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let template_src = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| CHATML.to_string());
        let template = ChatTemplate::new(&template_src, &tok_str(bos_id), &tok_str(eos_id))?;
        let mut eos: Vec<u32> = eos_id.into_iter().collect();
        for name in ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                if !eos.contains(&(i as u32)) {
                    eos.push(i as u32);
                }
            }
        }
        let tokenizer = flow_models::load_tokenizer(model)?;
        let weights = load_weights(content, &mut file, &device)?;
        let weights_id = match weights_id {
            Some(id) => id,
            None => blake3_file(path)?,
        };
        Ok(LocalGenerator {
            model: weights,
            tokenizer,
            template,
            eos,
            bos: if add_bos { bos_id } else { None },
            device,
            identity: format!("{IMPL}:{weights_id}"),
            stats: Stats::default(),
        })
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The prompt text the model sees for these messages.
    pub fn prompt(&self, messages: &[crate::Message]) -> Result<String> {
        self.template.render(messages)
    }

    /// Token ids of a prompt text (BOS added where the model wants it).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(GenError::other)?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(b) = self.bos {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Generates from raw prompt token ids.
    pub fn generate_ids(&mut self, ids: &[u32], s: &crate::Sampling) -> Result<Completion> {
        if ids.is_empty() {
            return Err(GenError::Other("empty prompt".into()));
        }
        if ids.len() >= MAX_SEQ_LEN {
            return Err(GenError::Other(format!(
                "the prompt has {} tokens; the model takes at most {MAX_SEQ_LEN}",
                ids.len()
            )));
        }
        let max_new = s.max_tokens.min(MAX_SEQ_LEN - ids.len());
        let strategy = if s.temperature <= 0.0 {
            Strategy::ArgMax
        } else if s.top_p < 1.0 {
            Strategy::TopP {
                p: s.top_p,
                temperature: s.temperature,
            }
        } else {
            Strategy::All {
                temperature: s.temperature,
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(s.seed, strategy);
        self.model.clear_kv_cache();
        let t0 = Instant::now();
        let input = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(cerr)?;
        let logits = self
            .model
            .forward(&input, 0)
            .and_then(|l| l.squeeze(0))
            .map_err(cerr)?;
        let mut next = sampler.sample(&logits).map_err(cerr)?;
        self.stats.prompt_tokens += ids.len() as u64;
        self.stats.prompt_secs += t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut out: Vec<u32> = Vec::new();
        let mut finish = Finish::Length;
        let mut text = String::new();
        let mut forwards = 0u64;
        while out.len() < max_new {
            if self.eos.contains(&next) {
                finish = Finish::Eos;
                break;
            }
            out.push(next);
            if !s.stop.is_empty() {
                text = self
                    .tokenizer
                    .decode(&out, false)
                    .map_err(GenError::other)?;
                if let Some(cut) = s.stop.iter().filter_map(|st| text.find(st.as_str())).min() {
                    text.truncate(cut);
                    finish = Finish::Stop;
                    break;
                }
            }
            if out.len() >= max_new {
                break;
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(cerr)?;
            let logits = self
                .model
                .forward(&input, ids.len() + out.len() - 1)
                .and_then(|l| l.squeeze(0))
                .map_err(cerr)?;
            forwards += 1;
            next = sampler.sample(&logits).map_err(cerr)?;
        }
        if finish != Finish::Stop {
            text = self
                .tokenizer
                .decode(&out, false)
                .map_err(GenError::other)?;
        }
        // Every completion token after the first costs one forward pass.
        self.stats.completion_tokens += forwards;
        self.stats.completion_secs += t1.elapsed().as_secs_f64();
        self.stats.requests += 1;
        Ok(Completion {
            text,
            prompt_tokens: ids.len(),
            completion_tokens: out.len(),
            finish,
        })
    }
}

/// Block types whose dot product candle runs as scalar code (no AVX/NEON
/// kernel): about 10x slower per token than Q8_0, which has one.
fn slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// The model's weights; tensors of a slow block type are requantized to Q8_0
/// (a superset of their precision: a 4- or 5-bit block fits 8 bits with one
/// scale) in an in-memory GGUF, so the weights candle runs are fast ones.
pub fn load_weights(
    content: gguf_file::Content,
    file: &mut std::fs::File,
    device: &Device,
) -> Result<ModelWeights> {
    if !content
        .tensor_infos
        .values()
        .any(|t| slow_on_cpu(t.ggml_dtype))
    {
        return ModelWeights::from_gguf(content, file, device).map_err(cerr);
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = content.tensor(file, name, &Device::Cpu).map_err(cerr)?;
        let last = t.shape().dims().last().copied().unwrap_or(0);
        let t = if slow_on_cpu(t.dtype()) && last % GgmlDType::Q8_0.block_size() == 0 {
            let dense = t.dequantize(&Device::Cpu).map_err(cerr)?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(cerr)?
        } else {
            t
        };
        tensors.push((name.as_str(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &refs).map_err(cerr)?;
    buf.set_position(0);
    let requantized = gguf_file::Content::read(&mut buf).map_err(cerr)?;
    ModelWeights::from_gguf(requantized, &mut buf, device).map_err(cerr)
}

impl Generator for LocalGenerator {
    fn identity(&self) -> &str {
        &self.identity
    }

    /// One request at a time: the model already uses every core.
    fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()> {
        for (i, r) in requests.iter().enumerate() {
            if sink.cancelled() {
                return Err(GenError::Cancelled);
            }
            let result = self
                .template
                .render(&r.messages)
                .and_then(|prompt| self.encode_prompt(&prompt))
                .and_then(|ids| self.generate_ids(&ids, &r.sampling));
            if result.is_err() {
                self.stats.failed += 1;
            }
            sink.done(i, result);
            sink.flush()?;
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
