"""The Python API: a specialist as a function, as transformers' `pipeline` or mlx-lm's `load` give one.

    import tinytitan

    specialist = tinytitan.load("runs/ingredients")   # what the run's fleet.toml serves
    specialist("2 cups chopped onions")               # {"name": "onions", "quantity": "2", ...}
    specialist.batch(["1 tbsp olive oil", "salt"])    # [{...}, {...}], decoded together

`load(spec)` takes what `serve` and `eval` take:
- a `tinytitan run` folder: its recommended artifact, as RUN/fleet.toml serves it (model, adapter, schema,
  system prompt, max_tokens), read by `serve/fleet.py`;
- a fleet file, with `task=NAME` when it holds more than one task;
- an artifact as `eval` names it (`model/artifacts.py`): `FILE.gguf`, `BASE.gguf+ADAPTER.gguf`,
  `base+ADAPTER.gguf` or `base`, with an optional `schema=` (a dict or a JSON file), `labels=` and `system=`.

A call decodes as the evaluator does, so its answers are the ones `tinytitan eval` scores: greedy, the prompt
built by the one chat format (the system prompt, then the input as the user's turn), held to the task's
grammar (`data/grammar.py`: the schema's, as the server and eval make it, or exactly one of the labels), many
inputs decoded together by the llama engine's `generate_greedy_batch`. What comes back is parsed: a JSON task's
answer is a dict, a classification task's its label, any other task's the text. An answer that cannot be
parsed (with a grammar, only one that `max_tokens` cut short) raises `AnswerError`, which carries the text
decoded; the evaluator scores such an answer as wrong. A run's task kind and labels come from the run
(summary.json, its training rows). `tinytitan.run` is `pipeline/run.py`'s `run_recipe`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tinytitan.errors import TinyTitanError

FLEET_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
DEFAULT_MAX_TOKENS = 256  # as `eval` and a recipe's [eval] decode


class AnswerError(TinyTitanError):
    """An answer that is not what the task asks for: `text` is what the model wrote, `input` what it answered."""

    def __init__(self, message: str, *, input: str, text: str):
        super().__init__(message)
        self.input, self.text = input, text


class Specialist:
    """A task specialist as a function: `specialist(text)` answers one input, `specialist.batch(texts)` many.

    `answers` says what a call returns: "json" (the JSON value: a dict for an object schema), "label" (one
    of `labels`) or "text". `load` makes one; a schema and labels never come together.
    It holds a llama.cpp model open: `close()` it, or use it in a `with` block, to free it sooner."""

    def __init__(self, name: str, engine, *, answers: str = "text", schema: dict | None = None,
                 labels: Sequence[str] = (), system: str = "", max_tokens: int = DEFAULT_MAX_TOKENS,
                 model: Path | None = None, adapter: Path | None = None):
        assert answers in ("json", "label", "text"), answers
        self.name, self.engine, self.answers = name, engine, answers
        self.schema, self.labels, self.system = schema, tuple(labels), system
        self.max_tokens, self.model, self.adapter = max_tokens, model, adapter

    def __call__(self, text: str, *, max_tokens: int | None = None):
        """The parsed answer to one input."""
        if not isinstance(text, str):
            raise TinyTitanError(f"{self.name}: the input must be text, not {type(text).__name__} "
                                 f"(batch() takes a list of texts)")
        return self.batch([text], max_tokens=max_tokens)[0]

    def batch(self, texts: Iterable[str], *, max_tokens: int | None = None) -> list:
        """The parsed answers to many inputs, in order, decoded together (the same answers as one at a time)."""
        if isinstance(texts, str):
            raise TinyTitanError(f"{self.name}: batch() takes a list of texts, not one text (call the specialist "
                                 f"itself for one)")
        from tinytitan.data.grammar import answer_grammars
        from tinytitan.data.json_values import check_text
        from tinytitan.model.chat_format import Message, encode_chat

        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TinyTitanError(f"{self.name}: texts[{index}] must be text, not {type(text).__name__}")
            check_text(text, f"texts[{index}]")
        budget = self.max_tokens if max_tokens is None else positive_int(max_tokens, "max_tokens")
        if self.engine is None:
            raise TinyTitanError(f"{self.name}: this specialist was closed; load it again")
        system = [Message("system", self.system)] if self.system else []
        prompts = [encode_chat(self.engine, [*system, Message("user", text)]) for text in texts]
        grammars = answer_grammars(texts, schema=self.schema, labels=self.labels)  # as eval and the server hold them
        outputs = self.engine.generate_greedy_batch(prompts, max_tokens=budget, grammars=grammars)
        return [self._parse(text, output, budget) for text, output in zip(texts, outputs)]

    def _parse(self, text: str, output: str, budget: int):
        from tinytitan.data.json_values import parse_json
        from tinytitan.evaluate.metrics import parse_answer

        if self.answers == "text":
            return output
        if self.answers == "json":
            if self.schema is not None:  # any JSON value the schema describes
                try:
                    return parse_json(output)
                except ValueError:
                    pass
            elif (value := parse_answer(output)) is not None:  # a JSON task's object or array, as eval reads it
                return value
            why = (f"not complete JSON after max_tokens={budget} tokens (raise max_tokens)" if self.schema is not None
                   else "not JSON (give a schema to hold the answers to it)")
        else:
            if output.strip() in self.labels:
                return output.strip()
            why = f"not one of the {len(self.labels)} labels after max_tokens={budget} tokens (raise max_tokens)"
        raise AnswerError(f"{self.name}: the answer to {_clip(text)} is {why}: {_clip(output)}", input=text,
                          text=output)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> "Specialist":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        adapter = f", adapter={str(self.adapter)!r}" if self.adapter else ""
        return (f"Specialist({self.name!r}, answers={self.answers!r}, model={str(self.model or 'base')!r}{adapter}, "
                f"max_tokens={self.max_tokens})")


def load(spec: str | os.PathLike, *, task: str | None = None, schema: Mapping | str | os.PathLike | None = None,
         labels: Sequence[str] | None = None, system: str | None = None, max_tokens: int | None = None,
         threads: int | None = None) -> Specialist:
    """A specialist from a run folder, a fleet file (and `task`), or a GGUF artifact as `eval` names it.
    `schema` or `labels` replaces the answers a run or fleet task asks for (its schema, or a classification
    run's labels), `system` its system prompt; `max_tokens` caps each answer (default: the task's, else
    256); `threads`: CPU threads (default: all)."""
    from tinytitan.model.artifacts import BASE_NAMES

    if threads is not None:
        threads = positive_int(threads, "threads")
    budget = positive_int(max_tokens, "max_tokens") if max_tokens is not None else None
    given = _schema(schema) if schema is not None else None
    text = os.fspath(spec).strip() if isinstance(spec, (str, os.PathLike)) else None
    if not text:
        raise TinyTitanError(f"load({spec!r}): expected a run folder, a fleet file or a .gguf artifact")
    path = Path(text)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in FLEET_SUFFIXES):
        from tinytitan.serve.fleet import load_fleet, load_run

        fleet = _run_fleet(path) if path.is_dir() else _fleet_file(path)
        chosen = _pick(load_run(path) if path.is_dir() else load_fleet(fleet), task, fleet)
        answers, run_labels = _run_answers(fleet.parent)
        name, model, adapter, scale = chosen.name, chosen.model, chosen.adapter, chosen.adapter_scale
        schema = given
        if given is None and labels is None:  # the task's own (either one given replaces both)
            schema, labels = chosen.schema, run_labels
        system = chosen.system if system is None else system
        budget = budget or chosen.defaults.get("max_tokens", DEFAULT_MAX_TOKENS)
    else:
        if task is not None:
            raise TinyTitanError(f"task={task!r} names a task of a fleet file, and {text} is a model, not a fleet")
        if not path.exists() and "+" not in text and text not in BASE_NAMES:
            raise TinyTitanError(f"{text}: no such file or folder (expected a `tinytitan run` folder, a fleet file, "
                                 f"a .gguf file or BASE+ADAPTER.gguf)")
        from tinytitan.model.artifacts import parse_artifact

        artifact = parse_artifact(text)
        name, model, adapter, scale, answers = artifact.label, artifact.path, artifact.adapter, 1.0, None
        schema, system, budget = given, system or "", budget or DEFAULT_MAX_TOKENS
    if schema is not None and labels:
        raise TinyTitanError(f"{name}: give a schema (a JSON task) or labels (a classification task), not both")
    labels = _labels(labels or ())
    if not isinstance(system, str):
        raise TinyTitanError(f"system: expected text, not {type(system).__name__}")
    kind = "json" if schema is not None else "label" if labels else answers or "text"
    return Specialist(name, _open(name, model, adapter, scale, schema, threads), answers=kind, schema=schema,
                      labels=labels, system=system, max_tokens=budget, model=model, adapter=adapter)


def _run_fleet(folder: Path) -> Path:
    """The fleet file of a `tinytitan run` folder (`serve/fleet.py`'s `load_run` says what else is wrong)."""
    if not (folder / "fleet.toml").is_file() and not (folder / "stages.json").is_file():
        hint = (f"; a fine-tuning folder: load a GGUF its export wrote ({folder / 'export'}/NAME.gguf)"
                if (folder / "config.json").is_file() else "")
        raise TinyTitanError(f"{folder}: a folder, but not a `tinytitan run` folder (no fleet.toml or stages.json)"
                             f"{hint}")
    return folder / "fleet.toml"


def _fleet_file(path: Path) -> Path:
    """A fleet file, or a clear error for a recipe given in its place."""
    from tinytitan.train.config import read_table

    raw = read_table(path, "fleet")
    if "tasks" not in raw and ({"task", "finetune"} & set(raw)):
        raise TinyTitanError(f"{path}: a recipe, not a fleet file: run it (`tinytitan.run({str(path)!r})` or "
                             f"`tinytitan run {path}`) and load its run folder")
    return path


def _pick(tasks: list, name: str | None, fleet: Path):
    names = [t.name for t in tasks]
    if name is None:
        if len(tasks) > 1:
            raise TinyTitanError(f"{fleet}: holds the tasks {', '.join(names)}: pass task=NAME")
        return tasks[0]
    if name not in names:
        raise TinyTitanError(f"{fleet}: no task {name!r} (known: {', '.join(names)})")
    return tasks[names.index(name)]


def _run_answers(folder: Path) -> tuple[str | None, list[str]]:
    """What a run's answers are, from the report beside its fleet file (summary.json's task): "json" for an
    extraction task, "label" with the labels of its training rows for classification, else None (decided
    by the schema)."""
    from tinytitan.files import read_json

    summary = read_json(folder / "summary.json")
    task = summary.get("task") if isinstance(summary, dict) else None
    if task == "extraction":
        return "json", []
    train = folder / "data" / "train.jsonl"
    if task == "classification" and train.is_file():
        from tinytitan.data.rows import DataSpec, load_examples

        return "label", sorted({e.completion for e in load_examples(train, DataSpec(), duplicates="keep").examples})
    return None, []


def _schema(value) -> dict:
    """`schema=`: a JSON schema as a dict, or the path of a JSON file holding one; refused when the decoder
    cannot enforce it."""
    from tinytitan.data.grammar import schema_to_grammar

    if isinstance(value, (str, os.PathLike)):
        from tinytitan.evaluate.eval import read_schema

        return read_schema(os.fspath(value), name="schema=")
    if not isinstance(value, Mapping):
        raise TinyTitanError(f"schema: expected a JSON schema (a dict) or a JSON file's path, "
                             f"not {type(value).__name__}")
    schema = dict(value)
    try:
        schema_to_grammar(schema)
    except TinyTitanError as error:
        raise TinyTitanError(f"schema: {error}") from None
    return schema


def _labels(values) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) and v.strip() for v in values):
        raise TinyTitanError(f"labels: expected a list of non-empty texts, not {values!r}")
    return list(dict.fromkeys(values))


def _open(name: str, model: Path | None, adapter: Path | None, scale: float, schema: dict | None, threads):
    """The llama engine on the model and adapter; a schema llama.cpp refuses is refused here, not mid-batch."""
    from tinytitan.data.grammar import schema_to_grammar
    from tinytitan.data.structured import uses_input
    from tinytitan.model.engines import load_engine
    from tinytitan.model.engines.sampling import grammar_error

    engine = load_engine("llama", str(model) if model else None, threads=threads,
                         lora=str(adapter) if adapter else None, lora_scale=scale)
    problem = grammar_error(engine.model, schema_to_grammar(schema)) if schema and not uses_input(schema) else None
    if problem:
        engine.close()
        raise TinyTitanError(f"{name}: schema: {problem}")
    return engine


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TinyTitanError(f"{name}={value!r}: expected a whole number >= 1")
    return value


def _clip(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")
