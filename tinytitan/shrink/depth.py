"""Depth pruning: a Gemma 3 with fewer layers, the dropped ones chosen by measured importance on the task.

A layer's importance is how much it turns the residual stream at the positions that matter, measured on
task rows: 1 - the mean cosine between its input and output hidden states at the completion positions
("block influence", as in ShortGPT). A layer that barely turns the stream changes the output least when
removed, wherever it sits; so the layers kept are the most important ones, in their order. Each kept layer
keeps its attention type (sliding window or global), written per layer into the GGUF, which llama.cpp
reads as a per-layer array, so the pruned model runs in both engines. The pruned model is a student:
fine-tuning (with the full model as its distillation teacher, `train/teacher.py`) recovers what it lost.
"""

from __future__ import annotations

import torch

from tinytitan.errors import TinyTitanError


@torch.no_grad()
def layer_importance(model, batches) -> list[float]:
    """1 - mean cos(input, output) of each decoder layer's hidden states at the completion positions of
    `batches` ((input_ids, attention_mask, loss_mask) triples, as `train/batching.collate` makes them)."""
    from tinytitan.train.loss import completion_positions
    from tinytitan.train.training import causal_lm

    layers = causal_lm(model).model.layers
    sums, count, where = [0.0] * len(layers), 0, {}

    def hook(index):
        def record(module, args, kwargs, output):
            before = (args[0] if args else kwargs["hidden_states"])[where["mask"]].float()
            after = (output[0] if isinstance(output, tuple) else output)[where["mask"]].float()
            sums[index] += float(torch.nn.functional.cosine_similarity(before, after, dim=-1).sum())
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        for input_ids, attention, loss_mask in batches:
            where["mask"], _ = completion_positions(input_ids, loss_mask)
            count += int(where["mask"].sum())
            model(input_ids=input_ids, attention_mask=attention)
    finally:
        for handle in handles:
            handle.remove()
    if not count:
        raise TinyTitanError("no completion tokens to measure the layers on")
    return [1.0 - total / count for total in sums]


def choose_layers(importance: list[float], keep: int) -> list[int]:
    """The `keep` most important layers, in model order."""
    if not 1 <= keep <= len(importance):
        raise TinyTitanError(f"--layers {keep}: expected 1 to {len(importance)} (the model has {len(importance)})")
    ranked = sorted(range(len(importance)), key=lambda i: -importance[i])
    return sorted(ranked[:keep])


def drop_layers(model, keep: list[int]):
    """`model` (a Gemma3ForCausalLM) with only the layers `keep`, renumbered, each with its own attention
    type; in place, returned."""
    from tinytitan.train.training import causal_lm

    lm = causal_lm(model)
    config = lm.config
    lm.model.layers = torch.nn.ModuleList(lm.model.layers[i] for i in keep)
    for new_index, layer in enumerate(lm.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by it
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index
    config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model
