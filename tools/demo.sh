#!/usr/bin/env bash
# `make demo`: the main job on the embedded default model (Gemma 3 270M, Q4_K_M): the ingredients
# recipe, demo-sized. Data check -> LoRA fine-tune on 800 lines -> a Q8_0 GGUF and a GGUF adapter for
# the unchanged Q4_K_M base, and copies of both in the task's vocabulary (docs/pruning.md), each through
# the parity gate -> every artifact scored on 80 held-out lines
# (free and schema-constrained decoding) against the untuned base -> speed -> report -> the
# `tinytitan serve` line. About 13 minutes on 2 CPU cores after set-up; run it again and it says there is nothing to do.
# The full recipe: tinytitan run recipes/ingredients.toml
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/tinytitan run recipes/ingredients.toml --output runs/ingredients-demo \
  --set task.max_train=800 --set task.max_val=100 \
  --set finetune.epochs=2 --set finetune.lora_rank=16 --set finetune.lora_alpha=32 --set finetune.learning_rate=6e-4 \
  --set finetune.eval_every=30 --set finetune.save_every=30 \
  --set export.quant=q8_0 --set export.gate_rows=32 --set eval.rows=80 --set report.bench_reps=1
