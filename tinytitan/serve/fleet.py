"""The task fleet: what each `model` name of the API serves.

A task is a base GGUF, an optional LoRA adapter (and its scale), a system prompt, default
sampling and an optional JSON schema that constrains every reply unless the request asks
otherwise. Tasks come from `--task NAME=ARTIFACT` flags (artifacts as `eval` names them: `base`,
`FILE.gguf`, `base+ADAPTER.gguf`, `BASE.gguf+ADAPTER.gguf`) and from a fleet file:

    # tinytitan serve --fleet fleet.toml
    [tasks.ingredients]
    model = "gemma-3-270m"                       # the default; or a GGUF path
    adapter = "runs/ingredients/export/ingredients-adapter-f16.gguf"
    adapter_scale = 1.0
    schema = "runs/ingredients/schema.json"      # a file, or an inline table
    system = ""
    temperature = 0.0
    max_tokens = 128
    report = "runs/ingredients/report/report.html"   # the playground links it (default: report/report.html
                                                     # beside the fleet file, as a run folder has it)

Relative paths in a fleet file are relative to the file. With no task at all, the embedded base
model is served as `gemma-3-270m`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.files import write_text
from tinytitan.model.registry import DEFAULT_MODEL

SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "max_tokens": int, "stop": list,
                 "presence_penalty": float, "frequency_penalty": float}
TASK_KEYS = {"model", "adapter", "adapter_scale", "schema", "system", "report", *SAMPLING_KEYS}


@dataclass(frozen=True)
class Task:
    name: str
    model: Path | None  # None: the embedded default
    adapter: Path | None = None
    adapter_scale: float = 1.0
    system: str = ""
    defaults: dict = field(default_factory=dict)  # sampling defaults, OpenAI parameter names
    schema: dict | None = None
    grammar: str | None = None  # the schema's grammar, made once at start-up
    report: Path | None = None  # the run's report.html, linked from the playground

    def describe(self) -> dict:
        return {"model": str(self.model or DEFAULT_MODEL), "adapter": str(self.adapter) if self.adapter else None,
                "adapter_scale": self.adapter_scale, "schema": self.schema is not None}


def parse_task_flag(text: str) -> Task:
    """`NAME=ARTIFACT` from the command line."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise TinyTitanError(f"--task {text!r}: expected NAME=ARTIFACT (e.g. ingredients=base+adapter.gguf)")
    from tinytitan.model.artifacts import parse_artifact

    artifact = parse_artifact(spec.strip())
    if artifact.kind == "run":
        raise TinyTitanError(f"--task {text!r}: the server runs GGUF files; export the run first "
                             f"(`tinytitan export {artifact.path}`) and serve an exported file or adapter")
    return _task(name.strip(), artifact.path, artifact.adapter, 1.0, "", {}, None, f"--task {name}")


def load_fleet(path: str | Path) -> list[Task]:
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such fleet file")
    from tinytitan.train.config import read_table

    raw = read_table(path, "fleet")
    unknown = sorted(set(raw) - {"tasks"})
    if unknown:
        raise TinyTitanError(f"{path}: unknown top-level key {unknown[0]!r} (expected [tasks.NAME] tables)")
    tasks = raw.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise TinyTitanError(f"{path}: no tasks (expected one or more [tasks.NAME] tables)")
    found = []
    for name, spec in tasks.items():
        where = f"{path}: tasks.{name}"
        if not isinstance(spec, dict):
            raise TinyTitanError(f"{where}: expected a table of keys")
        bad = sorted(set(spec) - TASK_KEYS)
        if bad:
            raise TinyTitanError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(sorted(TASK_KEYS))})")
        model = spec.get("model", DEFAULT_MODEL)
        model_path = None if model in ("base", DEFAULT_MODEL) else _path(path, model, f"{where}.model")
        adapter = _path(path, spec["adapter"], f"{where}.adapter") if "adapter" in spec else None
        schema = spec.get("schema")
        if isinstance(schema, str):
            schema = _read_schema(_path(path, schema, f"{where}.schema"), f"{where}.schema")
        elif schema is not None and not isinstance(schema, dict):
            raise TinyTitanError(f"{where}.schema: expected a file name or a table, not {type(schema).__name__}")
        defaults = {k: spec[k] for k in SAMPLING_KEYS if k in spec}
        scale = spec.get("adapter_scale", 1.0)
        system = spec.get("system", "")
        if not isinstance(system, str):
            raise TinyTitanError(f"{where}.system: expected text")
        task = _task(name, model_path, adapter, scale, system, defaults, schema, where)
        report = (_path(path, spec["report"], f"{where}.report") if "report" in spec
                  else _beside(path.parent / "report" / "report.html"))  # a run's fleet file: its report
        found.append(dataclasses.replace(task, report=report))
    return found


