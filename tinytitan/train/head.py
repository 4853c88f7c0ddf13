"""The training softmax over a task's tokens: the LM head's rows a task uses, and the likeliest others.

A specialist's completions use a few thousand of Gemma's 262,144 tokens, yet every completion position
pays for all of them twice (logits, then their gradient). With `head_vocab = "task"` the training
softmax holds only the tokens of the training and validation rows (prompts and completions: a
completion copies words from its prompt) and the `NEGATIVES` other tokens the model gives the most
probability at their completion positions, so that training still pushes probability off the
likeliest wrong tokens (without them, the kept tokens hold ~2/3 of the untrained model's probability
there and training ends somewhere else: docs/pruning.md). The model itself is untouched: the adapter
(or weights) trained this way are used with the full vocabulary, and validation scores the full one.
So each step also scores a few of its positions over the whole vocabulary (`mined_rows`) and adds the tokens
training has made likely there, for the rest of the run (`CompletionLoss.keep_in_head`; a checkpoint keeps
them; under torchrun every process adds every process's, `mined_everywhere`): without them, tokens outside the
softmax that nothing pushes down took over free decoding (0% exact match on the demo, 66% constrained), and
with them only in the step that found them the demo ended 5.9 points under the full head (docs/finetune.md).
`head_vocab = "auto"` (the default) trains this way where training runs in fp32, and in the full softmax in
bf16, where the head is cheaper (measured: docs/finetune.md).
"""

from __future__ import annotations

import torch

NEGATIVES = 1024  # other tokens in the softmax (docs/pruning.md: 72% of the dropped probability)
ROWS = 64  # rows (of those given: training and validation) the negatives are picked on
MINED_POSITIONS = 64  # completion positions of each batch scored over the whole vocabulary (besides each row's last)
MINED_TOP = 32  # the likeliest tokens at each of them, which join the softmax for the rest of the run


