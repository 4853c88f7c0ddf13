"""Standard multiple-choice benchmarks scored by log-likelihood, as lm-evaluation-harness does.

Files (in `--benchmark-dir`, the layout of ../shared/data/benchmarks):
- `piqa.jsonl`, `arc_easy.jsonl`, `arc_challenge.jsonl`, `boolq.jsonl`: llm-foundry's
  `{"query", "choices", "gold"}` rows. The context is the query + "\\nAnswer:", each choice a
  continuation " " + choice (the harness's prompts for these tasks).
- `winogrande.jsonl`: `{"context_options", "continuation", "gold"}`: the harness's partial
  scoring, the same continuation after each option.
- `hellaswag_val_full.txt[.bz2]`: llama.cpp's text format, 6 lines per item (context, gold index,
  4 endings).

Each item scores every choice's continuation log-likelihood; `acc` takes the largest, `acc_norm`
the largest per character of the continuation. n-shot examples are drawn once per benchmark (fixed
seed) from its own file and left out of the scored items (the files hold one split only), so every
item shares the same few-shot prefix: the llama engine decodes that prefix once and each item only
adds its own tokens (`Engine.logprob_sums`).
"""

from __future__ import annotations

import bz2
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytitan.errors import TinyTitanError
from tinytitan.evaluate.metrics import bootstrap_ci, choose

# name -> (file, default shots, the headline metric, the published Gemma 3 270M (pretrained) score)
BENCHMARKS = {
    "piqa": ("piqa.jsonl", 0, "acc_norm", 67.7),
    "arc_easy": ("arc_easy.jsonl", 0, "acc_norm", 57.7),
    "arc_challenge": ("arc_challenge.jsonl", 25, "acc_norm", 29.0),
    "boolq": ("boolq.jsonl", 0, "acc", 61.4),
    "winogrande": ("winogrande.jsonl", 5, "acc", 52.0),
    "hellaswag": ("hellaswag_val_full.txt", 10, "acc_norm", 40.9),
}


@dataclass(frozen=True)
class Item:
    contexts: tuple[str, ...]  # one per choice (winogrande), or one shared by all
    continuations: tuple[str, ...]  # one per choice, or one shared by all contexts
    gold: int
    source: str

    @property
    def n_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def pair(self, choice: int) -> tuple[str, str]:
        context = self.contexts[choice if len(self.contexts) > 1 else 0]
        return context, self.continuations[choice if len(self.continuations) > 1 else 0]


def parse_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise TinyTitanError(f"--benchmark: unknown {', '.join(unknown) or '(none given)'} "
                             f"(expected a comma-separated list of: {', '.join(BENCHMARKS)})")
    return names


def load_items(name: str, folder: Path) -> list[Item]:
    path = folder / BENCHMARKS[name][0]
    if name == "hellaswag" and not path.exists() and path.with_suffix(".txt.bz2").exists():
        path = path.with_suffix(".txt.bz2")
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such file (the {name} benchmark; point --benchmark-dir at the folder "
                             f"that holds {BENCHMARKS[name][0]})")
    if name == "hellaswag":
        return _hellaswag(path)
    items = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            raise TinyTitanError(f"{where}: not a JSON object") from None
        items.append(_winogrande(row, where) if name == "winogrande" else _multiple_choice(row, where))
    if not items:
        raise TinyTitanError(f"{path}: no items")
    return items


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".bz2":
        try:
            raw = bz2.decompress(raw)
        except (OSError, ValueError):
            raise TinyTitanError(f"{path}: not a readable bzip2 file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TinyTitanError(f"{path}: not UTF-8 text") from None


def _multiple_choice(row, where: str) -> Item:
    choices, gold, query = row.get("choices"), row.get("gold"), row.get("query") if isinstance(row, dict) else None
    if not isinstance(query, str) or not isinstance(choices, list) or len(choices) < 2 \
            or not all(isinstance(c, str) for c in choices) or not isinstance(gold, int) \
            or not 0 <= gold < len(choices):
        raise TinyTitanError(f'{where}: expected {{"query": text, "choices": [2+ texts], "gold": index}}')
    return Item((query.rstrip("\n") + "\nAnswer:",), tuple(" " + c for c in choices), gold, where)


def _winogrande(row, where: str) -> Item:
    options, continuation, gold = (row.get(k) for k in ("context_options", "continuation", "gold")) \
        if isinstance(row, dict) else (None, None, None)
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options) \
            or not isinstance(continuation, str) or not isinstance(gold, int) or not 0 <= gold < len(options):
        raise TinyTitanError(f'{where}: expected {{"context_options": [2+ texts], "continuation": text, '
                             f'"gold": index}}')
    return Item(tuple(options), (" " + continuation,), gold, where)


