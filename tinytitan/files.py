"""Files tinytitan writes: whole or not at all, and one writer per folder at a time.

- `atomic_file` / `write_text` / `write_json`: a temporary file in the same folder, fsync, rename. A
  kill at any point leaves the previous file or the new one, never a truncated one.
- `read_json`: a run file that is missing, truncated or not JSON reads as None (the caller recomputes).
- `FolderLock`: an exclusive `flock` on FOLDER/.tinytitan.lock, held for the life of the process
  that took it (the kernel drops it when the process dies, so a killed run leaves no stale lock). A
  second `run`, `finetune` or `export` on the same folder stops with the holder's pid.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tinytitan.errors import TinyTitanError

LOCK_NAME = ".tinytitan.lock"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_file(final: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` creates the file; it appears at `final` only when complete (fsync + rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the result should be an ordinary file
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return final
    except OSError as error:
        raise TinyTitanError(f"cannot write {final}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    return atomic_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, value, indent: int | None = 1, ensure_ascii: bool = True) -> Path:
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=ensure_ascii))


def read_json(path: Path):
    """A JSON file's value; None when it is missing, truncated or not JSON (a run file to recompute)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class FolderLock:
    """`with FolderLock(folder, "run"):` -- the one tinytitan process writing into `folder`."""

    def __init__(self, folder: Path, verb: str):
        self.folder, self.verb, self.fd = Path(folder), verb, None

    def __enter__(self) -> FolderLock:
        import fcntl

        path = self.folder / LOCK_NAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise TinyTitanError(f"cannot create the run folder {self.folder}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise TinyTitanError(f"{self.folder}: in use by {holder}; wait for it to finish, or give another "
                                 f"folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"tinytitan {self.verb} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def swap_in(new: Path, final: Path) -> None:
    """Replace the folder `final` by the complete folder `new`. A kill between the two renames leaves
    `final` missing and FINAL.old whole: `recover_swap` (run before the folder is next read) restores it."""
    import shutil

    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.is_dir() and not final.exists():
        old.rename(final)