def likeliest_others(model, examples, kept: torch.Tensor, count: int, bf16: bool,
                     rows: int = ROWS) -> tuple[torch.Tensor, dict]:
    """The `count` tokens outside `kept` (a bool mask over the vocabulary) to which `model` (a
    `Gemma3ForCausalLM`) gives the most next-token probability at the completion positions of `rows` of
    `examples` (tokenized), likeliest first, and a summary: the kept tokens' share of that probability,
    and the share of the rest the picked tokens hold."""
    from tinytitan.train.batching import MicroBatch, collate
    from tinytitan.train.loss import completion_positions

    examples = examples[::max(1, len(examples) // rows)][:rows]
    weight = model.lm_head.weight.detach()
    dropped = ~kept
    mass = torch.zeros(weight.shape[0], dtype=torch.float64)
    kept_share = []
    head = weight.to(torch.bfloat16) if bf16 else weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(examples), 8):  # 8 rows at a time, as training batches them
            batch = MicroBatch(tuple(range(start, min(start + 8, len(examples)))),
                               max(len(e.ids) for e in examples[start:start + 8]))
            ids, attention, loss_mask = collate(examples, batch, pad_id=0)
            predicts, _ = completion_positions(ids, loss_mask)
            hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state[predicts]
            probs = (hidden.to(head.dtype) @ head.T).float().softmax(-1)  # (positions, vocab)
            kept_share += (1.0 - probs[:, dropped].sum(-1)).tolist()
            mass += probs.sum(0).double() * dropped
    order = mass.argsort(descending=True)[:count]
    order = order[mass[order] > 0]
    summary = {"negatives": int(order.numel()), "negatives_rows": len(examples),
               "kept_probability": sum(kept_share) / max(len(kept_share), 1),
               "negatives_share_of_dropped": float(mass[order].sum() / mass.sum()) if mass.sum() > 0 else 0.0}
    return order, summary


def task_head_rows(model, examples, bf16: bool, negatives: int) -> tuple[torch.Tensor, dict]:
    """The vocabulary rows of the task's training softmax (sorted ids): every token of `examples` and the
    `negatives` likeliest others (`likeliest_others`, on the model as it starts); and a summary."""
    vocab = model.lm_head.weight.shape[0]
    kept = torch.zeros(vocab, dtype=torch.bool)
    for example in examples:
        kept[torch.as_tensor(example.ids)] = True
    others, summary = likeliest_others(model, examples, kept, negatives, bf16) if negatives else \
        (torch.empty(0, dtype=torch.long), {})
    kept[others] = True
    rows = kept.nonzero().flatten()
    return rows, {"tokens": int(rows.numel()), "of": vocab, "data_tokens": int(rows.numel()) - int(others.numel()),
                  **summary}


def head_vocab(config, bf16: bool) -> str:
    """What `head_vocab` (a FinetuneConfig's) means for this run: "auto" is "task" where training runs in fp32,
    unless a teacher's tokens (the whole vocabulary) or a trimmed vocabulary's negatives make it "full"."""
    if config.head_vocab != "auto":
        return config.head_vocab
    return "full" if bf16 or (config.teacher and config.kd_weight) or config.head_negatives else "task"


def head_rows_for(config, model, examples, bf16: bool, announce: bool) -> torch.Tensor | None:
    """The vocabulary rows of the training softmax when `head_vocab(config, bf16)` is "task", for `model` (a
    PEFT model or a `Gemma3ForCausalLM`) and the training and validation `examples`; None for the full one."""
    if head_vocab(config, bf16) != "task":
        return None
    import time

    from tinytitan.train.training import causal_lm

    started = time.perf_counter()
    rows, summary = task_head_rows(causal_lm(model), examples, bf16, NEGATIVES)
    if announce:
        others, share = summary.get("negatives", 0), summary.get("negatives_share_of_dropped", 0)
        print(f"training softmax: {summary['tokens']:,} of {summary['of']:,} tokens ({summary['data_tokens']:,} in the "
              f"rows; {others:,} others holding {share:.0%} of the rest of the probability), "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return rows


def load_negatives(config, model) -> torch.Tensor | None:
    """The extra head rows of `config.head_negatives` (a .npy written by the run's vocab stage), checked."""
    if not config.head_negatives:
        return None
    import numpy as np

    from tinytitan.errors import TinyTitanError
    from tinytitan.train.training import causal_lm

    try:
        rows = torch.from_numpy(np.load(config.head_negatives, allow_pickle=False)).float()
    except (OSError, ValueError) as e:
        raise TinyTitanError(f"head_negatives {config.head_negatives}: cannot read it as a .npy array ({e})") from None
    hidden = causal_lm(model).lm_head.weight.shape[1]
    if rows.ndim != 2 or rows.shape[1] != hidden:
        raise TinyTitanError(f"head_negatives {config.head_negatives}: shape {tuple(rows.shape)}, expected "
                             f"(rows, {hidden})")
    return rows


@torch.no_grad()
def mined_rows(hidden: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The tokens the model, as it is now, finds likeliest over the whole vocabulary (`weight`: the LM head) at
    some of a batch's completion positions (`hidden`: (N, H)): `MINED_POSITIONS` spread evenly and every row's
    last (`ends`: where completions end, a kind of position an even spread rarely picks), `MINED_TOP` at each.
    The negatives are picked once, on the model as it starts; a token that training itself makes likely (a
    "cup" where the rows only ever say "cups", stray tokens after the closing brace) is found by the step it
    appears in, joins that step's softmax and is pushed down. Sorted, unique."""
    count = hidden.shape[0]
    spread = torch.linspace(0, count - 1, min(MINED_POSITIONS, count), device=hidden.device).round().long()
    picks = torch.cat([spread, ends.to(hidden.device)]).unique()
    logits = hidden[picks].detach().to(weight.dtype) @ weight.detach().T
    return logits.topk(min(MINED_TOP, logits.shape[1]), dim=-1).indices.flatten().unique()


def mined_everywhere(rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """Under torchrun each process mines its share of the batch: the union of all processes' mined `rows` (ids
    below `vocab`), so that every process trains in the same softmax and the checkpoint the first one saves
    holds them all. In one process: `rows`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    mask = torch.zeros(vocab, dtype=torch.int32, device=rows.device)
    mask[rows] = 1
    dist.all_reduce(mask)  # a sum: nonzero wherever some process mined the token
    return mask.nonzero().flatten()
