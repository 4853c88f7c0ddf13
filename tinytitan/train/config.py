"""Fine-tuning settings: one typed dataclass, merged in one place as flags > recipe file > defaults.

A recipe (`recipe.load_recipe`, the one format `tinytitan run` reads) holds these keys in its
[finetune] table; its first line is a comment with the command that runs it. Unknown keys, wrong
types and bad values are errors that name the key. Every key is also a flag: `lora_rank` is
`--lora-rank`, list values are comma-separated (`--output-columns name,unit`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.model.registry import DEFAULT_MODEL

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    # model and data
    model: str = DEFAULT_MODEL
    train: str = ""  # a JSONL/CSV/TSV file; split into train/val/test when val is not given
    val: str = ""
    test: str = ""
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    format: str = "auto"  # auto | jsonl | csv | tsv
    input_column: str = ""
    output_columns: list[str] = field(default_factory=list)
    input_template: str = ""
    columns: list[str] = field(default_factory=list)  # names for a headerless CSV/TSV
    system: str = ""
    encoding: str = "utf-8"  # the data files' text encoding: any Python codec, or cesu-8
    max_length: int = 512
    skip_bad: bool = False
    max_bad_fraction: float = 0.05
    max_rows: int = 0  # use at most this many training rows (0 = all)
    # method
    method: str = "lora"  # lora | full
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    train_embeddings: bool = False  # full fine-tuning: also train the (tied) embeddings / LM head
    # train only the top N decoder layers (adapters or weights; 0 = all): those below run without autograd,
    # once per row (train/frozen.py)
    train_layers: int = 0
    # optimization
    epochs: float = 2.0
    max_steps: int = 0  # 0 = as many as `epochs` take
    time_limit: float = 0.0  # seconds of training after which the run ends as at its last step (0 = none)
    batch_tokens: int = 1024  # padded tokens per micro-batch, filled from length buckets
    grad_accum: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 where the CPU supports it) | bf16 | fp32
    head_chunk: int = 128  # rows of the LM head computed at once
    # auto: task where training runs in fp32 (no bf16 kernels: the full head is over half of each step), else full |
    # task: the training softmax over the task's tokens, the likeliest others and the tokens steps mine (train/head.py;
    # on the AVX2 demo 0.58-0.70x the fine-tune time and 6.2 points more exact match: docs/finetune.md) | full
    head_vocab: str = "auto"
    head_negatives: str = ""  # frozen head rows (.npy) in the softmax, never targets (vocabulary.head_negatives)
    # distillation (train/teacher.py): a teacher's next-token distributions beside the targets
    teacher: str = ""  # a GGUF, BASE+ADAPTER.gguf or run folder with the student's tokenizer; "" = none
    kd_weight: float = 0.5  # weight of KL(teacher || student) beside the cross-entropy
    kd_temperature: float = 1.0  # both distributions softened by it (the KL term is scaled by its square)
    kd_top_k: int = 64  # teacher tokens kept per position (the rest of its mass is left out)
    kd_divergence: str = "forward"  # forward: KL(teacher || student); reverse: KL(student || teacher) on its top-k
    kd_dtype: str = "float32"  # the cached log-probs: float32, or float16 (half the disk and memory)
    # evaluation and checkpoints
    eval_every: int = 50
    early_stopping: int = 3  # stop after this many evaluations without improvement (0 = never)
    keep: str = "best"  # what best/ (the weights exported) holds: best = the lowest validation loss, last = the end
    save_every: int = 50
    keep_checkpoints: int = 2
    # run
    output: str = "runs/finetune"
    seed: int = 0
    threads: int = 0  # 0 = all cores (divided among processes under torchrun)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(key: str, expected: str):
            raise TinyTitanError(f"{key}: {getattr(self, key)!r} is not valid (expected {expected})")

        for name, value in self.as_dict().items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad(name, "a finite number")

        choices = {"format": ("auto", "jsonl", "csv", "tsv"), "method": ("lora", "full"),
                   "scheduler": ("cosine", "linear", "constant"), "precision": ("auto", "bf16", "fp32"),
                   "keep": ("best", "last"), "head_vocab": ("auto", "full", "task")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, " | ".join(allowed))
        for key in ("max_length", "lora_rank", "batch_tokens", "grad_accum", "eval_every", "save_every",
                    "keep_checkpoints", "head_chunk", "kd_top_k"):
            if getattr(self, key) < 1:
                bad(key, "a whole number >= 1")
        for key in ("max_steps", "early_stopping", "threads", "max_rows", "seed", "train_layers"):
            if getattr(self, key) < 0:
                bad(key, "a whole number >= 0")
        if self.max_length < 8:
            bad("max_length", ">= 8")
        if not self.epochs > 0:
            bad("epochs", "a number > 0")
        if not 0 < self.learning_rate < 1:
            bad("learning_rate", "a number in (0, 1)")
        for key in ("lora_dropout", "warmup_ratio", "min_lr_ratio", "max_bad_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "a number in [0, 1]")
        if self.kd_weight < 0:
            bad("kd_weight", "a number >= 0")
        if self.head_vocab == "task" and self.teacher and self.kd_weight:
            bad("head_vocab", "full when distilling from a teacher: its tokens are the whole vocabulary's")
        if self.time_limit < 0:
            bad("time_limit", "seconds >= 0 (0 = none)")
        if not self.kd_temperature > 0:
            bad("kd_temperature", "a number > 0")
        if self.kd_divergence not in ("forward", "reverse"):
            bad("kd_divergence", "forward or reverse")
        if self.kd_dtype not in ("float32", "float16"):
            bad("kd_dtype", "float32 or float16")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.lora_alpha <= 0:
            raise TinyTitanError("weight_decay and max_grad_norm must be >= 0, lora_alpha > 0")
        from tinytitan.data.encodings import check_encoding

        check_encoding(self.encoding)
        if len(self.split) != 3 or any(x < 0 for x in self.split) or abs(sum(self.split) - 1) > 1e-6:
            bad("split", "three fractions train, val, test summing to 1")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown or not self.lora_targets:
            raise TinyTitanError(f"lora_targets: {unknown or '[]'} not allowed (choose from {', '.join(LORA_TARGETS)})")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
_HINTS = typing.get_type_hints(FinetuneConfig)


def read_table(path: str | Path, what: str = "recipe") -> dict:
    """A TOML, YAML or JSON file's top-level table; unreadable or malformed files are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such {what} file")
    try:
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        elif suffix == ".json":
            import json

            raw = json.loads(text)
        else:
            raise TinyTitanError(f"{path}: a {what} is a .toml, .yaml or .json file")
    except TinyTitanError:
        raise
    except OSError as error:
        raise TinyTitanError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise TinyTitanError(f"{path}: the {what} is not UTF-8 text") from None
    except Exception as error:  # tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError
        raise TinyTitanError(f"{path}: cannot parse the {what} ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TinyTitanError(f"{path}: a {what} must be a table of keys")
    return raw


def finetune_settings(path: str | Path) -> dict:
    """The fine-tuning settings of a recipe (the one format `tinytitan run` reads, docs/recipes.md): its
    [finetune] keys, the data files of its `files` task ([task] train, val, test) and its training folder
    (OUTPUT/train, where `run` trains too). A built-in task's rows are made by `run`'s prepare stage."""
    from tinytitan.pipeline.recipe import load_recipe

    recipe = load_recipe(path)
    if recipe.kind != "files":
        raise TinyTitanError(f"{path}: the {recipe.kind!r} task's rows are prepared by `tinytitan run {path}`; "
                             f"`finetune` reads a files task ([task] train = ...)")
    if recipe.vocab.trim == "train":
        raise TinyTitanError(f"{path}: [vocab] trim = \"train\" fine-tunes on a base that `tinytitan run {path}` trims "
                             f"first; for `finetune`, trim it yourself (`tinytitan trim`) and give it as model")
    values = {**recipe.finetune, "output": str(recipe.output / "train")}
    values.update({name: str(file) for name, file in recipe.sources.items()})
    return values


def coerce_setting(key: str, value, origin: str):
    hint = _HINTS[key]
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        item = typing.get_args(hint)[0]  # list[...]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError
        return [item(v) for v in value]
    except (TypeError, ValueError):
        names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
        expected = names[hint] if hint in names else f"a list of {names[typing.get_args(hint)[0]]}s"
        where = f"{origin}: {value!r}" if origin.startswith("--") else f"{origin}: {key} = {value!r}"
        raise TinyTitanError(f"{where} is not {expected}") from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per key; defaults are None so that only flags actually given override the recipe."""
    group = parser.add_argument_group("settings (flags override the recipe; the recipe overrides defaults)")
    for name, spec in FIELDS.items():
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        extra = {"nargs": "?", "const": "true"} if _HINTS[name] is bool else {}
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=None, metavar="V",
                           help=f"(default: {shown!r})", **extra)


def build_config(recipe: str | None, args: argparse.Namespace) -> FinetuneConfig:
    values = finetune_settings(recipe) if recipe else {}
    for name in FIELDS:
        given = getattr(args, f"cfg_{name}", None)
        if given is not None:
            values[name] = coerce_setting(name, given, f"--{name.replace('_', '-')}")
    return FinetuneConfig(**values)
