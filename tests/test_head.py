"""The training softmax over a task's tokens (train/head.py, `head_vocab = "task"`)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.test_finetune import dataset, finetune_args  # noqa: F401  (fixtures)
from tests.test_finetune import losses
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


def test_auto_the_default_is_the_task_softmax_where_training_runs_in_fp32():
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.train.head import head_vocab

    assert FinetuneConfig(train="x").head_vocab == "auto"
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
    a token that has become likely there joins the softmax, even when no even spread picks it."""
    from tinytitan.train.head import MINED_POSITIONS, MINED_TOP, mined_rows

    weight = torch.eye(1000)  # so a position's hidden state is its logits
    count = 4 * MINED_POSITIONS
    hidden = torch.full((count, 1000), -10.0)
    hidden[:, :100] = -torch.arange(100) / 100  # everywhere tokens 0..99 are the likeliest
    spread = set(torch.linspace(0, count - 1, MINED_POSITIONS).round().long().tolist())
    odd = min(set(range(count)) - spread)  # a position the even spread does not pick
    hidden[odd, 737] = 5.0
    assert 737 not in mined_rows(hidden, weight, torch.tensor([], dtype=torch.long)).tolist()
    mined = mined_rows(hidden, weight, torch.tensor([odd]))
    assert 737 in mined.tolist() and mined.tolist() == sorted(set(mined.tolist()))
    assert len(mined_rows(hidden[:1], weight, torch.tensor([0]))) == MINED_TOP


def test_a_mined_token_stays_in_the_softmax_and_a_resumed_run_keeps_it(
        tiny, dataset, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A token training has made likely joins the softmax for the rest of the run (else it is pushed down only
    at the steps that happen to mine it), and the checkpoint carries the grown softmax: a run stopped and
    resumed follows the same curve as one that was not."""
    from safetensors.torch import load_file

    from tinytitan.train import head
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.train.finetune import train
    from tinytitan.train.training import CompletionLoss

    model, tokenizer = _models(tiny)
    batch = _completion_batch(tokenizer, TEXTS[0], TEXTS[1])
    data_rows = batch[0].flatten().unique()
    loss_module = CompletionLoss(model, bf16=False, head_chunk=7, head_rows=data_rows)
    with torch.enable_grad():
        loss_module(*batch)
    grown = loss_module.head_rows
    assert set(data_rows.tolist()) < set(grown.tolist()) and grown.tolist() == sorted(set(grown.tolist()))
    loss_module.keep_in_head(data_rows[:2])  # already in: nothing changes
    assert loss_module.head_rows is grown

    # in this process, with 5 negatives: the tiny model's 479 tokens would all be in the softmax with 1,024
    monkeypatch.setattr(head, "NEGATIVES", 5)
    settings = dict(model=str(tiny[0]), train=str(dataset), batch_tokens=256, learning_rate=1e-3, precision="fp32",
                    threads=1, head_vocab="task", max_steps=8, eval_every=100, save_every=100)
    straight = train(FinetuneConfig(output=str(tmp_path / "straight"), **settings)).summary
    stopped = tmp_path / "stopped"
    train(FinetuneConfig(output=str(stopped), time_limit=0.001, **settings))
    saved = load_file(stopped / "checkpoints" / "step-0000001" / "tensors.safetensors")["head.rows"]
    started = int(capsys.readouterr().out.split("training softmax: ")[-1].split(" of ")[0].replace(",", ""))
    assert len(saved) > started  # the first step mined tokens the softmax did not hold
    resumed = train(FinetuneConfig(output=str(stopped), **settings), resume=True).summary
    assert resumed["steps"] == 8 and losses(stopped) == pytest.approx(losses(tmp_path / "straight"), rel=1e-6, abs=1e-7)
    assert straight["softmax_tokens"] == resumed["softmax_tokens"] >= len(saved)


def _mine_in_process(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from tinytitan.train.head import mined_everywhere

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        union = mined_everywhere(torch.tensor([3, 7]) if rank == 0 else torch.tensor([7, 11, 40]), vocab=50)
        torch.save(union, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_processes_under_torchrun_share_their_mined_tokens(tmp_path):
    from tinytitan.train.head import mined_everywhere

    alone = torch.tensor([5, 2])
    assert mined_everywhere(alone, vocab=10) is alone  # one process: untouched
    torch.multiprocessing.spawn(_mine_in_process, args=(str(tmp_path / "store"), str(tmp_path / "union")), nprocs=2)
    for rank in (0, 1):  # each process's softmax takes the other's mined tokens too, in order
        assert torch.load(tmp_path / f"union.{rank}").tolist() == [3, 7, 11, 40]
