"""Train / val / test splits by a stable hash of each prompt: deterministic on every run and machine,
and the same prompt never lands in two splits (`leakage` counts the prompts that do anyway)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tinytitan.data.examples import Example
from tinytitan.errors import TinyTitanError


def stable_hash(text: str) -> bytes:
    """sha256 of the text: the same on every run and machine, unlike `hash()`."""
    return hashlib.sha256(text.encode()).digest()


def hash_split(text: str, ratios: Sequence[float]) -> str:
    """train / val / test for `text`: its stable hash as a fraction in [0, 1), cut at the (train, val, test)
    shares. The one split hash; each caller spells the text it hashes (seed and key) as it always has."""
    u = int.from_bytes(stable_hash(text)[:8], "big") / 2**64
    train, val = ratios[0], ratios[0] + ratios[1]
    return "train" if u < train else "val" if u < val else "test"


def split_of(example: Example, ratios: Sequence[float], seed: int = 0) -> str:
    """train / val / test by a hash of the prompt: deterministic, and equal prompts stay together."""
    return hash_split(f"{seed}\0{example.key}", ratios)


def split_examples(examples: list[Example], ratios: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> dict[str, list[Example]]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise TinyTitanError(f"split must be three fractions for train, val, test that sum to 1, not {list(ratios)}")
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for example in examples:
        splits[split_of(example, ratios, seed)].append(example)
    return splits


def leakage(splits: dict[str, list[Example]]) -> dict[str, int]:
    """How many prompts of each later split also appear in an earlier one ("train/test": 3)."""
    names = [n for n in ("train", "val", "test") if splits.get(n)]
    keys = {n: {e.key for e in splits[n]} for n in names}
    return {f"{a}/{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1:]
            if keys[a] & keys[b]}
