#!/usr/bin/env bash
# `make demo`: the main job on the embedded default model (Gemma 3 270M, Q4_K_M): the ingredients
# recipe, demo-sized. Data check -> LoRA fine-tune on 800 lines -> Q8_0 / Q4_K_M GGUFs and a GGUF
# adapter, each through the parity gate -> every artifact scored on 100 held-out lines (free and
# schema-constrained decoding) -> speed -> report -> the `tinytitan serve` line. About 12 minutes
# on 2 CPU cores; run it again and it says there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/tinytitan run recipes/ingredients.toml --output runs/ingredients-demo \
  --set task.max_train=800 --set finetune.epochs=2 --set finetune.eval_every=25 --set finetune.save_every=25 \
  --set export.quant=q8_0,q4_k_m --set export.gate_rows=32 --set eval.rows=100 --set report.bench_reps=1
