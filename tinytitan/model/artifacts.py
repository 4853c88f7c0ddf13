"""What `eval`, `bench` and `report` can run: an artifact named on the command line, as an engine.

- `base` (or `gemma-3-270m`): the embedded base model (llama.cpp);
- `FILE.gguf`: any model GGUF (llama.cpp); a LoRA adapter GGUF on its own runs on the base model;
- `BASE.gguf+ADAPTER.gguf` or `base+ADAPTER.gguf`: an adapter on a chosen base;
- `RUN` (a fine-tuning run folder): the trained PyTorch model (best weights merged), the reference;
- `RUN:last`: the run's last weights instead of its best.

An `Artifact` is the one description of a model that can be run: what it is (kind, files, base and
adapter), and, for what `export` wrote, its quant type, its parity-gate verdict and whether it is in
the task vocabulary (read from the export's manifest by `run_artifacts`). Whether it can be served is
decided here (`servable`), and eval rows, the recommendation, the report and the fleet file read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.model.registry import DEFAULT_MODEL

BASE_NAMES = ("base", DEFAULT_MODEL)


@dataclass(frozen=True)
class Artifact:
    spec: str  # as the user wrote it
    label: str  # short name for tables
    kind: str  # "gguf" | "adapter" | "run"
    path: Path | None  # model GGUF (None: the embedded base) or run folder
    adapter: Path | None = None
    weights: str = "best"
    is_base: bool = False  # an untuned base model: evaluated with a few-shot prompt
    quant: str | None = None  # an exported artifact's quant type (f16, q8_0, ...)
    gate: str | None = None  # an exported artifact's parity gate: "passed" or "failed" (kept by --force)
    vocabulary: int | None = None  # a copy in the task vocabulary: the tokens it keeps

    @property
    def servable(self) -> bool:
        """What a fleet may serve: a llama.cpp artifact, not the untuned floor, not one that failed its gate."""
        return self.kind != "run" and not self.is_base and self.gate != "failed"

    def describe(self) -> dict:
        """What eval rows carry about the artifact, so tables and the recommendation never parse labels."""
        return {"spec": self.spec, "kind": self.kind, "quant": self.quant, "gate": self.gate,
                "vocabulary": self.vocabulary, "servable": self.servable, "reference": self.kind == "run"}

    def size_bytes(self) -> int:
        """On-disk size of what must ship: the GGUF, the adapter (plus base), or the run's weights."""
        from tinytitan.model.registry import resolve

        if self.kind == "run":  # the trained model as it runs: every weight in fp32
            model = json.loads((self.path / "config.json").read_text())["model"]
            return 4 * sum(t.n_elements for t in resolve(model).gguf.tensors)
        size = resolve(str(self.path) if self.path else None).path.stat().st_size
        return size + (self.adapter.stat().st_size if self.adapter else 0)

    def identity(self) -> str:
        """What results computed from it depend on: its files' paths, sizes and modification times (cache keys)."""
        from tinytitan.model.registry import resolve

        if self.kind == "run":
            files = sorted((self.path / self.weights).glob("*.safetensors"))
        else:
            files = [resolve(str(self.path) if self.path else None).path] + ([self.adapter] if self.adapter else [])
        return json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])

    def open(self, *, threads: int | None = None, n_ctx: int = 4096, swa_full: bool = True):
        from tinytitan.model.engines import load_engine

        if self.kind == "run":
            from tinytitan.model.engines.torch import TorchEngine
            from tinytitan.model.runs import load_run_model
            from tinytitan.model.torch_model import load_tokenizer

            ref, model = load_run_model(self.path, self.weights)
            return TorchEngine(ref, model=model, tokenizer=load_tokenizer(ref), threads=threads)
        return load_engine("llama", str(self.path) if self.path else None, threads=threads, n_ctx=n_ctx,
                           lora=str(self.adapter) if self.adapter else None, swa_full=swa_full)


def parse_artifacts(specs) -> list[Artifact]:
    """The artifacts of a command line, each with its own label: two that would share one (two runs'
    adapters on bases of the same name) are labelled as written, so tables and example files stay apart."""
    from collections import Counter
    from dataclasses import replace

    artifacts = [parse_artifact(spec) for spec in specs]
    shared = {label for label, n in Counter(a.label for a in artifacts).items() if n > 1}
    artifacts = [replace(a, label=a.spec.strip()) if a.label in shared else a for a in artifacts]
    seen: Counter = Counter()
    for index, artifact in enumerate(artifacts):  # the same one twice
        seen[artifact.label] += 1
        if seen[artifact.label] > 1:
            artifacts[index] = replace(artifact, label=f"{artifact.label} ({seen[artifact.label]})")
    return artifacts


