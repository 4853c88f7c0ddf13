"""Checkpoints that survive faults: atomic, verified, pickle-free.

A checkpoint is a folder `checkpoints/step-000120/` holding `tensors.safetensors` (trainable
weights, optimizer moments, torch RNG state), `state.json` (step, data position, scheduler,
optimizer hyper-parameters, best validation loss...) and `manifest.json`, written last, with
every file's size and sha256. It is written to a temporary folder, each file fsynced, then
renamed into place, and the parent folder fsynced: a crash (even SIGKILL) leaves either the whole
checkpoint or none. A folder without a valid manifest is ignored by `latest`. A failed write
(disk full, read-only) removes its temporary folder, keeps every earlier checkpoint, and raises
a `TinyTitanError` that says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tinytitan.errors import TinyTitanError
from tinytitan.files import atomic_dir, fsync, sha256_of

FORMAT = "tinytitan-checkpoint-1"


def write_atomic_dir(final: Path, write) -> Path:
    """Create `final` atomically (`files.atomic_dir`): `write(tmp_dir)` fills it, then the manifest of its files."""

    def fill(staging: Path) -> None:
        write(staging)
        files = {path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
                 for path in sorted(staging.iterdir())}
        (staging / "manifest.json").write_text(json.dumps({"format": FORMAT, "files": files}, indent=2))

    try:
        atomic_dir(final, fill)
        fsync(final.parent)
        return final
    except OSError as error:
        previous = latest(final.parent)
        kept = f"; the previous checkpoint {previous.name} is intact" if previous else ""
        raise TinyTitanError(f"cannot write {final}: {error.strerror or error}{kept}") from None


def is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            return False
        return all((folder / name).stat().st_size == meta["bytes"] for name, meta in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:07d}"


def latest(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint in the folder, or None."""
    if not checkpoints.is_dir():
        return None
    candidates = sorted((p for p in checkpoints.iterdir() if p.name.startswith("step-") and p.is_dir()),
                        reverse=True)
    return next((p for p in candidates if is_complete(p)), None)


def save(checkpoints: Path, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
        (folder / "state.json").write_text(json.dumps(state, indent=1))

    if checkpoints.is_dir():  # temp folders of saves that a crash interrupted
        for stale in checkpoints.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    path = write_atomic_dir(step_dir(checkpoints, step), write)
    complete = sorted(p for p in checkpoints.iterdir() if p.name.startswith("step-") and is_complete(p))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_latest(checkpoints: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The newest checkpoint that passes its checksums (a damaged newer one is skipped, with a note)."""
    import sys

    candidates = sorted((p for p in checkpoints.glob("step-*") if is_complete(p)), reverse=True) \
        if checkpoints.is_dir() else []
    for folder in candidates:
        try:
            return load(folder)
        except TinyTitanError as error:
            print(f"warning: {error}; trying an older checkpoint", file=sys.stderr)
    raise TinyTitanError(f"{checkpoints.parent}: no complete checkpoint to resume from")


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    manifest = json.loads((folder / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        if sha256_of(folder / name) != meta["sha256"]:
            raise TinyTitanError(f"{folder / name}: checksum mismatch (the checkpoint is damaged)")
    return load_file(str(folder / "tensors.safetensors")), json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------------------------------------
# optimizer and RNG state as tensors + JSON (never pickle)


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