def _beside(path: Path) -> Path | None:
    return path if path.is_file() else None


def load_run(path: str | Path) -> list[Task]:
    """The tasks a `tinytitan run` folder serves: its fleet file (the report stage writes RUN/fleet.toml
    with the recommended artifact), linked to its report."""
    path = Path(path)
    fleet = path / "fleet.toml"
    if not fleet.is_file():
        if not (path / "stages.json").is_file():
            raise TinyTitanError(f"{path}: not a `tinytitan run` folder (no stages.json); serve a GGUF with "
                                 f"--task NAME=FILE.gguf or a fleet file with --fleet")
        raise TinyTitanError(f"{path}: no fleet.toml yet (the run's report stage writes it): finish the run, "
                             f"or `tinytitan report {path}`")
    if "[tasks." not in fleet.read_text(encoding="utf-8"):  # the report found nothing to serve
        raise TinyTitanError(f"{path}: no artifact of the run passed its parity gate, so there is nothing to serve "
                             f"(see {path / 'report' / 'report.md'})")
    return load_fleet(fleet)


def _task(name, model, adapter, scale, system, defaults, schema, where) -> Task:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 4:
        raise TinyTitanError(f"{where}.adapter_scale: {scale!r} is not a number in (0, 4]")
    if defaults:  # the same rules as a request's parameters
        from pydantic import ValidationError

        from tinytitan.serve.api import SamplingFields

        try:
            SamplingFields(model=name, **defaults)
        except ValidationError as error:
            first = error.errors()[0]
            key = next((str(p) for p in first["loc"] if isinstance(p, str) and p in SAMPLING_KEYS), "?")
            raise TinyTitanError(f"{where}.{key}: {defaults.get(key)!r} is not valid ({first['msg']})") from None
    grammar = None
    if schema is not None:
        from tinytitan.data.grammar import schema_to_grammar

        try:
            grammar = schema_to_grammar(schema)
        except TinyTitanError as error:
            raise TinyTitanError(f"{where}.schema: {error}") from None
    return Task(name, model, adapter, float(scale), system, dict(defaults), schema, grammar)


def _path(origin: Path, value, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise TinyTitanError(f"{where}: expected a file path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else origin.parent / path
    if not path.is_file():
        raise TinyTitanError(f"{where}: {path} is not a file")
    return path


def _read_schema(path: Path, where: str) -> dict:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TinyTitanError(f"{where}: {path} is not a JSON file ({error})") from None
    if not isinstance(schema, dict):
        raise TinyTitanError(f"{where}: {path} does not hold a JSON schema object")
    return schema


def write_fleet(path: Path, name: str, spec: str | None, *, about: str, schema: Path | None = None,
                system: str = "", max_tokens: int = 256) -> str | None:
    """A fleet file serving one artifact (`eval`'s spelling: a GGUF, `base+ADAPTER.gguf`...) as task
    `name`, greedy, with the schema (written relative to the fleet file when beside it); or, with no
    artifact, a file that says so. Returns the command that serves it, or None."""
    import os

    if spec is None:
        write_text(path, f"# {about}\n# no servable artifact passed its parity gate: see the report\n")
        return None
    base, _, adapter = spec.partition("+") if "+" in spec and not Path(spec).exists() else (spec, "", "")
    lines = [f"# tinytitan serve --fleet {path}", f"# {about}", f"[tasks.{name}]",
             f"model = {toml_string(base if base in ('base', DEFAULT_MODEL) else str(Path(base).resolve()))}"]
    if adapter:
        lines.append(f"adapter = {toml_string(str(Path(adapter).resolve()))}")
    if schema is not None:
        relative = os.path.relpath(schema.resolve(), path.parent.resolve())
        lines.append(f"schema = {toml_string(relative if not relative.startswith('..') else str(schema.resolve()))}")
    if system:
        lines.append(f"system = {toml_string(system)}")
    lines += ["temperature = 0.0", f"max_tokens = {max_tokens}"]
    write_text(path, "\n".join(lines) + "\n")
    return f"tinytitan serve --fleet {path}"


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes, non-ASCII kept as is: TOML has no surrogate pairs)."""
    return json.dumps(text, ensure_ascii=False)


def default_fleet() -> list[Task]:
    return [Task(DEFAULT_MODEL, None)]


def check_names(tasks: list[Task]) -> None:
    seen = set()
    for task in tasks:
        if task.name in seen:
            raise TinyTitanError(f"task {task.name!r} is defined twice")
        seen.add(task.name)