def parse_artifact(spec: str) -> Artifact:
    text = spec.strip()
    if not text:
        raise TinyTitanError("an artifact name is empty (expected base, a .gguf file, BASE+ADAPTER.gguf or a run folder)")
    if "+" in text and not Path(text).exists():
        base_text, adapter_text = text.split("+", 1)
        base = None if base_text in BASE_NAMES else _gguf(base_text, spec)
        adapter = _gguf(adapter_text, spec)
        return Artifact(spec, f"{'base' if base is None else base.stem}+{adapter.stem}", "adapter", base, adapter)
    if text in BASE_NAMES:
        return Artifact(spec, "base", "gguf", None, is_base=True)
    run_text, _, weights = text.partition(":") if not Path(text).exists() else (text, "", "")
    path = Path(run_text)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TinyTitanError(f"{path}: a folder, but not a fine-tuning run (no config.json)")
        if weights not in ("", "best", "last"):
            raise TinyTitanError(f"{spec}: the weights after ':' must be best or last, not {weights!r}")
        weights = weights or "best"
        return Artifact(spec, f"torch ({path.name}{'' if weights == 'best' else ':' + weights})", "run", path,
                        weights=weights)
    path = _gguf(text, spec)
    from tinytitan.model.gguf import read_gguf

    if read_gguf(path).get("general.type") == "adapter":
        return Artifact(spec, f"base+{path.stem}", "adapter", None, path)
    return Artifact(spec, path.stem, "gguf", path)


def _gguf(text: str, spec: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise TinyTitanError(f"{spec}: {text} is not a file (expected base, a .gguf file, BASE+ADAPTER.gguf "
                             f"or a fine-tuning run folder)")
    return path


def run_artifacts(run_dir: Path, only: list[str] | None = None, students: Path | None = None) -> list[Artifact]:
    """What a fine-tuning run folder holds, as artifacts: the trained model (the reference), every GGUF its
    export wrote, largest first (an adapter on the base it was trained from; a base in the task vocabulary
    with the adapter it runs), each with its manifest's quant, gate and vocabulary (those kept by
    `export --force` despite failing the gate are marked in their label too), and the base as the
    few-shot floor. `only`: exported GGUFs whose name ends in one of these. `students`: a distilled student's
    run (`tinytitan distill`), whose exported GGUFs join the list after the run's own."""
    model = json.loads((run_dir / "config.json").read_text())["model"]
    base_spec = "base" if model == DEFAULT_MODEL else model  # the model the run was trained from
    found = [parse_artifact(str(run_dir))]
    export = run_dir / "export"
    ggufs = sorted(export.glob("*.gguf"), key=lambda f: -f.stat().st_size) if export.is_dir() else []
    for gguf in ggufs:  # the largest first: F16 down to the smallest quant, then the adapter
        if gguf.name == "imatrix.gguf" or (only and not any(gguf.stem.endswith("-" + o) for o in only)):
            continue
        artifact = _exported(gguf, base_spec)
        if artifact:
            found.append(artifact)
    if students is not None and (students / "export").is_dir():
        student_model = json.loads((students / "config.json").read_text())["model"]
        for gguf in sorted((students / "export").glob("*.gguf"), key=lambda f: -f.stat().st_size):
            if only and not any(gguf.stem.endswith("-" + o) for o in only):
                continue
            artifact = _exported(gguf, student_model)
            if artifact:
                found.append(artifact)
    if len(found) == 1:
        wanted = f" matching --only {','.join(only)}" if only else ""
        raise TinyTitanError(f"{export}: no exported GGUF files{wanted} (run `tinytitan export {run_dir}` first)")
    found.append(Artifact(base_spec, "base (few-shot)", "gguf", None if base_spec == "base" else Path(model),
                          is_base=True))
    return found


def _exported(gguf: Path, base_spec: str) -> Artifact | None:
    """An exported GGUF with what its manifest says (None: a trimmed base whose adapter is gone)."""
    from dataclasses import replace

    manifest_path = gguf.with_name(gguf.name + ".manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("kind") == "adapter-task":  # a base with the task vocabulary: it runs the run's adapter
        adapter = gguf.with_name(manifest["adapter"])
        if not adapter.exists():
            return None
        artifact = replace(parse_artifact(f"{gguf}+{adapter}"), label=f"{gguf.stem}+{adapter.stem}")
    else:
        artifact = parse_artifact(str(gguf))
        if artifact.kind == "adapter":  # on the base the run was trained from
            artifact = replace(parse_artifact(f"{base_spec}+{gguf}"), label=f"base+{gguf.stem}")
    gate = manifest.get("status")
    return replace(artifact, label=artifact.label + (" (gate failed)" if gate == "failed" else ""),
                   quant=manifest.get("quant"), gate=gate, vocabulary=manifest.get("vocabulary"))
