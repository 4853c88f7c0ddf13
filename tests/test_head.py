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


def test_auto_is_the_task_softmax_where_training_runs_in_fp32_and_full_is_the_default():
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.train.head import head_vocab

    assert FinetuneConfig(train="x").head_vocab == "full"  # the default: the task softmax costs exact match
    config = FinetuneConfig(train="x", head_vocab="auto")
    assert head_vocab(config, bf16=False) == "task" and head_vocab(config, bf16=True) == "full"
    # a teacher's tokens are the whole vocabulary's; a trimmed vocabulary brings its own negatives
    assert head_vocab(FinetuneConfig(train="x", head_vocab="auto", teacher="t.gguf"), bf16=False) == "full"
    assert head_vocab(FinetuneConfig(train="x", head_vocab="auto", teacher="t.gguf", kd_weight=0.0), bf16=False) == "task"
    assert head_vocab(FinetuneConfig(train="x", head_vocab="auto", head_negatives="n.npy"), bf16=False) == "full"
    assert head_vocab(FinetuneConfig(train="x", head_vocab="full"), bf16=False) == "full"
    assert head_vocab(FinetuneConfig(train="x", head_vocab="task"), bf16=True) == "task"


def test_a_step_mines_the_tokens_the_model_now_finds_likeliest():
    """Each step scores some completion positions (spread evenly, and every row's last) over the whole head:
    a token that has become likely there joins that step's softmax, even when no even spread picks it."""
    from tinytitan.train.head import MINED_TOP, mined_rows

    weight = torch.eye(1000)  # so a position's hidden state is its logits
    hidden = torch.full((100, 1000), -10.0)
    hidden[:, :100] = -torch.arange(100) / 100  # everywhere tokens 0..99 are the likeliest
    hidden[50, 737] = 5.0  # but at position 50, not one of the 32 spread evenly over 100
    assert 737 not in mined_rows(hidden, weight, torch.tensor([], dtype=torch.long)).tolist()
    mined = mined_rows(hidden, weight, torch.tensor([50]))
    assert 737 in mined.tolist() and mined.tolist() == sorted(set(mined.tolist()))
    assert len(mined_rows(hidden[:1], weight, torch.tensor([0]))) == MINED_TOP
