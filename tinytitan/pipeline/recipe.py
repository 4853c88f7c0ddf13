"""A recipe: one task from data to a served specialist, as one typed file (`tinytitan run RECIPE`).

    # tinytitan run recipes/ingredients.toml
    name = "ingredients"
    output = "runs/ingredients"

    [task]                      # where the rows come from
    kind = "ingredients"        # a built-in task (tinytitan/data/tasks) or "files"
    csv = "data/ingredients/tastecooking-ingredients-2024.csv"   # its sources, relative to this file

    [finetune]                  # any `tinytitan finetune` key
    [export]                    # to, quant, gate_rows, force
    [eval]                      # task, rows, base_shots, max_tokens, constrained, likelihood, tolerance
    [report]                    # bench, context
    [vocab]                     # trim ("train", "export" or "off"), keep_top, negatives
    [distill]                   # student ("" = none, base, layers:N, a GGUF), unlabelled, min_confidence, ...
                                # and any [finetune] key for the student (epochs, kd_weight, ...)

A `files` task takes `train` (and optionally `val`, `test`) in any format `finetune` reads, with
the data-column keys (`format`, `input_column`, `output_columns`, ...) in [finetune]. Every key
can be overridden from the command line: `--set finetune.epochs=1 --set export.quant=q8_0,q4_k_m`, or from
Python by section: `tinytitan.run(RECIPE, finetune={"epochs": 1}, export={"quant": ["q8_0"]})`. Both land in
the file's table before it is read, so they are checked as the file's own keys are. Unknown sections and keys
are errors naming them.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.train.config import FIELDS as FINETUNE_FIELDS
from tinytitan.train.config import FinetuneConfig, coerce_setting, read_table
from tinytitan.errors import TinyTitanError

# data keys of [finetune] that describe the source files; a built-in task writes JSONL, so they apply to `files` only
DATA_KEYS = {"format", "input_column", "output_columns", "input_template", "columns", "encoding"}
# [finetune] keys the recipe sets itself
MANAGED_KEYS = {"train", "val", "test", "output"}


@dataclass
class ExportSettings:
    to: list[str] = field(default_factory=lambda: ["gguf", "adapter"])
    quant: list[str] = field(default_factory=lambda: ["f16", "q8_0", "q4_k_m"])
    gate_rows: int = 64
    force: bool = True  # keep artifacts that fail the parity gate (marked failed), so the report shows them


@dataclass
class EvalSettings:
    task: str = "auto"
    rows: int = 0  # test rows to score; 0 = all
    base_shots: int = 3
    max_tokens: int = 256
    constrained: bool = True  # JSON tasks: a schema inferred from the training targets; labels: the label set
    likelihood: bool = True  # classification: also score every label's likelihood (slow with many labels)
    tolerance: float = 0.02  # the recommended artifact: the smallest within this of the best (a fraction)
    baseline: bool = True  # a classical baseline trained on the training rows, scored beside (evaluate/baseline.py)


@dataclass
class ReportSettings:
    bench: bool = True
    bench_reps: int = 3  # repetitions of each speed measurement
    context: str = "none"  # context lengths for the base model's scaling curve, e.g. "1024,4096"


@dataclass
class VocabSettings:
    """The task vocabulary (tinytitan/shrink/vocabulary.py): `train` fine-tunes in it from the start (a trimmed base,
    and every artifact after it trimmed alike); `export` fine-tunes in the full vocabulary and adds trimmed
    copies of the exported artifacts beside the untrimmed; `off` keeps the full 262,144 tokens."""

    trim: str = "export"  # measured better than "train" (docs/pruning.md); the report picks by score
    keep_top: int = 4000  # the most frequent tokens of general English also kept, for inputs unlike the data
    negatives: int = 1024  # trim = "train": dropped tokens kept in the training softmax (vocabulary.head_negatives)


TRIM_MODES = ("train", "export", "off")


@dataclass
class Recipe:
    path: Path
    name: str
    output: Path
    kind: str
    sources: dict[str, Path]
    options: dict
    finetune: dict  # FinetuneConfig keys (without train/val/test/output)
    export: ExportSettings
    eval: EvalSettings
    report: ReportSettings
    vocab: VocabSettings = field(default_factory=VocabSettings)
    distill: "DistillSettings | None" = None  # a student taught by this run's specialist (train/distill.py)
    distill_finetune: dict = field(default_factory=dict)  # [finetune] keys the student trains with instead

    def finetune_config(self, data: Path, threads: int = 0, sources: bool = False) -> FinetuneConfig:
        """The fine-tuning settings over the prepared rows in `data` (UTF-8 JSONL that describes itself:
        the data keys, such as format and encoding, are dropped), or with `sources`, the settings that
        read a `files` task's own files."""
        values = {**self.finetune, "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"),
                  "test": str(data / "test.jsonl"), "output": str(self.output / "train")}
        if threads:
            values["threads"] = threads
        if not (sources and self.kind == "files"):
            for key in DATA_KEYS:
                values.pop(key, None)
        return FinetuneConfig(**values)


