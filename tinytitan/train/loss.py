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

Distillation adds a term in the same pass: given a teacher's top-k token ids and log-probs at each
row, `kd_weight * T^2 * KL(p_T || q_T)`, where p_T is the teacher's top-k distribution at temperature
T (renormalized over its k tokens) and q_T the student's full softmax at T (forward KL, as Hinton et
al.; the T^2 keeps its gradient's scale independent of T). With k equal to the vocabulary it is the
full KL. Its gradient joins the cross-entropy's in the same chunk: (softmax - onehot) +
kd_weight * T * (softmax_T - p_T). `divergence="reverse"` uses KL(q~_T || p_T) instead, q~_T being the
student's distribution over the teacher's k tokens (renormalized there): mode-seeking, it pulls the
student onto the teacher's likeliest tokens rather than spreading it over all k; its gradient,
kd_weight * T * q~ (log q~ - log p - KL), touches those k logits only.
"""

from __future__ import annotations

import weakref

import torch

_WORKSPACE: dict[tuple, torch.Tensor] = {}
_WEIGHT_CACHE: dict[int, tuple] = {}  # id -> (weakref to the weight, its version, converted copy)


def _buffer(rows: int, cols: int, dtype: torch.dtype, device: torch.device, tag: str = "") -> torch.Tensor:
    key = (cols, dtype, str(device), tag)
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


def teacher_probs(teacher, start: int, chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [start, start + chunk) of a teacher's top-k as (ids, probabilities at `temperature`, summing to 1
    over the k tokens). Padding entries (id < 0, from a row whose teacher kept fewer tokens) get 0."""
    ids, logprobs = (x[start:start + chunk] for x in teacher)
    scaled = (logprobs.float() / temperature).masked_fill(ids < 0, float("-inf"))
    return ids.clamp_min(0), torch.softmax(scaled, dim=-1).nan_to_num(0.0)  # a row without any: no term


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), computed in row chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, bf16: bool, softcap: float | None,
                with_grad: bool = True, teacher=None, kd_weight: float = 0.0, temperature: float = 1.0,
                reverse: bool = False):
        # hidden: (N, H), weight: (V, H), targets: (N,); teacher: ((N, k) ids, (N, k) log-probs) or None
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
            if teacher is not None:
                ids, p_t = teacher_probs(teacher, start, chunk, temperature)
                if temperature == 1.0:
                    lse_t, soft_t = lse, None
                else:  # the student at temperature T, in a second buffer (the first becomes the softmax at 1)
                    soft_t = _buffer(t.shape[0], vocab, torch.float32, device, "temperature")
                    torch.div(work, temperature, out=soft_t)
                    lse_t = torch.logsumexp(soft_t, dim=-1)
                log_q = work.gather(1, ids) / temperature - lse_t[:, None]  # (c, k) student log-probs at T
                log_p = torch.log(p_t.clamp_min(1e-30))
                if reverse:  # the student renormalized over the teacher's tokens (padding: none of its mass)
                    log_q = log_q.masked_fill(p_t == 0, float("-inf"))
                    log_q = (log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)).nan_to_num(0.0, neginf=0.0)
                    q_t = torch.exp(log_q) * (p_t > 0)
                    row_kl = (q_t * (log_q - log_p)).sum(-1)
                    kl = row_kl.sum()
                else:
                    kl = (p_t * (log_p - log_q)).sum()
                total += kd_weight * temperature ** 2 * kl.double()
            if not with_grad:
                continue
            work.sub_(lse[:, None]).exp_()  # softmax, in place
            work[rows, t] -= 1.0  # d(sum CE)/d(logits) = softmax - onehot
            if teacher is not None and reverse:  # + kd_weight * T * q~ (log q~ - log p - KL) on the k tokens
                scale = kd_weight * temperature
                work.scatter_add_(1, ids, scale * q_t * (log_q - log_p - row_kl[:, None]))
            elif teacher is not None:  # + kd_weight * T * (softmax_T - p_T)
                scale = kd_weight * temperature
                if soft_t is None:  # T = 1: softmax = work + onehot, so (1 + s)(softmax - onehot) + s onehot - s p
                    work.mul_(1.0 + scale)
                    work[rows, t] += scale
                    work.scatter_add_(1, ids, -scale * p_t)
                else:
                    soft_t.sub_(lse_t[:, None]).exp_()
                    work.add_(soft_t, alpha=scale)
                    work.scatter_add_(1, ids, -scale * p_t)
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
        return (grad_hidden * grad_output).to(ctx.hidden_dtype), grad_w, *[None] * 9


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                      chunk: int = 128, bf16: bool = True, softcap: float | None = None,
                      teacher: tuple[torch.Tensor, torch.Tensor] | None = None, kd_weight: float = 0.0,
                      temperature: float = 1.0, divergence: str = "forward") -> torch.Tensor:
    """Summed cross-entropy of `targets` under logits `hidden @ weight.T`, plus, given `teacher` ((N, k) token
    ids in this head's vocabulary, -1 for none, and their (N, k) log-probs), `kd_weight * T^2 * KL`; see the
    module docstring."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if teacher is not None and (kd_weight < 0 or temperature <= 0):
        raise ValueError(f"distillation needs kd_weight >= 0 and temperature > 0, not {kd_weight}, {temperature}")
    if divergence not in ("forward", "reverse"):
        raise ValueError(f"divergence must be forward or reverse, not {divergence!r}")
    teacher = teacher if kd_weight else None
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedHeadCrossEntropy.apply(hidden, weight, targets, chunk, bf16, softcap, with_grad, teacher,
                                          kd_weight, temperature, divergence == "reverse")



def completion_positions(input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Positions whose *next* token is a completion token, and those next tokens.

    input_ids, loss_mask: (B, T); loss_mask marks completion tokens (never padding or prompt).
    Returns a (B, T) bool mask of predicting positions and the (N,) targets, in the same order.
    """
    predicts = torch.zeros(loss_mask.shape, dtype=torch.bool, device=loss_mask.device)
    predicts[:, :-1] = loss_mask[:, 1:].bool()
    return predicts, input_ids[:, 1:][loss_mask[:, 1:].bool()]
