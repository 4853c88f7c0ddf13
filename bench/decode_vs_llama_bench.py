"""Decode speed: `tinytitan generate --engine llama` vs native `llama-bench` tg128, same file and threads.

Native llama-bench is built from the llama.cpp source that llama-cpp-python vendors
(tinytitan/export/native_tools.py). Rounds alternate native and ours, so machine noise hits both; the report
gives the median of each and their ratio (target >= 0.9). Our figure is the `generation_tps`
that `tinytitan generate --json` reports: decode steps per second after the first token, with
sampling, detokenization and stop handling included. The last line is one JSON document.

    python bench/decode_vs_llama_bench.py [--rounds 5] [--threads 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tinytitan.export.native_tools import find_tool

# a base model keeps writing after this for well over 128 tokens
PROMPT = "Chapter 1\n\nThe old lighthouse keeper had lived on the island for forty years, and every night he"


def native_tg128(tool: Path, model: Path, threads: int) -> float:
    result = subprocess.run([str(tool), "-m", str(model), "-p", "0", "-n", "128", "-t", str(threads),
                             "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    runs = json.loads(result.stdout)
    return float(runs[0]["avg_ts"])


def ours(model: Path, threads: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "tinytitan", "generate", PROMPT, "--model", str(model),
                             "--engine", "llama", "-n", "128", "--threads", str(threads), "--json"],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded gemma-3-270m)")
    args = parser.parse_args()

    from tinytitan.model.registry import resolve

    model = resolve(args.model).path
    tool = find_tool("llama-bench")
    native, mine, tokens = [], [], []
    for round_ in range(1, args.rounds + 1):
        native.append(native_tg128(tool, model, args.threads))
        run = ours(model, args.threads)
        mine.append(run["generation_tps"])
        tokens.append(run["generation_tokens"])
        print(f"round {round_}: llama-bench tg128 {native[-1]:.1f} tok/s, tinytitan generate "
              f"{mine[-1]:.1f} tok/s ({run['generation_tokens']} tokens)")
    native_median, ours_median = statistics.median(native), statistics.median(mine)
    ratio = ours_median / native_median
    print(f"median: llama-bench {native_median:.1f} tok/s, tinytitan {ours_median:.1f} tok/s, "
          f"ratio {ratio:.3f} (target >= 0.9)")
    print(json.dumps({"bench": "decode_vs_llama_bench", "model": str(model), "threads": args.threads,
                      "rounds": args.rounds, "native_tg128_tps": native, "tinytitan_tps": mine,
                      "tinytitan_tokens": tokens, "native_median": native_median, "tinytitan_median": ours_median,
                      "ratio": ratio, "pass": ratio >= 0.9 and min(tokens) >= 64}))


if __name__ == "__main__":
    main()
