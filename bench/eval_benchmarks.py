"""The base model on the standard benchmark files vs its published scores (Gemma 3 270M PT model card).

    python bench/eval_benchmarks.py                                  # PIQA, ARC-e, BoolQ 0-shot, full files
    python bench/eval_benchmarks.py --benchmarks hellaswag,winogrande --limit 1000

Each benchmark runs as `tinytitan eval base --benchmark NAME` (its default shots), timed from the
command line, so the time includes loading. Last line: one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT.parent / "shared" / "data" / "benchmarks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="piqa,arc_easy,boolq")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--model", default="base")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = []
    for name in args.benchmarks.split(","):
        command = [sys.executable, "-m", "tinytitan", "eval", args.model, "--benchmark", name,
                   "--benchmark-dir", str(FOLDER), "--threads", str(args.threads), "--json"]
        if args.limit:
            command += ["--limit", str(args.limit)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{name}: {done.stderr.strip()}")
        (found,) = json.loads(done.stdout)["benchmarks"]
        found.update(wall_seconds=round(wall, 1), gap=round(found["score"] - found["published"], 1))
        results.append(found)
        print(f"{name:<14} {found['shots']:>2}-shot {found['items']:>5} items  acc {found['acc']:.1f}  "
              f"acc_norm {found['acc_norm']:.1f}  headline {found['headline']} {found['score']:.1f} "
              f"(95% CI {found['ci95'][0]:.1f}-{found['ci95'][1]:.1f}) vs published {found['published']}  "
              f"gap {found['gap']:+.1f}  {wall:.0f} s", flush=True)
    print(json.dumps({"model": args.model, "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
