#!/usr/bin/env bash
# `make demo`: the foundation's main job on the embedded default model (Gemma 3 270M, Q4_K_M).
# Until the recipes land (`tinytitan run`), this shows the two runtimes loading the same model,
# generating, and agreeing: info -> generate (llama.cpp) -> generate (PyTorch) -> parity -> perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
TT=.venv/bin/tinytitan
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 the model: tinytitan info"
$TT info

step "2/5 generation with llama.cpp: tinytitan generate --engine llama"
$TT generate "The three primary colors are" --max-tokens 40

step "3/5 the same prompt with PyTorch (the first run converts the GGUF for torch, about 30 s)"
$TT generate "The three primary colors are" --max-tokens 40 --engine torch

step "4/5 do the engines agree? tinytitan parity (gate: mean KL <= 0.01, top-1 >= 95%, perplexity within 1%)"
$TT parity --max-kl 0.01 --min-top1 0.95 --max-ppl-diff 0.01

step "5/5 perplexity of the bundled WikiText-2 excerpt (llama.cpp's convention)"
$TT perplexity tinytitan/assets/wikitext2_test_excerpt.txt

printf '\n\033[1mdemo finished.\033[0m Next: tinytitan chat, tinytitan generate --help, and the README.\n'
