"""Frozen lower layers, run once per row: with `train_layers = N`, the decoder layers below the top N
hold nothing that trains, so what they make of a training row is the same every epoch. The first time
a row is seen, the frozen layers run on it alone (without autograd) and their output at its real
positions is kept (float32, `hidden x tokens` per row); every batch then starts at the first trained
layer from the kept outputs, the layers below passed over. Padding is on the right and attention
causal, so a row's real positions do not depend on the batch it is in.

Kept only while the whole training set fits in `LIMIT_BYTES` (the ingredients demo's 800 rows: about
200 MB); a larger one runs every layer every time, as without it.
"""

from __future__ import annotations

import contextlib

import torch

LIMIT_BYTES = 2 * 1024 ** 3


class _PassOver(torch.nn.Module):
    """Stands in for a decoder layer whose output is already known: returns its input."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class FrozenLayers:
    """The last hidden state of `lm.model` (a Gemma 3 text model) for a batch, reusing the frozen layers' output."""

    def __init__(self, lm, trained_from: int, tokens: int):
        self.lm, self.first = lm, trained_from
        self.enabled = 0 < trained_from and tokens * lm.config.hidden_size * 4 <= LIMIT_BYTES
        self.kept: dict[int, torch.Tensor] = {}  # training row -> (its length, hidden) output of layer first - 1

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: tuple[int, ...] | None = None):
        """`rows`: the training-set index of each batch row (-1 for an empty one); None: nothing to keep."""
        model = self.lm.model
        if not self.enabled or rows is None:
            return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lengths = attention_mask.sum(1).tolist()
        new = [b for b, r in enumerate(rows) if r >= 0 and r not in self.kept]
        if new:  # the frozen layers on the rows not seen yet (under torchrun a row may come to another process)
            seen = {}
            hook = model.layers[self.first - 1].register_forward_hook(
                lambda module, args, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out))
            index = torch.tensor(new, device=input_ids.device)
            try:
                with torch.no_grad(), self._passing_over(range(self.first, len(model.layers))):
                    model(input_ids=input_ids[index], attention_mask=attention_mask[index])
            finally:
                hook.remove()
            for i, b in enumerate(new):
                self.kept[rows[b]] = seen["h"][i, :lengths[b]].float().clone()
        start = torch.zeros((*input_ids.shape, self.lm.config.hidden_size), dtype=torch.float32,
                            device=input_ids.device)
        for b, r in enumerate(rows):
            if r >= 0:
                start[b, :lengths[b]] = self.kept[r]
        with self._passing_over(range(self.first)):
            return model(inputs_embeds=start, attention_mask=attention_mask).last_hidden_state

    @contextlib.contextmanager
    def _passing_over(self, indices: range):
        """The decoder layers at `indices` replaced by pass-throughs while in the block."""
        layers = self.lm.model.layers
        replaced = {i: layers[i] for i in indices}
        try:
            for i in indices:
                layers[i] = _PassOver()
            yield
        finally:
            for i, layer in replaced.items():
                layers[i] = layer
