//! LoRA fine-tuning and test-loss evaluation on candle, for `flow`'s
//! `train_lora` and `eval_loss` stages.
//!
//! - [`llama`]: the llama architecture with LoRA adapters (frozen base).
//! - [`gguf`]: loading weights and tokenizer from GGUF (q/k un-permuted).
//! - [`data`]: how an example becomes tokens and which tokens carry the loss.
//! - [`trainer`]: AdamW training loop, checkpoints, evaluation, PEFT format.
//! - [`ops`]: differentiable RMSNorm, RoPE, softmax, cross-entropy and a
//!   frozen-weight linear whose backward skips the weight gradient.

pub mod data;
pub mod gguf;
pub mod llama;
pub mod ops;
pub mod trainer;

pub use candle_core::Device;

/// The device to run on: CUDA when built with the `cuda` feature and a GPU
/// is present, else the CPU.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}
