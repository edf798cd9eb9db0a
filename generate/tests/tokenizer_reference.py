"""Reference token ids for SmolLM2-135M-Instruct's GGUF tokenizer.

    pip install transformers gguf
    python generate/tests/tokenizer_reference.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf \
        > generate/tests/fixtures/smollm2_tokens.json

Uses transformers' GGUF tokenizer conversion (AutoTokenizer ... gguf_file=). Note: for the
`smollm` pre-tokenizer, llama.cpp and SmolLM2's own tokenizer.json split every digit apart
(Digits(individual_digits=True)); transformers' GGUF conversion does not, so texts here keep
to single digits, and the digit rule is tested separately in the Rust test.
"""
import json
import sys

import gguf
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

TEXTS = [
    "Once upon a time, a girl named Lily found a lost puppy in the park.",
    "Café, naïve façade — déjà vu! Größe, smørbrød, ¿qué tal?",
    "日本語のテキストと中文文本, and emoji 🎉🐍 too.",
    "  leading spaces\tand tabs\nnew lines\n\n  and trailing   ",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n",
    "It's a dog's life; they'll say we've won, I'm sure you'd agree.",
    "Q: Who wrote it?\nA: Tom, in 5 days.",
    "Привет, как дела? Γειά σου κόσμε. مرحبا بالعالم",
]

path = sys.argv[1]
# transformers' own GGUF loader (AutoTokenizer.from_pretrained(..., gguf_file=...)) imports
# torch for its metadata reader; the conversion itself does not, so the metadata is read
# here with the `gguf` package and handed to transformers' converter.
reader = gguf.GGUFReader(path)
tokenizer_dict = {}
for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
    field = reader.fields.get("tokenizer." + key)
    if field is not None:
        tokenizer_dict[name] = field.contents()
arch = reader.fields["general.architecture"].contents()
tok, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
out = []
for t in TEXTS:
    ids = tok.encode(t, add_special_tokens=False).ids
    out.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
print(json.dumps(out, ensure_ascii=False, indent=1))
