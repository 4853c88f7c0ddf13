"""LoRA fine-tuning speed and memory: tinytitan vs Hugging Face `Trainer` + PEFT, on the same rows.

Both train LoRA (rank 16, alpha 32, all attention and MLP projections) on the same ingredient rows
(../shared/data/ingredients, tastecooking), tokenized once by tinytitan's data pipeline (Gemma turn
format, canonical JSON targets, max length 128), for one pass over them:
- baseline: what a user gets today — `Trainer` with fp32 defaults, 16 rows per step padded to the
  longest, labels -100 on prompt and padding, the full LM head over every position;
- tinytitan: `tinytitan finetune` with its defaults: bf16 autocast and the full head where the CPU has bf16
  kernels, fp32 and the task's softmax (head_vocab auto, docs/finetune.md) with `--avx2`; the head only on
  completion positions, and length-bucketed batches of about the same tokens per step (batch_tokens 1024).
Each runs in its own process; tokens/s counts real (unpadded) tokens over the training loop (the
set-up before it, in `setup_seconds`), peak RSS is the process's. Targets: tinytitan >= 4x the
baseline's tokens/s, <= 0.6x its peak RSS. `--avx2` makes a bigger CPU an AVX2 laptop for both: fp32,
and torch, oneDNN and MKL held to AVX2 (`ISA_SWITCHES`); the JSON names the CPU and the switches.
The last line is one JSON document.

    python bench/finetune.py [--rows 320] [--threads 2] [--avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ingredients" / "tastecooking-ingredients-2024.csv"
RANK, ALPHA, MAX_LENGTH, ROWS_PER_STEP = 16, 32, 128, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ISA_SWITCHES = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu() -> dict:
    """This CPU's model name and its vector instruction sets (of /proc/cpuinfo's flags)."""
    info = {"model": "unknown", "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and info["model"] == "unknown":
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
            break
    return info


def write_rows(path: Path, rows: int) -> None:
    """The first `rows` usable ingredient rows as prompt/completion JSONL (completion: a JSON object)."""
    from tinytitan.data.rows import DataSpec, load_examples

    examples = load_examples(DATA, DataSpec()).examples[:rows]
    with open(path, "w") as file:
        for example in examples:
            file.write(json.dumps({"prompt": example.messages[-1].content,
                                   "completion": json.loads(example.completion)}) + "\n")


def baseline(data: Path, threads: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from tinytitan.train.config import FinetuneConfig
    from tinytitan.data.check import prepare_data
    from tinytitan.model.engines import peak_memory_mb
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer, load_torch_model

    torch.set_num_threads(threads)
    ref = resolve(None)
    config = FinetuneConfig(train=str(data), split=[1.0, 0.0, 0.0], max_length=MAX_LENGTH)
    rows = prepare_data(config, load_tokenizer(ref)).splits["train"]
    model = get_peft_model(load_torch_model(ref), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                             lora_dropout=0.0, task_type="CAUSAL_LM"))

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    def collate(batch):
        length = max(len(e.ids) for e in batch)
        ids = torch.zeros((len(batch), length), dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            labels[i, e.completion_start:len(e.ids)] = torch.tensor(e.ids[e.completion_start:])
            mask[i, :len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=ROWS_PER_STEP, num_train_epochs=1,
                                 learning_rate=2e-4, save_strategy="no", report_to=[], logging_steps=10**6,
                                 use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in rows)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "rows": len(rows),
            "steps": -(-len(rows) // ROWS_PER_STEP),
            "peak_rss_mb": peak_memory_mb()}


def tinytitan(data: Path, threads: int, precision: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        run = Path(out) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tinytitan", "finetune", "--train", str(data), "--split", "1,0,0",
                        "--max-length", str(MAX_LENGTH), "--lora-rank", str(RANK), "--lora-alpha", str(ALPHA),
                        "--epochs", "1", "--batch-tokens", "1024", "--learning-rate", "2e-4", "--precision", precision,
                        "--save-every", "100000", "--threads", str(threads), "--output", str(run), *extra],
                       check=True, stdout=subprocess.DEVNULL)
        process = time.perf_counter() - started
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_second" in r]
    tokens = steps[-1]["tokens"]
    seconds = sum((b["tokens"] - a) / b["tokens_per_second"] for a, b in zip([0] + [s["tokens"] for s in steps], steps))
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "steps": len(steps),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in steps), "process_seconds": round(process, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--avx2", action="store_true", help="fp32, torch/oneDNN/MKL held to AVX2 (ISA_SWITCHES)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a tinytitan finetune setting beyond its defaults (e.g. head_vocab=task)")
    parser.add_argument("--child", choices=("baseline",), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "baseline":
        print(json.dumps(baseline(Path(args.data), args.threads)))
        return
    if args.avx2:
        os.environ.update(ISA_SWITCHES)  # both children inherit them
    if any("=" not in item for item in args.set):
        parser.error("--set: expected KEY=VALUE, e.g. head_vocab=task")
    extra = [a for item in args.set for a in ("--" + item.split("=", 1)[0].replace("_", "-"), item.split("=", 1)[1])]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ingredients.jsonl"
        write_rows(data, args.rows)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--child", "baseline", "--data", str(data),
                                "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        base = {**json.loads(child.stdout.strip().splitlines()[-1]),
                "process_seconds": round(time.perf_counter() - started, 1)}
        ours = tinytitan(data, args.threads, "fp32" if args.avx2 else "auto", extra)
    speed = ours["tokens_per_second"] / base["tokens_per_second"]
    memory = ours["peak_rss_mb"] / base["peak_rss_mb"]
    print(f"baseline (HF Trainer + PEFT, fp32): {base['tokens_per_second']:.0f} tok/s, peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"tinytitan finetune:                 {ours['tokens_per_second']:.0f} tok/s, peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"speed {speed:.2f}x (target >= 4), memory {memory:.2f}x (target <= 0.6)")
    print(json.dumps({"bench": "finetune", "cpu": cpu(), "isa_switches": ISA_SWITCHES if args.avx2 else {},
                      "settings": args.set, "rows": args.rows, "threads": args.threads, "baseline": base,
                      "tinytitan": ours, "speed_ratio": speed, "rss_ratio": memory,
                      "pass": speed >= 4 and memory <= 0.6}))


if __name__ == "__main__":
    main()
