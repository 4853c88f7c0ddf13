"""Where a fine-tuning step's time goes: the block stack's forward and backward, the LM head, the optimizer.

LoRA r16 (bench/finetune.py's settings) on the first `--rows` ingredient rows, tinytitan's batch plan
(batch_tokens 1024), one pass; each phase timed on its own (the LM head's forward computes its
gradient too, so "head" is the whole of it). `--precision fp32` with the instruction-set switches in the
environment (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2) is an
AVX2 laptop on a CPU that has more; the JSON names the CPU and the switches. `--ops N`: the N costliest
operators of three steps under torch.profiler. The last line is one JSON document.

    python bench/finetune_profile.py [--rows 320] [--precision auto|fp32|bf16] [--ops 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.finetune import ALPHA, ISA_SWITCHES, MAX_LENGTH, RANK, cpu, write_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: one pass)")
    parser.add_argument("--ops", type=int, default=0, help="list the N costliest operators of three steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a FinetuneConfig key to change (e.g. train_layers=9)")
    args = parser.parse_args()

    import torch

    from tinytitan.data.check import prepare_data
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer
    from tinytitan.train.batching import collate, loss_tokens, plan_epoch, real_tokens
    from tinytitan.train.config import FinetuneConfig, coerce_setting
    from tinytitan.train.head import head_rows_for
    from tinytitan.train.loss import chunked_head_loss, completion_positions
    from tinytitan.train.training import CompletionLoss, build_model, causal_lm, use_bf16

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, args.rows)
        extra = {}
        for item in args.set:
            key, value = item.split("=", 1)
            extra[key] = coerce_setting(key, value, f"--set {key}")
        config = FinetuneConfig(train=str(data), split=[1.0, 0.0, 0.0], max_length=MAX_LENGTH, lora_rank=RANK,
                                lora_alpha=ALPHA, batch_tokens=1024, precision=args.precision, **extra)
        ref = resolve(None)
        tokenizer = load_tokenizer(ref)
        rows = prepare_data(config, tokenizer).splits["train"]
    bf16 = use_bf16(config.precision)
    model = build_model(ref, config, torch.device("cpu"))
    head_rows = head_rows_for(config, model, rows, bf16, announce=True)
    loss_module = CompletionLoss(model, bf16=bf16, head_chunk=config.head_chunk, head_rows=head_rows)
    lm = causal_lm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    plan = plan_epoch(rows, config.batch_tokens, config.max_length, config.seed, 0)
    if args.steps:
        plan = plan[:args.steps]
    pad = tokenizer.token_id("<pad>") or 0
    phases = {"data": 0.0, "blocks_forward": 0.0, "head": 0.0, "blocks_backward": 0.0, "optimizer": 0.0}

    def step(batch) -> None:
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            phases[name] += now - clock
            clock = now

        ids, attention, mask = collate(rows, batch, pad)
        lap("data")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = lm.model(input_ids=ids, attention_mask=attention).last_hidden_state
        lap("blocks_forward")
        predicts, targets = completion_positions(ids, mask)
        selected = hidden[predicts]
        head_input = selected.detach().requires_grad_(True)
        if head_rows is not None:
            targets = loss_module.head_index[targets]
        loss = chunked_head_loss(head_input, loss_module.head(lm.lm_head.weight, head_rows is not None), targets,
                                 chunk=config.head_chunk,
                                 bf16=bf16, softcap=lm.config.final_logit_softcapping)
        (loss / max(loss_tokens(rows, batch), 1)).backward()
        lap("head")
        selected.backward(head_input.grad)
        lap("blocks_backward")
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lap("optimizer")

    step(plan[0])  # warm-up: first shapes, allocations
    for key in phases:
        phases[key] = 0.0
    started = time.perf_counter()
    for batch in plan[1:]:
        step(batch)
    seconds = time.perf_counter() - started
    measured = dict(phases)  # (the profiled steps below add to `phases`)
    tokens = sum(real_tokens(rows, b) for b in plan[1:])
    completion = sum(loss_tokens(rows, b) for b in plan[1:])
    ops = []
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in plan[1:4]:
                step(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops)
        print(table)
        ops = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count}
               for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.ops]]
    for name, value in measured.items():
        print(f"{name:16s} {value:7.1f} s  {100 * value / seconds:5.1f}%")
    print(f"{tokens / seconds:.1f} tokens/s ({completion} of {tokens} tokens scored), {'bf16' if bf16 else 'fp32'}")
    print(json.dumps({"bench": "finetune_profile", "cpu": cpu(), "threads": args.threads,
                      "precision": "bf16" if bf16 else "fp32", "isa_switches": {k: os.environ[k] for k in ISA_SWITCHES
                                                                               if k in os.environ},
                      "settings": extra, "rows": len(rows), "steps": len(plan) - 1, "tokens": tokens,
                      "completion_tokens": completion, "seconds": round(seconds, 2),
                      "tokens_per_second": round(tokens / seconds, 1),
                      "phases_s": {k: round(v, 2) for k, v in measured.items()}, "top_ops": ops}))


if __name__ == "__main__":
    main()