SECTIONS = {"task", "finetune", "export", "eval", "report", "vocab", "distill"}


def load_recipe(path: str | Path, overrides: Sequence[str] = (), settings: Mapping | None = None) -> Recipe:
    """The recipe at `path`, with `overrides` (`--set SECTION.KEY=VALUE` texts) and then `settings` (the same
    by section, as Python values: `{"finetune": {"epochs": 1}, "name": "quick"}`) written over its keys."""
    path = Path(path)
    raw = read_table(path, "recipe")
    for override in overrides:
        _apply_override(raw, override)
    for key, value in (settings or {}).items():
        if isinstance(value, Mapping):
            for inner, inner_value in value.items():
                _override(raw, [key, inner], inner_value, f"{key}={{{inner!r}: ...}}")
        else:
            _override(raw, [key], value, f"{key}=...")
    unknown = sorted(set(raw) - SECTIONS - {"name", "output"})
    if unknown:
        raise TinyTitanError(f"{path}: unknown key or section {unknown[0]!r} "
                             f"(expected name, output and the sections {', '.join(sorted(SECTIONS))})")
    for section in SECTIONS & set(raw):
        if not isinstance(raw[section], dict):
            raise TinyTitanError(f"{path}: [{section}] must be a table")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise TinyTitanError(f"{path}: name {name!r} must be ASCII letters, digits, - and _ (it names files and the "
                             f"served model)")
    if not isinstance(raw.get("output", ""), (str, os.PathLike)):
        raise TinyTitanError(f"{path}: output {raw['output']!r} must be a folder path")
    output = Path(raw.get("output") or f"runs/{name}")
    kind, sources, options = _task(path, dict(raw.get("task", {})))
    finetune = dict(raw.get("finetune", {}))
    for key in finetune:
        if key in MANAGED_KEYS:
            raise TinyTitanError(f"{path}: [finetune] {key} is set by the recipe (use [task] for data files)")
        if key not in FINETUNE_FIELDS:
            raise TinyTitanError(f"{path}: [finetune] unknown key {key!r} (see `tinytitan finetune --help`)")
        finetune[key] = coerce_setting(key, finetune[key], str(path))
    FinetuneConfig(**finetune)  # every value checked now, not after the data is prepared
    distill, distill_finetune = _distill(path, dict(raw["distill"]), finetune) if "distill" in raw else (None, {})
    return Recipe(path, name, output, kind, sources, options, finetune,
                  _settings(ExportSettings, raw.get("export", {}), path, "export"),
                  _settings(EvalSettings, raw.get("eval", {}), path, "eval"),
                  _settings(ReportSettings, raw.get("report", {}), path, "report"),
                  _settings(VocabSettings, raw.get("vocab", {}), path, "vocab"), distill, distill_finetune)


def _distill(path: Path, values: dict, finetune: dict):
    """[distill]: the student's settings (None when `student = ""`) and the [finetune] keys it trains with
    instead of the specialist's."""
    from tinytitan.train.distill import DistillSettings

    own = {f.name for f in dataclasses.fields(DistillSettings)}
    overrides = {}
    for key in [k for k in values if k not in own]:
        if key in MANAGED_KEYS | {"teacher", "model"} or key not in FINETUNE_FIELDS:
            raise TinyTitanError(f"{path}: [distill] unknown key {key!r} (known: {', '.join(sorted(own))}, and "
                                 f"[finetune] keys for the student)")
        overrides[key] = coerce_setting(key, values.pop(key), str(path))
    student = {**finetune, **overrides}
    if "head_vocab" not in overrides:  # the specialist's task softmax is not the student's: its teacher has all tokens
        student["head_vocab"] = "full"
    try:
        FinetuneConfig(**{**student, "teacher": "the specialist"})
    except TinyTitanError as error:
        raise TinyTitanError(f"{path}: [distill] {error}") from None
    settings = _settings(DistillSettings, values, path, "distill")
    if not settings.student:
        return None, {}
    if settings.unlabelled:
        file = Path(settings.unlabelled).expanduser()
        settings.unlabelled = str(file if file.is_absolute() else path.parent / file)
    if settings.student not in ("base",) and not settings.student.startswith("layers:"):
        file = Path(settings.student).expanduser()
        settings.student = str(file if file.is_absolute() else path.parent / file)
    try:
        settings.validate()
    except TinyTitanError as error:
        raise TinyTitanError(f"{path}: [distill] {error}") from None
    depth = settings.student.removeprefix("layers:")
    if settings.student.startswith("layers:") and depth.isdigit() and student.get("train_layers", 0) > int(depth):
        raise TinyTitanError(f"{path}: [distill] train_layers {student['train_layers']} is more than the student's "
                             f"{depth} layers")
    return settings, {**overrides, "head_vocab": student["head_vocab"]}


