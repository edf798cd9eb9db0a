#!/usr/bin/env python3
"""Writes the architecture fixtures of `train/tests/hf_checkpoints.rs`.

For each architecture the trainer reads from Hugging Face checkpoints
(llama with Llama 3 RoPE scaling, GPT-2, OPT pre-norm, OPT post-norm with
project_in/out as in OPT-350M), a tiny randomly initialised model is built
with transformers and saved as a checkpoint folder (config.json +
model.safetensors + a character-level tokenizer.json; the OPT-350M-like one as
OPT's repositories are: pytorch_model.bin + vocab.json/merges.txt), together with a PEFT LoRA adapter on PEFT's default
target modules (B made non-zero so the adapter changes the output) and the
reference logits of both on fixed token ids. The Rust test loads the same
files and must reproduce the logits.

Setup: pip install torch transformers peft safetensors
Run:   python parity/make_fixtures.py   (rewrites train/tests/fixtures/)
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train", "tests", "fixtures")
VOCAB = 96


def models():
    yield "llama", LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8},
    ))
    yield "gpt2", GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
    ))
    yield "opt", OPTForCausalLM(OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32, do_layer_norm_before=True,
    ))
    yield "opt-postnorm", OPTForCausalLM(OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=16, do_layer_norm_before=False,
    ))


def byte_char(code):
    """GPT-2's byte-level alphabet: printable ASCII maps to itself, space to 'Ġ'."""
    return "\u0120" if code == 32 else chr(code)


def save_tokenizer(d, slow):
    """A byte-level tokenizer with no merges that fits the tiny vocabulary:
    specials <unk> <s> </s>, then the 93 characters from space to `|`. As
    tokenizer.json, or (`slow`, as OPT's repositories) vocab.json + merges.txt
    with a tokenizer_config.json asking for BOS."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, code in enumerate(range(32, 125)):
        vocab[byte_char(code)] = 3 + i
    assert len(vocab) == VOCAB
    config = {"eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}
    if slow:
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        config["add_bos_token"] = True
    else:
        tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<unk>", "<s>", "</s>"])
        tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 11), generator=gen)
    for name, model in models():
        model.eval()
        # Random init leaves norms at 1/0 and biases at 0: perturb them so a
        # wrong norm or a dropped bias shows.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        # opt-postnorm is laid out as OPT's hub repositories: PyTorch's pickle
        # and a slow tokenizer's files.
        slow = name == "opt-postnorm"
        for stale in ["model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.json", "merges.txt"]:
            if os.path.exists(os.path.join(d, stale)):
                os.remove(os.path.join(d, stale))
        if slow:
            torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
            model.config.save_pretrained(d)
        else:
            model.save_pretrained(d, safe_serialization=True)
        save_tokenizer(d, slow)
        with torch.no_grad():
            base = model(input_ids=ids).logits
        peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            adapted = peft_model(input_ids=ids).logits
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({
                "ids": ids.tolist(),
                "base_logits": base.flatten().tolist(),
                "adapter_logits": adapted.flatten().tolist(),
                "targets": sorted(peft_model.peft_config["default"].target_modules),
            }, f)
        print(name, "base logits[0,0,:3]", base[0, 0, :3].tolist())


def mpnet():
    """A tiny random MPNet (the architecture of all-mpnet-base-v2) for
    `stages/src/toolkit/encoder/tests.rs`: hidden states of a padded batch."""
    from transformers import MPNetConfig, MPNetModel
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stages", "src", "toolkit", "encoder", "mpnet-fixture")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    model = MPNetModel(MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=160), add_pooling_layer=False)
    model.eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        # Relative-position bias made large enough to matter.
        model.encoder.relative_attention_bias.weight.mul_(20)
    model.save_pretrained(d, safe_serialization=True)
    ids = torch.randint(3, VOCAB, (2, 140), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, 100:] = 1  # padding (pad_token_id 1)
    mask[1, 100:] = 0
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"ids": ids.tolist(), "mask": mask.tolist(), "hidden": hidden.flatten().tolist()}, f)
    print("mpnet hidden[0,0,:3]", hidden[0, 0, :3].tolist())


if __name__ == "__main__":
    main()
    mpnet()
