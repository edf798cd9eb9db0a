#!/usr/bin/env python3
"""Straightforward Python Distinct-n over every ROCStories story.

The baseline for `cargo bench -p flow-stages --bench distinct`: same data,
same definition as flow's `score` stage (lowercase, split on whitespace,
n-grams within each story's input + target, never across stories), written
the obvious way: a list of n-gram tuples per story, one set.

Prints one JSON object: value, unique, total and the median compute time in
seconds over --runs runs (loading the JSON file is not timed).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def load(data_dir):
    pairs = []
    with open(Path(data_dir) / "rocstories" / "stories.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                sentences = json.loads(line)["sentences"]
                pairs.append((" ".join(sentences[:4]), sentences[4]))
    return pairs


def distinct(pairs, n):
    seen = set()
    total = 0
    for inp, tgt in pairs:
        tokens = (inp + " " + tgt).lower().split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen), total


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="data dir (layout of shared/data)")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pairs = load(args.data)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        unique, total = distinct(pairs, args.n)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "examples": len(pairs),
                "n": args.n,
                "unique": unique,
                "total": total,
                "value": unique / total if total else 0.0,
                "seconds": statistics.median(times),
                "runs": times,
                "python": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
