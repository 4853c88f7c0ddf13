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
    from tinytitan.train.teacher import load_teacher
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


def test_a_float16_teacher_cache_is_half_the_size_and_the_same_to_its_precision(tiny, dataset):  # noqa: F811
    from tinytitan.evaluate.kl import cache_path
    from tinytitan.train.teacher import load_teacher, teacher_artifact

    ref, examples = tokenized(tiny, dataset, rows=12)
    full = load_teacher(str(tiny[0]), examples, ref.gguf, k=32)
    half = load_teacher(str(tiny[0]), examples, ref.gguf, k=32, dtype="float16")
    assert full.logp.dtype == torch.float32 and half.logp.dtype == torch.float16
    assert (half.ids == full.ids).all()
    torch.testing.assert_close(half.logp.float(), full.logp, rtol=1e-3, atol=1e-2)
    sequences = [(e.ids, e.completion_start) for e in examples]
    identity = teacher_artifact(str(tiny[0])).identity()
    import numpy as np

    sizes = [np.load(cache_path(identity, sequences, 32, dtype))["logp"].nbytes for dtype in ("float32", "float16")]
    assert sizes[1] * 2 == sizes[0]


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
    from tinytitan.train.teacher import vocabulary_map

    with pytest.raises(TinyTitanError, match=r"its vocabulary \(3 tokens\) is not the student's \(the student: 2"):
        vocabulary_map(["a", "b", "c"], ["a", "z"], "t.gguf", "the student")
    trimmed = vocabulary_map(["a", "b", "c"], ["c", "a"], "t.gguf", "s")  # a task vocabulary: a subset, re-indexed
    assert trimmed.tolist() == [1, -1, 0]
    result = run_cli(*finetune_args(tiny, dataset, tmp_path / "run", "--max-steps", "1", "--teacher", "base"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("error: teacher base: its vocabulary (262,144 tokens) is not the student's (student "
                                f"{tiny[0]}: 479 tokens"), errors[0]


def distill_args(tiny, dataset, output, *extra):  # noqa: F811
    return ["distill", "--teacher", str(tiny[0]), "--train", str(dataset), "--output", str(output),
            "--batch-tokens", "256", "--learning-rate", "1e-3", "--precision", "fp32", "--threads", "1",
            "--kd-top-k", "16", *extra]


def test_distill_prunes_the_teacher_labels_inputs_and_trains_on_both(tiny, dataset, tmp_path, monkeypatch):  # noqa: F811
    from tinytitan.model.gguf import read_gguf

    inputs = tmp_path / "inputs.txt"  # 20 new inputs, one of them twice, and one the labelled rows already hold
    inputs.write_text("".join(f"salt and cup {1000 + i}\n" for i in range(20)) + "salt and cup 1000\n"
                      + json.loads(dataset.read_text().splitlines()[0])["prompt"] + "\n")
    out = tmp_path / "student"
    result = run_cli(*distill_args(tiny, dataset, out, "--student", "layers:1", "--unlabelled", str(inputs),
                                   "--min-confidence", "0", "--label-tokens", "48", "--max-steps", "3"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    student = out / "distill" / "student.gguf"
    assert read_gguf(student).get("gemma3.block_count") == 1 and summary["student"]["model"] == str(student)
    assert len(summary["student"]["importance"]) == 2 and len(summary["student"]["kept"]) == 1
    labels = summary["labels"]
    assert labels["inputs"] == 20 and labels["repeats"] == 1 and labels["already_labelled"] == 1, labels
    assert labels["kept"] + sum(labels["dropped"].values()) == 20 and labels["constrained"], labels
    rows = [json.loads(line) for line in (out / "distill" / "train.jsonl").read_text().splitlines()]
    taught = [row for row in rows if row["prompt"].startswith("salt and cup 10")]
    assert len(taught) == labels["kept"] and len(rows) == summary["rows"]["train"]
    assert all(set(row["completion"]) <= {"first", "second"} for row in taught)  # the schema's fields, as objects
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(student) and config["teacher"] == str(tiny[0])
    assert (out / "best").is_dir() and (out / "distill" / "distill.json").is_file()

    # resumed in place: the student and the labels are read back, not made again
    from tinytitan.train import distill, teacher
    from tinytitan.train.config import FinetuneConfig

    monkeypatch.setattr(teacher, "label_inputs", lambda *a, **k: pytest.fail("labelled again"))
    monkeypatch.setattr("tinytitan.shrink.prune.prune_model", lambda *a, **k: pytest.fail("pruned again"))
    given = {**config, "model": "gemma-3-270m", "train": str(dataset), "val": "", "test": ""}  # as the flags gave it
    again = distill.distill(FinetuneConfig(**given),
                            distill.DistillSettings("layers:1", str(inputs), min_confidence=0.0, label_tokens=48),
                            resume=True, say=lambda text: None)
    assert again["labels"]["kept"] == labels["kept"] and again["student"]["model"] == str(student)


def test_distill_refuses_bad_students_and_labelled_inputs(tiny, dataset, tmp_path):  # noqa: F811
    labelled = tmp_path / "inputs.jsonl"
    labelled.write_text('{"prompt": "salt and cup"}\n{"prompt": "cup and mat", "completion": "x"}\n')
    for extra, expected in (
            (("--unlabelled", str(labelled)), f"error: {labelled}:2: this row has a label ('completion'); a file of "
                                              f"unlabelled inputs holds inputs only"),
            (("--student", "layers:two"), "error: student 'layers:two': expected layers:N"),
            (("--student", str(tmp_path / "none.gguf")), "error: student '"),
            (("--min-confidence", "2"), "error: min_confidence 2.0: expected a probability")):
        result = run_cli(*distill_args(tiny, dataset, tmp_path / "out", "--max-steps", "1", *extra))
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert errors[0].startswith(expected), errors[0]
    table = tmp_path / "inputs.csv"
    table.write_text("input,label\nsalt and cup,\ncup and mat,yes\n")
    result = run_cli("data", "check", str(dataset), "--unlabelled", str(table), "--model", str(tiny[0]))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        f"error: {table}:3: this row has a label (label = 'yes'); a file of unlabelled inputs holds inputs only "
        f"(labelled rows go in the training file)"), result.stderr
    table.write_text("input,label\nsalt and cup,\ncup and mat,\nsalt and cup,\n")
    result = run_cli("data", "check", str(dataset), "--unlabelled", str(table), "--model", str(tiny[0]), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unlabelled"] == {"file": str(table), "inputs": 2, "repeats": 1,
                                                       "already_labelled": 0}


def test_torchrun_with_a_teacher_matches_one_process(tiny, dataset, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    from tests.test_finetune import losses

    common = ("--max-steps", "4", "--eval-every", "100", "--save-every", "100", "--teacher", str(tiny[0]),
              "--kd-weight", "1", "--kd-top-k", "16")
    single = tmp_path / "single"
    assert run_cli(*finetune_args(tiny, dataset, single, *common)).returncode == 0
    double = tmp_path / "double"  # the first process scores the teacher; the other reads its cache
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                             str(29600 + os.getpid() % 1000), "-m", "tinytitan",
                             *finetune_args(tiny, dataset, double, *common)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout
    assert losses(double) == pytest.approx(losses(single), rel=1e-4)  # each process's share of the teacher's rows
