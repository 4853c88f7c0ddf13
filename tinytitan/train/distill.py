"""`tinytitan distill --teacher T --student S --train rows.jsonl [--unlabelled inputs.txt] -o OUT`.

A teacher (a fine-tuning run, or any Gemma 3 GGUF, run through llama.cpp) teaches a student:

1. **the student**: `base` (the model the settings name), `layers:N` (a copy of the teacher with its N
   most important layers, measured on the training rows: `shrink/prune.py`), or a GGUF of the same
   tokenizer (a task-vocabulary model from `tinytitan trim`, a depth-pruned one from `tinytitan prune`);
2. **teacher labels** (with `--unlabelled`): the teacher answers every input the labelled rows lack,
   greedy (constrained by the targets' JSON schema for a JSON task, so every answer is schema-valid),
   and answers it is unsure of (its lowest token probability under `--min-confidence`) are left out;
   the kept ones join the training rows (never validation or test);
3. **fine-tuning** with the teacher's top-k next-token distributions beside the targets
   (`finetune --teacher`, `train/teacher.py`, `train/loss.py`).

OUT is a fine-tuning run (export, eval and report read it as any other) that also holds
`distill/` (the student GGUF, the labels, the rows trained on, `distill.json`). Each step is cached
by what it was computed from, so a re-run (or `--resume` after an interruption) redoes only what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.pipeline.folder import digest as _digest


@dataclass
class DistillSettings:
    student: str = "base"  # base | layers:N | a GGUF with the teacher's tokenizer (or a task vocabulary of it)
    unlabelled: str = ""  # inputs for the teacher to label (.txt, .jsonl, .csv, .tsv); "" = none
    max_unlabelled: int = 0  # label at most this many of them (0 = all), spread over the file by a stable hash
    min_confidence: float = 0.5  # keep a teacher answer whose lowest token probability is at least this
    label_tokens: int = 256  # tokens per teacher answer, at most (longer ones are left out, counted)
    prune_rows: int = 64  # rows the layers' importance is measured on (layers:N)

    def validate(self) -> None:
        if self.student not in ("", "base") and not self.student.startswith("layers:") \
                and not Path(self.student).is_file():
            raise TinyTitanError(f"student {self.student!r}: expected base, layers:N or a GGUF file")
        if self.student.startswith("layers:") and not self.student[7:].isdigit():
            raise TinyTitanError(f"student {self.student!r}: expected layers:N with N a whole number of layers")
        if not 0 <= self.min_confidence <= 1:
            raise TinyTitanError(f"min_confidence {self.min_confidence}: expected a probability from 0 to 1")
        if self.max_unlabelled < 0 or self.label_tokens < 1 or self.prune_rows < 1:
            raise TinyTitanError("max_unlabelled >= 0, label_tokens >= 1 and prune_rows >= 1 expected")


def add_arguments(parser) -> None:
    from tinytitan.train.config import add_config_flags

    parser.add_argument("recipe", nargs="?", default=None, help="a recipe file (.toml or .yaml) for the settings")
    parser.add_argument("--resume", action="store_true", help="continue the distillation in --output")
    parser.add_argument("--student", default="base",
                        help="base (the --model), layers:N (the teacher's N most important layers) or a GGUF")
    parser.add_argument("--unlabelled", default="", metavar="FILE",
                        help="inputs without answers for the teacher to label (.txt, .jsonl, .csv, .tsv)")
    parser.add_argument("--max-unlabelled", type=options.positive_int, default=0, help="label at most this many")
    parser.add_argument("--min-confidence", type=float, default=0.5,
                        help="keep a teacher answer whose lowest token probability is at least this (default 0.5)")
    parser.add_argument("--label-tokens", type=options.positive_int, default=256,
                        help="tokens per teacher answer, at most")
    parser.add_argument("--prune-rows", type=options.positive_int, default=64,
                        help="rows the layers' importance is measured on (--student layers:N)")
    add_config_flags(parser)


def run(args) -> None:
    from tinytitan.files import FolderLock
    from tinytitan.train.config import build_config

    config = build_config(args.recipe, args)
    settings = DistillSettings(args.student, args.unlabelled, args.max_unlabelled or 0, args.min_confidence,
                               args.label_tokens, args.prune_rows)
    with FolderLock(Path(config.output), "distill"):
        summary = distill(config, settings, resume=args.resume)
    print(json.dumps(summary))


def distill(config, settings: DistillSettings, *, resume: bool = False, say=print) -> dict:
    """Build the student, label the unlabelled inputs, fine-tune with the teacher: OUT = config.output."""
    from tinytitan.train.finetune import train
    from tinytitan.train.teacher import teacher_artifact

    settings.validate()
    if not config.teacher:
        raise TinyTitanError("no teacher: give --teacher RUN_OR_GGUF (recipe key finetune.teacher)")
    if not config.train:
        raise TinyTitanError("no training data: give `train` in the recipe or --train FILE")
    teacher_artifact(config.teacher)  # a teacher that cannot run fails before any work
    out = Path(config.output)
    work = out / "distill"
    work.mkdir(parents=True, exist_ok=True)
    splits = _splits(config)
    student = _student(config, settings, splits["train"], work, say)
    labels = _labels(config, settings, splits, work, say) if settings.unlabelled else None
    rows = _write_rows(splits, labels["rows"] if labels else [], work)
    trained = replace(config, model=student["model"], train=rows["train"], val=rows["val"], test=rows["test"],
                      format="auto", input_column="", output_columns=[], input_template="", columns=[],
                      encoding="utf-8")
    say(f"distilling {config.teacher} into {student['describe']}: {rows['counts']['train']:,} training rows"
        + (f" ({len(labels['rows']):,} labelled by the teacher)" if labels else ""))
    result = train(trained, resume=resume)
    summary = {"output": str(out), "teacher": config.teacher, "student": student,
               "labels": {k: v for k, v in labels.items() if k != "rows"} if labels else None,
               "rows": rows["counts"], "finetune": result.summary}
    if result.is_main:
        from tinytitan.files import write_json

        write_json(work / "distill.json", summary)
    return summary


def _splits(config) -> dict[str, list]:
    """The labelled rows as fine-tuning would split them (teacher labels join only the training split)."""
    from tinytitan.data.check import split_rows

    reports, raw, _ = split_rows(config)
    bad = [r for report in reports for r in report.rejected]
    if bad and not config.skip_bad:
        raise TinyTitanError(f"{len(bad)} bad rows (first: {bad[0]}); fix them or pass --skip-bad")
    return raw


def _student(config, settings: DistillSettings, train_rows: list, work: Path, say) -> dict:
    if settings.student in ("", "base"):
        return {"model": config.model, "describe": f"the base model ({config.model})"}
    if not settings.student.startswith("layers:"):
        return {"model": settings.student, "describe": settings.student}
    from tinytitan.train.teacher import teacher_artifact

    layers = int(settings.student[7:])
    source = _teacher_weights(config.teacher, teacher_artifact(config.teacher))
    key = {"source": _identity(source), "layers": layers, "rows": settings.prune_rows,
           "data": _rows_digest(train_rows[:settings.prune_rows]), "max_length": config.max_length}
    target, record = work / "student.gguf", work / "student.json"
    saved = _read(record)
    if saved.get("key") == key and target.is_file():
        return saved["student"]
    from tinytitan.files import write_json
    from tinytitan.shrink.prune import prune_model

    say(f"student: the {layers} most important layers of {source} (measured on {settings.prune_rows} rows)")
    building = target.with_name("student.new.gguf")
    result = prune_model(source, train_rows[:settings.prune_rows], layers, building, config.max_length)
    building.replace(target)
    student = {"model": str(target), "describe": f"{layers} of {result['layers']} layers of the teacher "
                                                  f"(kept {', '.join(map(str, result['kept']))})",
               "kept": result["kept"], "importance": result["importance"], "layers": result["layers"]}
    write_json(record, {"key": key, "student": student})
    return student


def _teacher_weights(spec: str, artifact) -> str:
    """What a depth-pruned student is cut from: a run's trained weights (merged, full precision), else the
    teacher's GGUF."""
    folder = Path(spec)
    if (folder / "train" / "config.json").is_file():
        return str(folder / "train")
    if (folder / "config.json").is_file():
        return str(folder)
    if artifact.adapter:
        raise TinyTitanError(f"teacher {spec}: a depth-pruned student is cut from one model; give the teacher's "
                             f"run folder or a merged GGUF, not BASE+ADAPTER")
    return str(artifact.path) if artifact.path else "base"