def _hellaswag(path: Path) -> list[Item]:
    lines = _text(path).splitlines()
    if len(lines) % 6 or not lines:
        raise TinyTitanError(f"{path}: expected 6 lines per item (context, gold index, 4 endings), "
                             f"got {len(lines)} lines")
    items = []
    for start in range(0, len(lines), 6):
        context, gold, *endings = lines[start:start + 6]
        if not gold.strip().isdigit() or int(gold) > 3:
            raise TinyTitanError(f"{path}:{start + 2}: the gold index must be 0-3, not {gold!r}")
        items.append(Item((context,), tuple(" " + e for e in endings), int(gold), f"{path}:{start + 1}"))
    return items


def split_shots(items: list[Item], shots: int, seed: int = 1234) -> tuple[list[Item], list[Item]]:
    """`(few-shot examples, items to score)`: the examples are drawn once and not scored."""
    if shots <= 0:
        return [], items
    if shots >= len(items):
        raise TinyTitanError(f"{shots} shots need more than the file's {len(items)} items")
    chosen = set(random.Random(seed).sample(range(len(items)), shots))
    return [items[i] for i in sorted(chosen)], [item for i, item in enumerate(items) if i not in chosen]


def few_shot_prefix(shots: list[Item]) -> str:
    """Each example as context + its gold continuation, separated by blank lines (the harness's way)."""
    return "".join("".join(shot.pair(shot.gold)) + "\n\n" for shot in shots)


def requests_for(engine, prefix: str, item: Item) -> list[tuple[list[int], int]]:
    """One `(ids, first scored index)` per choice. As in the harness, the context's tokens are those
    of the context alone and the continuation's are the rest of the joint tokenization."""
    requests = []
    for choice in range(item.n_choices):
        context, continuation = item.pair(choice)
        context_ids = engine.tokenize(prefix + context, bos=True)
        whole = engine.tokenize(prefix + context + continuation, bos=True)
        if whole[:len(context_ids)] != context_ids or len(whole) == len(context_ids):
            whole = context_ids + engine.tokenize(continuation)
        requests.append((whole, len(context_ids)))
    return requests


def run_benchmark(engine, name: str, folder: Path, shots: int | None = None, limit: int | None = None,
                  seed: int = 1234, on_item=None) -> dict:
    file, default_shots, headline, published = BENCHMARKS[name]
    shots = default_shots if shots is None else shots
    every = load_items(name, folder)
    examples, items = split_shots(every, shots, seed)
    if limit:
        items = items[:limit]
    prefix = few_shot_prefix(examples)
    acc, acc_norm = [], []
    started = time.perf_counter()
    for done, item in enumerate(items, start=1):
        logliks = engine.logprob_sums(requests_for(engine, prefix, item))
        texts = [item.pair(c)[1] for c in range(item.n_choices)]
        raw, normed = choose(logliks, texts)
        acc.append(float(raw == item.gold))
        acc_norm.append(float(normed == item.gold))
        if on_item:
            on_item(done, len(items))
    seconds = time.perf_counter() - started
    scores = {"acc": acc, "acc_norm": acc_norm}
    low, high = bootstrap_ci(scores[headline])
    return {
        "benchmark": name, "shots": shots, "items": len(items), "file_items": len(every),
        "acc": 100 * float(np.mean(acc)), "acc_norm": 100 * float(np.mean(acc_norm)),
        "headline": headline, "score": 100 * float(np.mean(scores[headline])), "ci95": [100 * low, 100 * high],
        "published": published, "seconds": round(seconds, 1),
    }
