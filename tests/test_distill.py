"""Distillation on the tiny model: the teacher's top-k is computed once and cached by content, lines up with
the loss's completion positions, and trains; a teacher of another tokenizer is a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import run_cli
from tests.test_finetune import dataset, finetune_args  # noqa: F401  (the shared fixture)


def tokenized(tiny, dataset, rows=24):  # noqa: F811
    from tinytitan.data.check import prepare_data
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer
    from tinytitan.train.config import FinetuneConfig

    config = FinetuneConfig(model=str(tiny[0]), train=str(dataset), max_rows=rows)
    ref = resolve(config.model)
    return ref, prepare_data(config, load_tokenizer(ref)).splits["train"]


def test_the_teacher_is_cached_by_content_and_lines_up_with_the_loss(tiny, dataset, tmp_path, monkeypatch):  # noqa: F811
    from tinytitan.model.artifacts import Artifact
    from tinytitan.train.batching import collate, plan_epoch
    from tinytitan.train.distill import load_teacher
    from tinytitan.train.loss import completion_positions

    ref, examples = tokenized(tiny, dataset)
    first = load_teacher(str(tiny[0]), examples, ref.gguf, k=16)
    assert first.ids.shape == (sum(e.n_completion for e in examples), 16) and first.logp.shape == first.ids.shape
    assert (first.logp[:, :-1] >= first.logp[:, 1:]).all()  # the most likely first
    monkeypatch.setattr(Artifact, "open", lambda *a, **k: pytest.fail("the cached teacher ran again"))
    again = load_teacher(str(tiny[0]), examples, ref.gguf, k=16)
    assert (again.ids == first.ids).all() and (again.logp == first.logp).all()
    agree, total = 0, 0
    for batch in plan_epoch(examples, 256, 128, seed=0, epoch=0):  # the rows the loss sees, in its order
        ids, attention, mask = collate(examples, batch, pad_id=0)
        predicts, targets = completion_positions(ids, mask)
        teacher_ids, _ = first.rows(batch.examples)
        assert teacher_ids.shape[0] == targets.shape[0]
        with torch.no_grad():  # the teacher is the student's own model: their likeliest tokens agree, row by row
            student = tiny[1](input_ids=ids, attention_mask=attention).logits[predicts].argmax(-1)
        agree += int((teacher_ids[:, 0] == student).sum())
        total += len(student)
    assert agree / total > 0.95, (agree, total)
    changed = tmp_path / "teacher.gguf"  # another file (as a retrained teacher would be): computed anew
    shutil.copy(tiny[0], changed)
    with pytest.raises(pytest.fail.Exception, match="ran again"):
        load_teacher(str(changed), examples, ref.gguf, k=16)


def test_distillation_trains_and_leaves_validation_on_the_targets(tiny, dataset, tmp_path):  # noqa: F811
    plain, taught = tmp_path / "plain", tmp_path / "taught"
    common = ("--max-steps", "6", "--eval-every", "6", "--seed", "0")
    assert run_cli(*finetune_args(tiny, dataset, plain, *common)).returncode == 0
    result = run_cli(*finetune_args(tiny, dataset, taught, *common, "--teacher", str(tiny[0]), "--kd-weight", "1",
                                    "--kd-top-k", "32", "--kd-temperature", "2"))
    assert result.returncode == 0, result.stderr
    config = json.loads((taught / "config.json").read_text())
    assert config["teacher"] == str(tiny[0]) and config["kd_top_k"] == 32
    records = {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for name, run in (("plain", plain), ("taught", taught))}
    plain_loss = [r["loss"] for r in records["plain"] if "loss" in r]
    taught_loss = [r["loss"] for r in records["taught"] if "loss" in r]
    assert len(taught_loss) == 6 and taught_loss[0] > plain_loss[0]  # the same first step, plus the KL term
    assert all(r["val_loss"] < 10 for r in records["taught"] if "val_loss" in r)  # cross-entropy only, as before


def test_a_teacher_with_another_tokenizer_is_one_line(tiny, dataset, tmp_path):  # noqa: F811
    from tinytitan.errors import TinyTitanError
    from tinytitan.train.distill import vocabulary_map

    with pytest.raises(TinyTitanError, match=r"its vocabulary \(3 tokens\) is not the student's \(the student: 2"):
        vocabulary_map(["a", "b", "c"], ["a", "z"], "t.gguf", "the student")
    trimmed = vocabulary_map(["a", "b", "c"], ["c", "a"], "t.gguf", "s")  # a task vocabulary: a subset, re-indexed
    assert trimmed.tolist() == [1, -1, 0]
    result = run_cli(*finetune_args(tiny, dataset, tmp_path / "run", "--max-steps", "1", "--teacher", "base"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("error: teacher base: its vocabulary (262,144 tokens) is not the student's (student "
                                f"{tiny[0]}: 479 tokens"), errors[0]
