"""Batches for CPU training: few shapes, little padding, a deterministic and resumable order.

Each example is padded to the smallest of a few bucket lengths that holds it, and a micro-batch
holds examples of one bucket only, as many as fit `batch_tokens`. So the tensors come in a handful
of repeated shapes: oneDNN's bf16 kernels are built per shape, and a new length every batch
halves throughput. The order of an epoch is a pure function of (seed, epoch): resuming at
(epoch, step) needs no saved random state.

Under torchrun every process builds the same plan; each takes rows rank::world of each
micro-batch, which is first padded with empty (loss-free) rows to a multiple of the world size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tinytitan.data.tokens import TokenizedExample


def bucket_lengths(max_length: int) -> list[int]:
    """16, 24, 32, 48, 64, 96, ... (powers of two and the midpoints), capped by max_length."""
    lengths, base = [], 16
    while base < max_length:
        lengths += [base, base * 3 // 2]
        base *= 2
    return sorted({min(n, max_length) for n in lengths} | {max_length})


@dataclass(frozen=True)
class MicroBatch:
    examples: tuple[int, ...]  # indices into the dataset; -1 marks an empty padding row
    length: int  # padded sequence length (the bucket)

    @property
    def padded_tokens(self) -> int:
        return len(self.examples) * self.length


def plan_epoch(dataset: list[TokenizedExample], batch_tokens: int, max_length: int, seed: int, epoch: int,
               world_size: int = 1, shuffle: bool = True) -> list[MicroBatch]:
    """The micro-batches of one epoch, in order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    buckets: dict[int, list[int]] = {}
    lengths = bucket_lengths(max_length)
    for index, example in enumerate(dataset):
        bucket = next(n for n in lengths if n >= len(example.ids))
        buckets.setdefault(bucket, []).append(index)
    batches = []
    for length in sorted(buckets):
        indices = buckets[length]
        if shuffle:
            rng.shuffle(indices)
        rows = max(1, batch_tokens // length)  # the same global batches whatever the world size
        for start in range(0, len(indices), rows):
            chunk = indices[start:start + rows]
            chunk += [-1] * (-len(chunk) % world_size)
            batches.append(MicroBatch(tuple(chunk), length))
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(dataset: list[TokenizedExample], batch: MicroBatch, pad_id: int, rank: int = 0, world_size: int = 1):
    """(input_ids, attention_mask, loss_mask), each (rows, length), for this process's share."""
    rows = batch.examples[rank::world_size]
    input_ids = torch.full((len(rows), batch.length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), batch.length), dtype=torch.bool)
    loss_mask = torch.zeros((len(rows), batch.length), dtype=torch.bool)
    for row, index in enumerate(rows):
        if index < 0:
            attention[row, 0] = True  # an empty row attends to itself only; it carries no loss
            continue
        example = dataset[index]
        n = len(example.ids)
        input_ids[row, :n] = torch.tensor(example.ids)
        attention[row, :n] = True
        loss_mask[row, example.completion_start:n] = True
    return input_ids, attention, loss_mask


def loss_tokens(dataset: list[TokenizedExample], batch: MicroBatch) -> int:
    """Completion tokens the whole micro-batch (all processes) is scored on."""
    return sum(dataset[i].n_completion for i in batch.examples if i >= 0)


def real_tokens(dataset: list[TokenizedExample], batch: MicroBatch) -> int:
    return sum(len(dataset[i].ids) for i in batch.examples if i >= 0)
