"""Perplexity: `tinytitan perplexity` (llama engine) vs native `llama-perplexity`, same file, one run.

Both score the first N chunks (default 100) of 512 tokens of WikiText-2 test with the same GGUF
and threads; the native tool is built from the llama.cpp source that llama-cpp-python vendors
(tinytitan/export/native_tools.py). Prints both perplexities, their relative difference, both wall times and
their ratio. The last line is one JSON document.

    python bench/perplexity_vs_native.py [--chunks 100] [--threads 2] [--model PATH] [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tinytitan.export.native_tools import find_tool

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def native(tool: Path, model: Path, text: Path, chunks: int, threads: int) -> dict:
    start = time.perf_counter()
    result = subprocess.run([str(tool), "-m", str(model), "-f", str(text), "-c", "512", "--chunks", str(chunks),
                             "-t", str(threads), "-tb", str(threads)], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    found = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", result.stdout + result.stderr)
    if not found:
        raise SystemExit("llama-perplexity printed no final estimate:\n" + result.stderr[-2000:])
    return {"perplexity": float(found[1]), "stderr": float(found[2]), "seconds": seconds}


def ours(model: Path, text: Path, chunks: int, threads: int) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tinytitan", "perplexity", str(text), "--model", str(model),
                             "--engine", "llama", "--chunks", str(chunks), "--threads", str(threads), "--json"],
                            capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {"perplexity": report["perplexity"], "stderr": report["stderr"], "seconds": seconds,
            "tokens_scored": report["tokens_scored"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded gemma-3-270m)")
    parser.add_argument("--file", default=str(WIKI))
    args = parser.parse_args()

    from tinytitan.model.registry import resolve

    model = resolve(args.model).path
    tool = find_tool("llama-perplexity")
    native_result = native(tool, model, Path(args.file), args.chunks, args.threads)
    ours_result = ours(model, Path(args.file), args.chunks, args.threads)
    diff = abs(ours_result["perplexity"] - native_result["perplexity"]) / native_result["perplexity"]
    time_ratio = ours_result["seconds"] / native_result["seconds"]
    print(f"native llama-perplexity: {native_result['perplexity']:.4f} +/- {native_result['stderr']:.4f} "
          f"in {native_result['seconds']:.1f} s")
    print(f"tinytitan perplexity:    {ours_result['perplexity']:.4f} +/- {ours_result['stderr']:.4f} "
          f"in {ours_result['seconds']:.1f} s ({ours_result['tokens_scored']} tokens)")
    print(f"difference {diff:.3%} (target <= 0.5%), time ratio {time_ratio:.2f}x (target <= 1.5x)")
    print(json.dumps({"bench": "perplexity_vs_native", "model": str(model), "chunks": args.chunks,
                      "threads": args.threads, "native": native_result, "tinytitan": ours_result,
                      "ppl_rel_diff": diff, "time_ratio": time_ratio,
                      "pass": diff <= 0.005 and time_ratio <= 1.5}))


if __name__ == "__main__":
    main()
