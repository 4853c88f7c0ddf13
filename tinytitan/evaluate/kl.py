"""KL divergence of an artifact against a reference model, with the reference cached in top-k form.

A full next-token distribution is 262,144 floats (512 KiB per token in fp16); the cache keeps, per
scored position, the reference's `k` most likely token ids and their log-probabilities (plus the
log of the mass left over). KL(reference || artifact) is then computed over k + 1 outcomes: the
top-k tokens and "everything else". Merging outcomes never increases a KL divergence, so the
figure is a close lower bound: at k = 64 the leftover mass of a 270M model's prediction is small
(reported as `rest_mass`). Cache files live under `$TINYTITAN_HOME/kl/`, named by a hash of the
reference's identity and the exact token sequences, so a changed model or prompt never reuses one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tinytitan.files import atomic_file

TOP_K = 64


def cache_path(reference_id: str, sequences: Sequence[tuple[Sequence[int], int]], k: int = TOP_K,
               dtype: str = "float32") -> Path:
    from tinytitan.model.registry import home

    kind = [k] if dtype == "float32" else [k, dtype]  # (float32 caches were written before dtype was a choice)
    digest = hashlib.sha256(json.dumps([reference_id, *kind, [[list(ids), first] for ids, first in sequences]])
                            .encode()).hexdigest()[:24]
    return home() / "kl" / f"{digest}.npz"


def reference_topk(engine, sequences: Sequence[tuple[Sequence[int], int]], reference_id: str,
                   k: int = TOP_K, on_row=None, dtype: str = "float32") -> dict[str, np.ndarray]:
    """`{"ids": [positions, k] int32, "logp": [positions, k] float32, "rows": [n] int64}` of the
    reference at the positions predicting ids[first:] of each sequence; from the cache when there.
    `dtype`: the log-probs' (float16 halves the cache; a distillation teacher's needs no more)."""
    path = cache_path(reference_id, sequences, k, dtype)
    if path.exists():
        with np.load(path) as cached:
            return {name: cached[name] for name in cached.files}
    ids_out, logp_out, rows = [], [], []
    for index, (ids, first) in enumerate(sequences):
        logp = torch.log_softmax(torch.from_numpy(engine.score(list(ids)[:-1], first - 1)), dim=-1)
        top = torch.topk(logp, k, dim=-1)
        # numpy copies: keeping the small torch results themselves pinned ~2.5 MB of freed heap per row (measured:
        # 16.7 GB resident after the 5,042 ingredients rows; flat with copies)
        ids_out.append(np.array(top.indices.numpy(), dtype=np.int32))
        logp_out.append(np.array(top.values.numpy(), dtype=dtype))
        rows.append(len(logp))
        if on_row:
            on_row(index + 1, len(sequences))
    data = {"ids": np.concatenate(ids_out), "logp": np.concatenate(logp_out), "rows": np.array(rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            np.savez_compressed(file, **data)

    atomic_file(path, write)
    return data


class KLAgainst:
    """Accumulates KL(reference || model) row by row, from the model's log-probs at the same positions."""

    def __init__(self, reference: dict[str, np.ndarray]):
        self.reference = reference
        self.starts = np.concatenate([[0], np.cumsum(reference["rows"])])
        self.kls: list[float] = []
        self.top1: list[bool] = []
        self.rest: list[float] = []

    def add(self, row: int, logp: torch.Tensor) -> None:
        """logp: (positions, vocab) log-probs predicting the row's scored tokens."""
        start, end = self.starts[row], self.starts[row + 1]
        if logp.shape[0] != end - start:
            raise ValueError(f"row {row}: {logp.shape[0]} positions, the reference has {end - start}")
        ref_ids = torch.from_numpy(self.reference["ids"][start:end]).long()
        ref_logp = torch.from_numpy(self.reference["logp"][start:end]).double()
        self.kls += topk_kl(ref_ids, ref_logp, logp.double()).tolist()
        self.top1 += (logp.argmax(-1) == ref_ids[:, 0]).tolist()
        self.rest += (1 - ref_logp.exp().sum(-1)).clamp(min=0).tolist()

    def result(self) -> dict:
        return {"kl_mean": float(np.mean(self.kls)), "kl_p99": float(np.quantile(self.kls, 0.99)),
                "top1": float(np.mean(self.top1)), "rest_mass": float(np.mean(self.rest)),
                "positions": len(self.kls), "top_k": int(self.reference["ids"].shape[1])}


def kl_against(reference: dict[str, np.ndarray], engine, sequences: Sequence[tuple[Sequence[int], int]]) -> dict:
    """Mean KL(reference || engine) per scored position, top-1 agreement, and the leftover mass."""
    accumulator = KLAgainst(reference)
    for row, (ids, first) in enumerate(sequences):
        accumulator.add(row, torch.log_softmax(torch.from_numpy(engine.score(list(ids)[:-1], first - 1)), dim=-1))
    return accumulator.result()


def kl_divergence(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, from log-probabilities over the same outcomes.
    p_logp, q_logp: (positions, outcomes) -> (positions,)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def topk_kl(ref_ids: torch.Tensor, ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL over the reference's top-k outcomes plus one outcome for the rest, per position.
    ref_ids, ref_logp: (positions, k); logp: (positions, vocab) log-probs of the model compared."""
    q_logp = logp.gather(1, ref_ids)
    kl = kl_divergence(ref_logp, q_logp)
    p_rest = (1 - ref_logp.exp().sum(-1)).clamp(min=1e-12)
    q_rest = (1 - q_logp.exp().sum(-1)).clamp(min=1e-12)
    return (kl + p_rest * (p_rest.log() - q_rest.log())).clamp(min=0)
