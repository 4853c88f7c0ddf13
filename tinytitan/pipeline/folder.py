"""A run folder: claimed before a run writes in it, and the content hashes its stages are keyed by."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.files import LOCK_NAME, write_json


MARKER = ".tinytitan-run"  # a folder that holds it is a tinytitan run: stages may replace what is in it


def claim_run_folder(root: Path, recipe) -> None:
    """Make `root` a run folder, or refuse one that holds anything else: a run deletes and replaces its own
    data/, train/ and report/, and must never do that to a folder of the user's (`--output .`)."""
    marker = root / MARKER
    if marker.is_file():
        return
    if root.exists() and not root.is_dir():
        raise TinyTitanError(f"--output {root}: a file, not a folder")
    legacy = (root / "stages.json").is_file()  # a run folder from before the marker
    others = [] if legacy or not root.is_dir() else sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)
    if others:
        raise TinyTitanError(f"{root}: not empty and not a tinytitan run folder (it holds {others[0]!r}"
                             f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}); give a new or empty "
                             f"folder as --output (or the recipe's output)")
    root.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"recipe": str(recipe), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def sha(path: Path) -> str | None:
    """A file's sha256; a folder's (a task source such as the Snips benchmark) over its files' names and sha256s."""
    from tinytitan.model.registry import file_sha256

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return digest([[str(p.relative_to(path)), file_sha256(p)] for p in files])
    return file_sha256(path) if path.is_file() else None


def unchanged(outputs: dict) -> bool:
    return all(Path(p).is_file() and sha(Path(p)) == digest for p, digest in outputs.items())


def digest(value) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
