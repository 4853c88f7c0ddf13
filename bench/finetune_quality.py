"""Does LoRA fine-tuning on a CPU make a specialist? Ingredient line -> JSON record, end to end.

Takes the tastecooking ingredient rows (../shared/data/ingredients, MIT), splits them by hash of the
input, fine-tunes LoRA on 2,000 training rows (validation on 200, early stopping, best checkpoint
kept) with `tinytitan finetune`, then decodes 300 held-out rows greedily with the torch engine
(the run's best adapter merged into the base) and counts exact-match records (the parsed JSON
equals the reference, all 7 fields). Target: >= 80%. The last line is one JSON document.

    python bench/finetune_quality.py [--train-rows 2000] [--test-rows 300] [--output runs/ingredients-lora]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ingredients" / "tastecooking-ingredients-2024.csv"


def write_split(path: Path, examples) -> None:
    with open(path, "w") as file:
        for example in examples:
            file.write(json.dumps({"prompt": example.messages[-1].content,
                                   "completion": json.loads(example.completion)}, ensure_ascii=False) + "\n")


def exact_match(outputs: list[str], references: list[str]) -> tuple[float, float, list[dict]]:
    valid = exact = 0
    misses = []
    for output, reference in zip(outputs, references):
        try:
            record = json.loads(output)
            valid += 1
        except ValueError:
            record = None
        if record == json.loads(reference):
            exact += 1
        elif len(misses) < 10:
            misses.append({"output": output, "reference": reference})
    return exact / len(references), valid / len(references), misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--val-rows", type=int, default=200)
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--output", default=str(ROOT / "runs" / "ingredients-lora"))
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--learning-rate", default="3e-4")
    parser.add_argument("--lora-rank", default="16")
    args = parser.parse_args()

    from tinytitan.model.chat_format import encode_chat
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.data.splits import split_examples
    from tinytitan.model.engines.torch import TorchEngine
    from tinytitan.model.runs import load_run_model

    splits = split_examples(load_examples(DATA, DataSpec()).examples, (0.8, 0.1, 0.1), seed=0)
    train, val, test = (splits["train"][:args.train_rows], splits["val"][:args.val_rows],
                        splits["test"][:args.test_rows])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, examples in (("train", train), ("val", val), ("test", test)):
        files[name] = output.parent / f"{output.name}-{name}.jsonl"
        write_split(files[name], examples)

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tinytitan", "finetune", "--train", str(files["train"]),
                    "--val", str(files["val"]), "--output", str(output), "--max-length", "128",
                    "--epochs", args.epochs, "--learning-rate", args.learning_rate, "--lora-rank", args.lora_rank,
                    "--lora-alpha", str(2 * int(args.lora_rank)), "--eval-every", "40", "--early-stopping", "3",
                    "--save-every", "40"], check=True)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ref, model = load_run_model(output, "best")
    engine = TorchEngine(ref, model=model)
    prompts = [encode_chat(engine, example.messages) for example in test]
    outputs = engine.generate_greedy_batch(prompts, max_tokens=96, bf16=True)
    eval_seconds = time.perf_counter() - start
    score, valid, misses = exact_match(outputs, [e.completion for e in test])
    best = json.loads((output / "best" / "tinytitan.json").read_text())
    print(f"trained on {len(train)} rows in {train_seconds / 60:.1f} min; best step {best['step']} "
          f"(val loss {best.get('val_loss', float('nan')):.4f})")
    print(f"exact-match records on {len(test)} held-out rows: {score:.1%} (valid JSON {valid:.1%}); "
          f"decoded in {eval_seconds:.0f} s with the torch engine")
    for miss in misses[:5]:
        print(f"  miss: {miss['output']}\n    ref: {miss['reference']}")
    print(json.dumps({"bench": "finetune_quality", "train_rows": len(train), "val_rows": len(val),
                      "test_rows": len(test), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                      "best_step": best["step"], "best_val_loss": best.get("val_loss"), "exact_match": score,
                      "json_valid": valid, "run": str(output), "pass": score >= 0.8}))


if __name__ == "__main__":
    main()
