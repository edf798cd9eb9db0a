"""llama.cpp (llama-cpp-python) on the same GGUF, same protocol as the Rust example
`cargo run --release -p flow-generate --example bench -- 128 128`.

    pip install llama-cpp-python
    python generate/bench/llama_cpp_bench.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [PROMPT] [GEN] [THREADS] [REPEATS]

The prompt is processed REPEATS times (default 5) into an empty cache; the median is reported.
"""
import resource
import sys
import time

import numpy as np
from llama_cpp import Llama

path = sys.argv[1]
n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 128
n_gen = int(sys.argv[3]) if len(sys.argv) > 3 else 128
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
repeats = max(1, int(sys.argv[5]) if len(sys.argv) > 5 else 5)
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False)
text = ("Once upon a time, in a small village by the sea, there lived an old fisherman "
        "who told stories to the children every evening. ") * 16
ids = llm.tokenize(text.encode(), add_bos=False)[:n_prompt]
llm.eval(ids[:8])  # warm-up
times = []
for _ in range(repeats):
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    times.append(time.perf_counter() - t)
pp = sorted(times)[len(times) // 2]
nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t = time.perf_counter()
for _ in range(n_gen):
    llm.eval([nxt])
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
tg = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"llama.cpp: prompt {len(ids)} tok {len(ids)/pp:.1f} tok/s | gen {n_gen} tok "
      f"{n_gen/tg:.1f} tok/s | peak RSS {peak:.0f} MiB")
