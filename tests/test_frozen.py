"""Frozen lower layers run once per row (train/frozen.py, `train_layers`)."""

from __future__ import annotations

import torch

from tests.test_vocabulary import TEXTS


def test_a_batch_from_the_kept_lower_layers_gives_the_loss_and_gradients_of_the_whole_stack(tiny):
    from tinytitan.data.tokens import TokenizedExample
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer
    from tinytitan.train.batching import MicroBatch, collate
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.train.frozen import FrozenLayers
    from tinytitan.train.training import CompletionLoss, build_model, causal_lm

    ref = resolve(str(tiny[0]))
    tokenizer = load_tokenizer(ref)
    examples = []
    for prompt, completion in zip(TEXTS, TEXTS[1:]):
        start = len(tokenizer.tokenize(prompt))
        examples.append(TokenizedExample(tuple(tokenizer.tokenize(prompt) + tokenizer.tokenize(completion)), start,
                                         False, "test"))
    config = FinetuneConfig(train="x", train_layers=1, lora_rank=4)
    torch.manual_seed(0)
    model = build_model(ref, config, torch.device("cpu"))
    for name, param in model.named_parameters():  # LoRA B starts at zero: give the adapter something to do
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    lm = causal_lm(model)
    frozen = FrozenLayers(lm, trained_from=1, tokens=sum(len(e.ids) for e in examples))
    plain = CompletionLoss(model, bf16=False, head_chunk=5)
    keeping = CompletionLoss(model, bf16=False, head_chunk=5, frozen=frozen)
    batch = MicroBatch((2, -1, 0, 1), max(len(e.ids) for e in examples) + 3)  # an empty row and padding
    ids, attention, mask = collate(examples, batch, pad_id=0)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(module, **rows):
        loss = module(ids, attention, mask, **rows)
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), grads

    expected, expected_grads = loss_and_grads(plain)
    part = MicroBatch((0, 2), batch.length)  # rows 0 and 2 seen in another batch first ...
    keeping(*collate(examples, part, pad_id=0), rows=part.examples)
    assert sorted(frozen.kept) == [0, 2]
    first, first_grads = loss_and_grads(keeping, rows=batch.examples)  # ... row 1 is new: layer 0 runs on it alone
    assert sorted(frozen.kept) == [0, 1, 2]
    calls = []
    hook = lm.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    again, again_grads = loss_and_grads(keeping, rows=batch.examples)  # starts at layer 1
    hook.remove()
    assert calls == [] and isinstance(lm.model.layers[0], type(lm.model.layers[1]))  # passed over, then put back
    for loss, grads in ((first, first_grads), (again, again_grads)):
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    too_big = FrozenLayers(lm, trained_from=1, tokens=10 ** 10)
    assert not too_big.enabled  # a training set whose kept output would not fit: every layer, every time
