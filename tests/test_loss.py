"""The chunked completion-only head loss against plain cross-entropy over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinytitan.train.loss import chunked_head_loss, completion_positions

VOCAB, HIDDEN = 1000, 32


def reference(hidden, weight, targets, softcap=None):
    logits = hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def head_problem(rows: int, seed: int):
    """Random (hidden, weight, targets) for a head of VOCAB rows; hidden and weight take gradients."""
    torch.manual_seed(seed)
    return (torch.randn(rows, HIDDEN, requires_grad=True), torch.randn(VOCAB, HIDDEN, requires_grad=True),
            torch.randint(0, VOCAB, (rows,)))


def gradients_of(loss, hidden, weight):
    """Backpropagate `loss` and return the two gradients, leaving none behind for the next loss."""
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    return grads


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_fp32_matches_cross_entropy_and_its_gradients(chunk, softcap):
    hidden, weight, targets = head_problem(50, seed=0)
    expected = reference(hidden, weight, targets, softcap)
    grads = gradients_of(expected, hidden, weight)
    actual = chunked_head_loss(hidden, weight, targets, chunk=chunk, bf16=False, softcap=softcap)
    (actual * 2).backward()  # the upstream gradient is applied
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hidden.grad, 2 * grads[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad, 2 * grads[1], rtol=1e-4, atol=1e-5)


def test_bf16_is_close_and_frozen_weight_gets_no_gradient():
    torch.manual_seed(1)
    hidden = torch.randn(40, HIDDEN, requires_grad=True)
    weight = torch.randn(VOCAB, HIDDEN) * 0.3
    targets = torch.randint(0, VOCAB, (40,))
    expected = reference(hidden, weight, targets)
    expected.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    actual = chunked_head_loss(hidden, weight, targets, chunk=16, bf16=True)
    actual.backward()
    assert abs(actual.item() - expected.item()) / expected.item() < 5e-3
    assert torch.nn.functional.cosine_similarity(hidden.grad.flatten(), grad.flatten(), dim=0) > 0.999
    assert weight.grad is None


def test_no_grad_gives_the_same_loss():
    torch.manual_seed(2)
    hidden, weight = torch.randn(20, HIDDEN), torch.randn(VOCAB, HIDDEN)
    targets = torch.randint(0, VOCAB, (20,))
    with torch.no_grad():
        value = chunked_head_loss(hidden, weight, targets, chunk=8, bf16=False)
    torch.testing.assert_close(value, reference(hidden, weight, targets), rtol=1e-5, atol=1e-4)


def test_completion_positions_predict_the_next_token():
    ids = torch.tensor([[10, 11, 12, 13, 0], [20, 21, 22, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    predicts, targets = completion_positions(ids, mask)
    assert predicts.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]
    assert targets.tolist() == [12, 13, 21, 22]


def distillation_reference(hidden, weight, targets, teacher_logits, kd_weight, temperature, softcap=None):
    """Cross-entropy plus kd_weight * T^2 * KL(p_T || q_T) over the whole vocabulary, by autograd."""
    logits = hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    p = F.softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), p, reduction="sum")
    return F.cross_entropy(logits, targets, reduction="sum") + kd_weight * temperature ** 2 * kl


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_distillation_with_k_the_whole_vocabulary_is_the_full_kl(temperature, softcap):
    hidden, weight, targets = head_problem(40, seed=3)
    teacher_logits = 3 * torch.randn(40, VOCAB)
    expected = distillation_reference(hidden, weight, targets, teacher_logits, 0.5, temperature, softcap)
    grads = gradients_of(expected, hidden, weight)
    order = torch.randperm(VOCAB)  # the teacher's top-k in any order: k = V covers every token
    teacher = (order.expand(40, -1).contiguous(), F.log_softmax(teacher_logits, dim=-1)[:, order])
    actual = chunked_head_loss(hidden, weight, targets, chunk=16, bf16=False, softcap=softcap, teacher=teacher,
                               kd_weight=0.5, temperature=temperature)
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weight.grad, grads[1], rtol=1e-4, atol=1e-4)


def test_distillation_on_a_top_k_renormalizes_and_ignores_padding():
    torch.manual_seed(4)
    hidden, weight = torch.randn(6, HIDDEN), torch.randn(VOCAB, HIDDEN)
    targets = torch.randint(0, VOCAB, (6,))
    teacher_logits = 3 * torch.randn(6, VOCAB)
    top = torch.topk(teacher_logits, 8, dim=-1)
    kept = torch.full_like(teacher_logits, float("-inf")).scatter(1, top.indices, top.values)
    expected = distillation_reference(hidden, weight, targets, kept, 1.0, 1.0)
    ids = torch.cat([top.indices, torch.full((6, 3), -1)], dim=1)  # padded to k = 11
    logprobs = torch.cat([F.log_softmax(teacher_logits, dim=-1).gather(1, top.indices), torch.zeros(6, 3)], dim=1)
    actual = chunked_head_loss(hidden, weight, targets, bf16=False, teacher=(ids, logprobs), kd_weight=1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-3)
    plain = chunked_head_loss(hidden, weight, targets, bf16=False)
    assert chunked_head_loss(hidden, weight, targets, bf16=False, teacher=(ids, logprobs), kd_weight=0.0) == plain
    with pytest.raises(ValueError, match="temperature > 0"):
        chunked_head_loss(hidden, weight, targets, bf16=False, teacher=(ids, logprobs), kd_weight=1.0, temperature=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reverse_distillation_is_the_reverse_kl_over_the_teachers_tokens(temperature):
    hidden, weight, targets = head_problem(12, seed=5)
    teacher_logits = 3 * torch.randn(12, VOCAB)
    top = torch.topk(teacher_logits, 8, dim=-1)
    ids = torch.cat([top.indices, torch.full((12, 2), -1)], dim=1)  # padded to k = 10
    logprobs = torch.cat([F.log_softmax(teacher_logits, dim=-1).gather(1, top.indices), torch.zeros(12, 2)], dim=1)
    # the reference by autograd: the student at T renormalized over the teacher's 8 tokens, KL(student || teacher)
    logits = hidden @ weight.T
    log_q = F.log_softmax(logits.gather(1, top.indices) / temperature, dim=-1)
    log_p = F.log_softmax(logprobs[:, :8] / temperature, dim=-1)
    expected = F.cross_entropy(logits, targets, reduction="sum") \
        + 0.7 * temperature ** 2 * (log_q.exp() * (log_q - log_p)).sum()
    grads = gradients_of(expected, hidden, weight)
    actual = chunked_head_loss(hidden, weight, targets, chunk=5, bf16=False, teacher=(ids, logprobs), kd_weight=0.7,
                               temperature=temperature, divergence="reverse")
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weight.grad, grads[1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="forward or reverse"):
        chunked_head_loss(hidden, weight, targets, bf16=False, teacher=(ids, logprobs), kd_weight=1.0,
                          divergence="js")
