//! In-process generation: a GGUF llama on the CPU ([`crate::cpu`]), many
//! requests at a time, candle's samplers.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as Strategy};
use flow_models::{Format, ResolvedModel};

use crate::chat::{ChatTemplate, CHATML};
use crate::cpu::{Cache, CpuLlama, Step};
use crate::{Completion, Finish, GenError, Generator, Request, Result, Sink, Stats};

/// Bump when a change here changes generated text: it is part of every journal key.
/// v2: block types without a SIMD kernel in candle are requantized to Q8_0.
/// v3: flow's own CPU llama (Q4_1 kept, f32 activation scales, f32 KV cache).
const IMPL: &str = "flow-generate/local/v3";

/// Requests generated together by default: one pass reads the weights once
/// for all of them (see `generate/examples/bench.rs` for the gain).
pub const DEFAULT_BATCH: usize = 8;

pub struct LocalGenerator {
    model: CpuLlama,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    /// Tokens that end the assistant's turn.
    eos: Vec<u32>,
    bos: Option<u32>,
    max_batch: usize,
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
        let path = &model.weights;
        // The header is checked before candle reads it, and the llama
        // hyperparameters against the tensors before anything is sized by them.
        let file_err = |e: flow_models::FileError| GenError::Model(e.into());
        let (mut file, content) = flow_models::open_gguf(path).map_err(file_err)?;
        if let Some(Ok(arch)) = content
            .metadata
            .get("general.architecture")
            .map(|v| v.to_string())
        {
            if arch == "llama" {
                flow_models::guard::check_llama_hparams(&content, path).map_err(file_err)?;
            }
        }
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
        let weights = CpuLlama::from_gguf(&content, &mut file)?;
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
            max_batch: DEFAULT_BATCH,
            identity: format!("{IMPL}:{weights_id}"),
            stats: Stats::default(),
        })
    }

    /// How many requests run together (at least 1).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
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

    /// One forward pass for `seqs` (their prompts, or the token each sampled
    /// last), after which each samples its next token. Returns its seconds.
    fn step(&self, seqs: &mut [Sequence], prefill: bool) -> Result<f64> {
        let t = Instant::now();
        let logits = {
            let mut steps: Vec<Step> = seqs
                .iter_mut()
                .map(|s| Step {
                    tokens: match prefill {
                        true => &s.prompt,
                        false => std::slice::from_ref(s.out.last().expect("a sampled token")),
                    },
                    cache: &mut s.cache,
                })
                .collect();
            self.model.forward(&mut steps)?
        };
        for (seq, l) in seqs.iter_mut().zip(logits) {
            seq.take(l, &self.eos, &self.tokenizer)?;
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// A request ready to be prefilled.
    fn start(&self, index: usize, r: &Request) -> Result<Sequence> {
        let prompt = self.encode_prompt(&self.template.render(&r.messages)?)?;
        let context = self.model.config().context;
        if prompt.is_empty() {
            return Err(GenError::Other("empty prompt".into()));
        }
        if prompt.len() >= context {
            return Err(GenError::Other(format!(
                "the prompt has {} tokens; the model takes at most {context}",
                prompt.len()
            )));
        }
        let s = &r.sampling;
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
        Ok(Sequence {
            index,
            max_new: s.max_tokens.min(context - prompt.len()),
            prompt,
            cache: Cache::default(),
            sampler: LogitsProcessor::from_sampling(s.seed, strategy),
            out: Vec::new(),
            stop: s.stop.clone(),
            text: String::new(),
            finish: None,
        })
    }
}

/// A request being generated.
struct Sequence {
    index: usize,
    prompt: Vec<u32>,
    cache: Cache,
    sampler: LogitsProcessor,
    /// Accepted tokens; the last one is the next pass's input.
    out: Vec<u32>,
    max_new: usize,
    stop: Vec<String>,
    /// The text up to a stop sequence, once one was produced.
    text: String,
    finish: Option<Finish>,
}

impl Sequence {
    /// Samples the next token from `logits` and decides whether it ends the
    /// sequence (the end-of-turn token, a stop sequence, the length limit).
    fn take(&mut self, logits: Vec<f32>, eos: &[u32], tok: &tokenizers::Tokenizer) -> Result<()> {
        if self.out.len() >= self.max_new {
            self.finish = Some(Finish::Length);
            return Ok(());
        }
        let n = logits.len();
        let next = Tensor::from_vec(logits, n, &Device::Cpu)
            .and_then(|l| self.sampler.sample(&l))
            .map_err(cerr)?;
        if eos.contains(&next) {
            self.finish = Some(Finish::Eos);
            return Ok(());
        }
        self.out.push(next);
        if !self.stop.is_empty() {
            let text = tok.decode(&self.out, false).map_err(GenError::other)?;
            if let Some(cut) = self
                .stop
                .iter()
                .filter_map(|st| text.find(st.as_str()))
                .min()
            {
                self.text = text[..cut].to_string();
                self.finish = Some(Finish::Stop);
                return Ok(());
            }
        }
        if self.out.len() >= self.max_new {
            self.finish = Some(Finish::Length);
        }
        Ok(())
    }

    fn completion(self, tok: &tokenizers::Tokenizer) -> Result<Completion> {
        let finish = self.finish.unwrap_or(Finish::Length);
        let text = match finish {
            Finish::Stop => self.text,
            _ => tok.decode(&self.out, false).map_err(GenError::other)?,
        };
        Ok(Completion {
            text,
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.out.len(),
            finish,
        })
    }
}

impl Generator for LocalGenerator {
    fn identity(&self) -> &str {
        &self.identity
    }

    /// Up to `max_batch` requests at once: new ones are prefilled together,
    /// then every active request adds one token per pass, and a finished one
    /// makes room for the next. A request's text does not depend on its
    /// neighbours (see `cpu`), only on its own prompt and sampling.
    fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()> {
        let mut queue = requests.iter().enumerate();
        let mut active: Vec<Sequence> = Vec::new();
        loop {
            if sink.cancelled() {
                return Err(GenError::Cancelled);
            }
            let mut fresh = Vec::new();
            while active.len() + fresh.len() < self.max_batch {
                let Some((i, r)) = queue.next() else { break };
                match self.start(i, r) {
                    Ok(seq) => fresh.push(seq),
                    Err(e) => {
                        self.stats.failed += 1;
                        sink.done(i, Err(e));
                        sink.flush()?;
                    }
                }
            }
            if !fresh.is_empty() {
                self.stats.prompt_secs += self.step(&mut fresh, true)?;
                self.stats.prompt_tokens +=
                    fresh.iter().map(|s| s.prompt.len() as u64).sum::<u64>();
                active.extend(fresh);
            }
            let mut i = 0;
            while i < active.len() {
                if active[i].finish.is_some() {
                    let seq = active.swap_remove(i);
                    let index = seq.index;
                    let result = seq.completion(&self.tokenizer);
                    self.stats.requests += 1;
                    sink.done(index, result);
                    sink.flush()?;
                } else {
                    i += 1;
                }
            }
            if active.is_empty() {
                if queue.len() == 0 {
                    return Ok(());
                }
                continue;
            }
            self.stats.completion_secs += self.step(&mut active, false)?;
            self.stats.completion_tokens += active.len() as u64;
        }
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