def _labels(config, settings: DistillSettings, splits: dict, work: Path, say) -> dict:
    """The teacher's kept answers to the unlabelled inputs (cached in distill/labels.json by the teacher,
    the inputs and the settings), with what was left out and why. An input of any labelled split is left
    out: a validation or test input labelled for training would leak into the score."""
    from tinytitan.data.splits import stable_hash
    from tinytitan.data.unlabelled import read_unlabelled
    from tinytitan.files import write_json
    from tinytitan.train.teacher import label_inputs, teacher_artifact

    unlabelled = read_unlabelled(settings.unlabelled, config.input_column or None, config.encoding)
    train_rows = splits["train"]
    known = {example.input_text for rows in splits.values() for example in rows}
    fresh = [text for text in unlabelled.inputs if text not in known]
    fresh.sort(key=stable_hash)  # a slice is spread over the file, and the same for the same inputs
    inputs = fresh[:settings.max_unlabelled] if settings.max_unlabelled else fresh
    if not inputs:
        raise TinyTitanError(f"--unlabelled {settings.unlabelled}: every input is already a labelled training row")
    schema = _schema(train_rows)
    key = {"teacher": teacher_artifact(config.teacher).identity(), "inputs": _digest(inputs),
           "system": config.system, "schema": schema, "min_confidence": settings.min_confidence,
           "label_tokens": settings.label_tokens}
    record = work / "labels.json"
    saved = _read(record)
    if saved.get("key") == key:
        return saved["labels"]
    say(f"teacher labels: {len(inputs):,} inputs ({unlabelled.repeats} repeats and {len(unlabelled.inputs) - len(fresh)}"
        f" already labelled left out)" + (", constrained by the targets' JSON schema" if schema else ""))
    labelled = label_inputs(config.teacher, inputs, system=config.system, schema=schema,
                            min_confidence=settings.min_confidence, max_tokens=settings.label_tokens,
                            threads=config.threads or None)
    import numpy as np

    quantiles = np.quantile(labelled.confidences, [0.1, 0.25, 0.5]).round(4).tolist() if labelled.confidences else []
    labels = {"inputs": len(inputs), "kept": len(labelled.rows), "dropped": labelled.dropped,
              "min_confidence": settings.min_confidence, "confidence_p10_p25_p50": quantiles,
              "repeats": unlabelled.repeats, "already_labelled": len(unlabelled.inputs) - len(fresh),
              "constrained": schema is not None, "rows": labelled.rows}
    write_json(record, {"key": key, "labels": labels}, ensure_ascii=False)
    say(f"teacher labels: kept {labels['kept']:,} of {len(inputs):,} (confidence >= {settings.min_confidence}; "
        f"left out: {', '.join(f'{v} {k}' for k, v in labelled.dropped.items())})")
    return labels