def _task(path: Path, spec: dict) -> tuple[str, dict[str, Path], dict]:
    from tinytitan.data.tasks import TASKS, task_module

    kind = spec.pop("kind", "files")
    if kind == "files":
        allowed_sources, parameters = ("train", "val", "test"), {}
    elif kind in TASKS:
        module = task_module(kind)
        allowed_sources = module.SOURCES
        parameters = {k: p.default for k, p in inspect.signature(module.prepare).parameters.items()
                      if p.kind == p.KEYWORD_ONLY}
    else:
        raise TinyTitanError(f"{path}: [task] kind {kind!r} is not one of files, {', '.join(TASKS)}")
    sources, options = {}, {}
    for key, value in spec.items():
        if key in allowed_sources:
            if not isinstance(value, str) or not value:
                raise TinyTitanError(f"{path}: [task] {key} must be a file path")
            file = Path(value).expanduser()
            sources[key] = file if file.is_absolute() else path.parent / file
        elif key in parameters:
            options[key] = _typed(value, parameters[key], f"{path}: [task] {key}")
        else:
            known = ", ".join([*allowed_sources, *parameters])
            raise TinyTitanError(f"{path}: [task] unknown key {key!r} for kind {kind!r} (known: {known})")
    required = ("train",) if kind == "files" else getattr(module, "REQUIRED", allowed_sources)
    missing = [s for s in required if s not in sources]
    if missing:
        raise TinyTitanError(f"{path}: [task] needs {missing[0]} (a file path)")
    return kind, sources, options


def _settings(cls, values, path: Path, section: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise TinyTitanError(f"{path}: [{section}] unknown key {key!r} (known: {', '.join(fields)})")
        default = fields[key].default if fields[key].default is not dataclasses.MISSING else fields[key].default_factory()
        out[key] = _typed(value, default, f"{path}: [{section}] {key}")
    settings = cls(**out)
    if isinstance(settings, EvalSettings):
        if not 0 <= settings.tolerance < 1 or settings.rows < 0 or settings.base_shots < 0 or settings.max_tokens < 1:
            raise TinyTitanError(f"{path}: [eval] tolerance must be in [0, 1), rows and base_shots >= 0, "
                                 f"max_tokens >= 1")
    if isinstance(settings, VocabSettings) and settings.trim not in TRIM_MODES:
        raise TinyTitanError(f"{path}: [vocab] trim {settings.trim!r}: expected one of {', '.join(TRIM_MODES)}")
    if isinstance(settings, VocabSettings) and settings.keep_top < 0:
        raise TinyTitanError(f"{path}: [vocab] keep_top must be >= 0 (0: only the data's tokens)")
    if isinstance(settings, VocabSettings) and settings.negatives < 0:
        raise TinyTitanError(f"{path}: [vocab] negatives must be >= 0 (0: train on the kept tokens' softmax alone)")
    if isinstance(settings, ExportSettings) and settings.gate_rows < 1:
        raise TinyTitanError(f"{path}: [export] gate_rows must be >= 1")
    return settings


def _typed(value, default, where: str):
    """`value` in the type of `default` (lists from comma-separated text too)."""
    kind = type(default)
    if isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TinyTitanError(f"{where}: expected a list of names, not {value!r}")
        return value
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise TinyTitanError(f"{where}: expected true or false, not {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise TinyTitanError(f"{where}: expected a number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise TinyTitanError(f"{where}: expected {'a whole number' if kind is int else 'a number'}, not {value!r}")
        return kind(value)
    if kind is tuple:
        return tuple(_typed(value, [], where))
    if not isinstance(value, str):
        raise TinyTitanError(f"{where}: expected text, not {value!r}")
    return value


def _apply_override(raw: dict, text: str) -> None:
    """`section.key=value` (or `name=value`) from `--set`; values as TOML would read them, else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TinyTitanError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. finetune.epochs=1")
    import tomllib

    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    parts = key.strip().split(".")
    if len(parts) > 2:
        raise TinyTitanError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    _override(raw, parts, parsed, f"--set {text!r}")


def _override(raw: dict, parts: list[str], value, where: str) -> None:
    """Write `value` at `name` or `section.key` of a recipe's table (read as the file's own keys are, after)."""
    if len(parts) == 1:
        raw[parts[0]] = value
        return
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise TinyTitanError(f"{where}: {parts[0]} is not a section")
    section[parts[1]] = value
