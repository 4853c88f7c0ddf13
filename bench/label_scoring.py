"""PyTorch label scoring for classification: the prompt once with its cache shared by every label,
against a full right-padded pass per (prompt + label), side by side on the same rows.

This is what `tinytitan eval` does for each test row of a classification task on the PyTorch
artifact (77 candidate labels per banking77 message). Both ways must pick the same label for every
row and agree on the sums; the figure is seconds per row.

    python bench/label_scoring.py [--data FILE.jsonl] [--rows 20] [--threads N]

With `--artifacts A,B,...` (eval's names: `base+ADAPTER.gguf`, `TRIMMED.gguf+ADAPTER.gguf`...) it times
the same scoring on each artifact in llama.cpp instead, one after the other on the same rows, and says
how often they pick the same label: a task vocabulary (docs/pruning.md) against the full one.

The last line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prompt/completion JSONL of a classification task "
                                                     "(default: the banking77 recipe's test split, prepared)")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--artifacts", default=None, help="comma-separated artifacts to time in llama.cpp")
    args = parser.parse_args()
    if args.artifacts:
        return compare_artifacts(args)
    from tinytitan.model.chat_format import END_OF_TURN, encode_chat
    from tinytitan.model.engines import load_engine
    from tinytitan.data.rows import DataSpec
    from tinytitan.evaluate.scoring import load_rows

    data = args.data or _banking77_test()
    examples = load_rows(str(data), DataSpec())
    labels = sorted({e.completion for e in examples})
    engine = load_engine("torch", threads=args.threads)
    end = engine.token_id(END_OF_TURN)
    label_ids = [engine.tokenize(label) + [end] for label in labels]
    rows = examples[:args.rows]
    prompts = [encode_chat(engine, list(e.messages)) for e in rows]
    times = {"shared_prefix": 0.0, "padded": 0.0}
    picks = {"shared_prefix": [], "padded": []}
    largest_gap = 0.0
    for prompt in prompts:
        requests = [(prompt + ids, len(prompt)) for ids in label_ids]
        start = time.perf_counter()
        shared = engine.logprob_sums(requests)
        times["shared_prefix"] += time.perf_counter() - start
        start = time.perf_counter()
        padded = engine._sums_padded([(list(ids), first) for ids, first in requests], 16)
        times["padded"] += time.perf_counter() - start
        picks["shared_prefix"].append(int(np.argmax(shared)))
        picks["padded"].append(int(np.argmax(padded)))
        largest_gap = max(largest_gap, float(np.max(np.abs(np.array(shared) - np.array(padded)))))
    per_row = {k: v / len(prompts) for k, v in times.items()}
    same = picks["shared_prefix"] == picks["padded"]
    print(f"{len(prompts)} rows x {len(labels)} labels: shared prefix {per_row['shared_prefix']:.2f} s/row, "
          f"padded {per_row['padded']:.2f} s/row ({per_row['padded'] / per_row['shared_prefix']:.1f}x); "
          f"same label every row: {same}; largest |difference| of a sum {largest_gap:.2e}")
    print(json.dumps({"bench": "label_scoring", "data": str(data), "rows": len(prompts), "labels": len(labels),
                      "seconds_per_row": per_row, "speedup": per_row["padded"] / per_row["shared_prefix"],
                      "same_picks": same, "max_abs_difference": largest_gap}))


def compare_artifacts(args) -> None:
    from tinytitan.model.artifacts import parse_artifact
    from tinytitan.model.chat_format import END_OF_TURN, encode_chat
    from tinytitan.data.rows import DataSpec
    from tinytitan.evaluate.scoring import load_rows

    data = args.data or _banking77_test()
    examples = load_rows(str(data), DataSpec())
    labels = sorted({e.completion for e in examples})
    rows = examples[:args.rows]
    results = {}
    for spec in [a.strip() for a in args.artifacts.split(",") if a.strip()]:
        engine = parse_artifact(spec).open(threads=args.threads, n_ctx=512)
        end = engine.token_id(END_OF_TURN)
        label_ids = [engine.tokenize(label) + [end] for label in labels]
        prompts = [encode_chat(engine, list(e.messages)) for e in rows]
        engine.logprob_sums([(prompts[0] + ids, len(prompts[0])) for ids in label_ids])  # warm up
        start = time.perf_counter()
        picks = [labels[int(np.argmax(engine.logprob_sums([(p + ids, len(p)) for ids in label_ids])))] for p in prompts]
        seconds = time.perf_counter() - start
        engine.close()
        accuracy = sum(pick == e.completion for pick, e in zip(picks, rows)) / len(rows)
        results[spec] = {"seconds_per_row": seconds / len(rows), "accuracy": accuracy, "picks": picks,
                         "label_tokens": sum(len(ids) for ids in label_ids)}
        print(f"{spec}: {seconds / len(rows):.3f} s/row, accuracy {accuracy:.1%} on {len(rows)} rows",
              file=sys.stderr)
    first = next(iter(results.values()))
    summary = {spec: {k: v for k, v in r.items() if k != "picks"} | {
        "same_picks_as_first": sum(a == b for a, b in zip(r["picks"], first["picks"])) / len(rows),
        "speedup_vs_first": first["seconds_per_row"] / r["seconds_per_row"]} for spec, r in results.items()}
    print(json.dumps({"bench": "label_scoring", "engine": "llama", "data": str(data), "rows": len(rows),
                      "labels": len(labels), "threads": args.threads, "artifacts": summary}))


def _banking77_test() -> Path:
    """The banking77 recipe's test split as prompt/completion rows (prepared by the recipe's own code)."""
    prepared = Path("runs/banking77/data/test.jsonl")
    if prepared.is_file():
        return prepared
    raise SystemExit(f"{prepared} is missing: run `tinytitan run recipes/banking77.toml` first, or pass --data")


if __name__ == "__main__":
    main()