def _schema(train_rows: list) -> dict | None:
    """The training targets' JSON schema when every target is a JSON object (the teacher's labels are
    then constrained to it), else None."""
    from tinytitan.data.schema import infer_schema
    from tinytitan.evaluate.metrics import json_answers

    answers = json_answers([example.completion for example in train_rows])
    if not answers or not all(isinstance(answer, dict) for answer in answers):
        return None
    return infer_schema(answers, inputs=[example.input_text for example in train_rows])


def _write_rows(splits: dict, labelled: list[dict], work: Path) -> dict:
    """distill/{train,val,test}.jsonl: the rows trained and validated on, teacher labels in training only."""
    from tinytitan.data.tasks import write_jsonl

    paths, counts = {}, {}
    for name in ("train", "val", "test"):
        rows = [example.as_row() for example in splits.get(name, [])]
        if name == "train":
            rows += [{k: v for k, v in row.items() if k != "confidence"} for row in labelled]
        path = work / f"{name}.jsonl"
        counts[name] = write_jsonl(path, rows) if rows else 0
        paths[name] = str(path) if rows else ""
    return {**paths, "counts": counts}


def _rows_digest(examples) -> str:
    return _digest([[m.content for m in e.messages] + [e.completion] for e in examples])


def _identity(spec: str) -> list:
    """A model's files (a run's: its settings and best weights) by path, size and time."""
    path = Path(spec)
    files = [path / "config.json", *sorted((path / "best").glob("*"))] if path.is_dir() else [path]
    return [spec] + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
