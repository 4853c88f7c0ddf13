"""The training softmax over a task's tokens (train/head.py, `head_vocab = "task"`)."""

from __future__ import annotations

import json

import torch

from tests.conftest import run_cli
from tests.test_finetune import dataset, finetune_args  # noqa: F401  (a fixture)
from tests.test_vocabulary import TEXTS, _completion_batch


def _models(tiny):
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer, load_torch_model

    ref = resolve(str(tiny[0]))
    return load_torch_model(ref, dtype="float32").eval(), load_tokenizer(ref)


def test_the_task_softmax_with_every_row_is_the_full_one_and_validation_always_scores_the_full_one(tiny):
    from tinytitan.train.training import CompletionLoss

    model, tokenizer = _models(tiny)
    vocab = model.lm_head.weight.shape[0]
    for prompt, completion in zip(TEXTS, TEXTS[1:]):
        batch = _completion_batch(tokenizer, prompt, completion)
        data_rows = batch[0].flatten().unique()
        with torch.enable_grad():
            full = CompletionLoss(model, bf16=False, head_chunk=7)(*batch)
            every = CompletionLoss(model, bf16=False, head_chunk=7, head_rows=torch.arange(vocab))(*batch)
            task = CompletionLoss(model, bf16=False, head_chunk=7, head_rows=data_rows)(*batch)
        with torch.no_grad():
            validated = CompletionLoss(model, bf16=False, head_chunk=7, head_rows=data_rows)(*batch)
        torch.testing.assert_close(every, full, rtol=1e-5, atol=1e-5)
        assert task < full - 1e-3  # the other tokens' probability is not in it
        torch.testing.assert_close(validated, full.detach(), rtol=1e-5, atol=1e-5)


def test_task_head_rows_hold_every_data_token_and_the_likeliest_others(tiny):
    from tinytitan.data.tokens import TokenizedExample
    from tinytitan.train.head import task_head_rows

    model, tokenizer = _models(tiny)
    examples = []
    for prompt, completion in zip(TEXTS, TEXTS[1:]):
        ids = tokenizer.tokenize(prompt) + tokenizer.tokenize(completion)
        examples.append(TokenizedExample(tuple(ids), len(tokenizer.tokenize(prompt)), False, "test"))
    data = {i for e in examples for i in e.ids}
    alone, summary = task_head_rows(model, examples, bf16=False, negatives=0)
    assert set(alone.tolist()) == data and summary["tokens"] == len(data)
    few, few_summary = task_head_rows(model, examples, bf16=False, negatives=5)
    more, more_summary = task_head_rows(model, examples, bf16=False, negatives=50)
    assert data <= set(few.tolist()) <= set(more.tolist())
    assert len(few) == len(data) + 5 and len(more) == len(data) + 50
    assert 0 < few_summary["negatives_share_of_dropped"] < more_summary["negatives_share_of_dropped"] <= 1


def test_finetune_in_the_task_softmax(tiny, dataset, tmp_path):  # noqa: F811
    run = tmp_path / "task"
    result = run_cli(*finetune_args(tiny, dataset, run, "--head-vocab", "task", "--max-steps", "6",
                                    "--eval-every", "3"))
    assert result.returncode == 0, result.stderr
    assert "training softmax: " in result.stdout and " others holding " in result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0]  # it learns, scored over the whole vocabulary
    result = run_cli(*finetune_args(tiny, dataset, tmp_path / "bad", "--head-vocab", "task", "--teacher", str(tiny[0])))
    assert result.returncode == 1 and "head_vocab: 'task' is not valid (expected full when distilling" in result.stderr
