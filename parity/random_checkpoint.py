#!/usr/bin/env python3
"""Writes a randomly initialised full-size Hugging Face checkpoint (GPT-2 124M
or OPT-125M) for `parity.py --hf`, where the hub is out of reach: training
speed depends only on the shapes, and forward/training parity on random
weights checks the architecture as well as real weights would.

The tokenizer is SmolLM2's (49,152 tokens, read from its GGUF by
transformers), which fits inside both vocabularies; its end token
`<|endoftext|>` ends each example.

Run: python parity/random_checkpoint.py --arch gpt2 --gguf SmolLM2.gguf --out /tmp/gpt2-random
"""

import argparse
import os

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["gpt2", "opt"], default="gpt2")
    p.add_argument("--gguf", required=True, help="the SmolLM2 GGUF (for its tokenizer)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.manual_seed(0)
    if a.arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config())  # the 124M configuration
    else:
        model = OPTForCausalLM(OPTConfig(hidden_size=768, ffn_dim=3072, num_hidden_layers=12,
                                         num_attention_heads=12, word_embed_proj_dim=768))
    model.save_pretrained(a.out, safe_serialization=True)
    gdir, gfile = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    tok.save_pretrained(a.out)
    print(f"{a.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {a.out}")


if __name__ == "__main__":
    main()
