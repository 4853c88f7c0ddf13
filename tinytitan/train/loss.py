"""Completion-only language-model loss with the LM head applied only where it is needed, in chunks.

Gemma's vocabulary has 262,144 entries: a [tokens x vocab] fp32 logits tensor for one batch of
1,024 tokens is 1 GiB, and its softmax and gradient are as large again. Here the head runs only at
the positions that predict a completion token, `chunk` rows at a time, and each chunk's gradient
with respect to the hidden states, (softmax - onehot) @ W, is computed right away: no chunk's
logits outlive it, and backward only scales the stored (N x hidden) gradient. The head's own
gradient (when it is trained) is accumulated the same way. No library does this for a CPU, so it
is written here.

Speed on a CPU comes from memory traffic, not FLOPs: the chunk buffers are allocated once and
reused (a fresh 256 MB tensor per chunk costs more in page faults than the softmax itself), the
softmax is done in place, and with `bf16=True` the two matmuls run in bf16 (as under autocast)
while log-sum-exp, the loss and the softmax are fp32.
"""

from __future__ import annotations

import weakref

import torch

_WORKSPACE: dict[tuple, torch.Tensor] = {}
_WEIGHT_CACHE: dict[int, tuple] = {}  # id -> (weakref to the weight, its version, converted copy)


def _buffer(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (cols, dtype, str(device))
    buffer = _WORKSPACE.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = _WORKSPACE[key] = torch.empty((rows, cols), dtype=dtype, device=device)
    return buffer[:rows]


def _compute_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The head weight in the compute dtype; a frozen weight is converted once, not every step."""
    if dtype == weight.dtype:
        return weight.detach()
    cached = _WEIGHT_CACHE.get(id(weight))
    if (cached is not None and cached[0]() is weight and cached[1] == weight._version
            and cached[2].dtype == dtype and not weight.requires_grad):
        return cached[2]
    converted = weight.detach().to(dtype)
    _WEIGHT_CACHE.clear()
    if not weight.requires_grad:
        _WEIGHT_CACHE[id(weight)] = (weakref.ref(weight), weight._version, converted)
    return converted


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), computed in row chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, bf16: bool, softcap: float | None,
                with_grad: bool = True):
        # hidden: (N, H), weight: (V, H), targets: (N,)
        compute = torch.bfloat16 if bf16 else torch.float32
        w = _compute_weight(weight, compute)  # (V, H)
        vocab = w.shape[0]
        need_weight_grad = weight.requires_grad
        device = hidden.device
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=device) if with_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) \
            if need_weight_grad and with_grad else None
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].detach().to(compute)  # (c, H)
            t = targets[start:start + chunk]
            rows = torch.arange(t.shape[0], device=device)
            work = _buffer(t.shape[0], vocab, torch.float32, device)  # (c, V) fp32, reused
            if bf16:
                low = _buffer(t.shape[0], vocab, torch.bfloat16, device)
                torch.mm(h, w.T, out=low)
                work.copy_(low)
            else:
                torch.mm(h, w.T, out=work)
            if softcap:
                work.div_(softcap).tanh_()
                capped = work.clone()
                work.mul_(softcap)
            lse = torch.logsumexp(work, dim=-1)  # (c,)
            total += (lse - work[rows, t]).double().sum()
            if not with_grad:
                continue
            work.sub_(lse[:, None]).exp_()  # softmax, in place
            work[rows, t] -= 1.0  # d(sum CE)/d(logits) = softmax - onehot
            if softcap:
                work.mul_(1.0 - capped * capped)
            if bf16:
                low.copy_(work)
                g = low
            else:
                g = work
            grad_hidden[start:start + chunk] = torch.mm(g, w).float()
            if need_weight_grad:
                grad_weight += torch.mm(g.T, h).float()
        if not with_grad:
            return total.float()
        ctx.save_for_backward(grad_hidden, grad_weight if need_weight_grad else torch.empty(0))
        ctx.need_weight_grad = need_weight_grad
        ctx.hidden_dtype = hidden.dtype
        return total.float()

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = grad_weight * grad_output if ctx.need_weight_grad else None
        return (grad_hidden * grad_output).to(ctx.hidden_dtype), grad_w, None, None, None, None, None


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                      chunk: int = 128, bf16: bool = True, softcap: float | None = None) -> torch.Tensor:
    """Summed cross-entropy of `targets` under logits `hidden @ weight.T`; see the module docstring."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedHeadCrossEntropy.apply(hidden, weight, targets, chunk, bf16, softcap, with_grad)


def completion_positions(input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Positions whose *next* token is a completion token, and those next tokens.

    input_ids, loss_mask: (B, T); loss_mask marks completion tokens (never padding or prompt).
    Returns a (B, T) bool mask of predicting positions and the (N,) targets, in the same order.
    """
    predicts = torch.zeros(loss_mask.shape, dtype=torch.bool, device=loss_mask.device)
    predicts[:, :-1] = loss_mask[:, 1:].bool()
    return predicts, input_ids[:, 1:][loss_mask[:, 1:].bool()]
