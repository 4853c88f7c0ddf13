"""Fine-tuning in the task vocabulary vs the full one: tokens/s and peak memory on the same rows.

Both fine-tune LoRA (rank 16, alpha 32) with `tinytitan finetune` on the first `--rows` usable
ingredient rows (../shared/data/ingredients, tastecooking), max length 128, one pass, batch_tokens
1024, each in its own process:
- full: the embedded Gemma 3 270M (262,144 tokens; the tied LM head is 640 x 262,144);
- task: the same GGUF trimmed to these rows' task vocabulary (`tinytitan.shrink.vocabulary.run_keep_set`,
  with the default 4,000 most frequent tokens of general English), and the 1,024 dropped rows kept in
  the training softmax (`head_negatives`), as `[vocab] trim = "train"` does; the time to make both is
  reported beside.
The two alternate (full, task, full, task, ...) `--repeats` times so drift on a shared machine
hits both; the figures are the medians. Target: task >= 1.5x full's tokens/s.
The last line is one JSON document.

    python bench/vocab.py [--rows 320] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import ALPHA, MAX_LENGTH, RANK, write_rows  # noqa: E402


def finetune(model: str, data: Path, threads: int, negatives: str = "") -> dict:
    with tempfile.TemporaryDirectory() as out:
        run = Path(out) / "run"
        subprocess.run([sys.executable, "-m", "tinytitan", "finetune", "--model", model, "--train", str(data),
                        "--head-negatives", negatives,
                        "--split", "1,0,0", "--max-length", str(MAX_LENGTH), "--lora-rank", str(RANK),
                        "--lora-alpha", str(ALPHA), "--epochs", "1", "--batch-tokens", "1024",
                        "--learning-rate", "2e-4", "--save-every", "100000", "--threads", str(threads),
                        "--output", str(run)], check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_second" in r]
    tokens = steps[-1]["tokens"]
    seconds = sum((b["tokens"] - a) / b["tokens_per_second"] for a, b in zip([0] + [s["tokens"] for s in steps], steps))
    return {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_second": tokens / seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in steps), "final_loss": steps[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from tinytitan.train.config import FinetuneConfig
    from tinytitan.model.registry import resolve
    import numpy as np

    from tinytitan.shrink.vocabulary import Vocab, describe, head_negatives, run_keep_set, trim_gguf

    with tempfile.TemporaryDirectory() as tmp:
        data, trimmed, negatives = (Path(tmp) / name for name in ("ingredients.jsonl", "base-task.gguf", "neg.npy"))
        write_rows(data, args.rows)
        ref = resolve(None)
        vocab = Vocab.from_gguf(ref.gguf)
        started = time.perf_counter()
        config = FinetuneConfig(train=str(data), split=[1.0, 0.0, 0.0], max_length=MAX_LENGTH)
        keep = run_keep_set(config, vocab)
        rows, about = head_negatives(config, keep, 1024)
        np.save(negatives, rows.numpy())
        trim = {**trim_gguf(ref.path, keep, trimmed), **describe(keep, vocab), **about,
                "seconds": round(time.perf_counter() - started, 1)}
        runs: dict[str, list[dict]] = {"full": [], "task": []}
        for _ in range(args.repeats):
            runs["full"].append(finetune("gemma-3-270m", data, args.threads))
            runs["task"].append(finetune(str(trimmed), data, args.threads, str(negatives)))
    median = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
              for name, results in runs.items()}
    speed = median["task"]["tokens_per_second"] / median["full"]["tokens_per_second"]
    memory = median["task"]["peak_rss_mb"] / median["full"]["peak_rss_mb"]
    for name in ("full", "task"):
        m = median[name]
        each = ", ".join(f"{r['tokens_per_second']:.0f}" for r in runs[name])
        print(f"{name} vocabulary: {m['tokens_per_second']:.0f} tok/s, peak RSS {m['peak_rss_mb']:.0f} MB, "
              f"final loss {m['final_loss']:.3f} (runs: {each})")
    print(f"kept {trim['kept']:,} of {trim['of']:,} tokens in {trim['seconds']} s; speed {speed:.2f}x (target >= 1.5), "
          f"memory {memory:.2f}x")
    print(json.dumps({"bench": "vocab", "rows": args.rows, "threads": args.threads, "repeats": args.repeats,
                      "cpu": _cpu(), "trim": trim, "runs": runs, "median": median, "speed_ratio": speed,
                      "rss_ratio": memory, "pass": speed >= 1.5}))


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
