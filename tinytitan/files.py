"""Files tinytitan writes: whole or not at all, and one writer per folder at a time.

- `atomic_file` / `write_text` / `write_json`: a temporary file in the same folder, fsync, rename. A
  kill at any point leaves the previous file or the new one, never a truncated one.
- `read_json`: a run file that is missing, truncated or not JSON reads as None (the caller recomputes).
- `replace_dir`: a complete folder put in place of another in one step.
- `FolderLock`: an exclusive `flock` on FOLDER/.tinytitan.lock, held for the life of the process
  that took it (the kernel drops it when the process dies, so a killed run leaves no stale lock). A
  second `run`, `finetune` or `export` on the same folder stops with the holder's pid.
"""

from __future__ import annotations

import hashlib
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


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
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
        fsync(final.parent)
        return final
    except OSError as error:
        raise TinyTitanError(f"cannot write {final}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """`write(staging)` fills a fresh folder beside `final`; it is flushed to disk and put at `final` in one
    step (`replace_dir`), so `final` is the previous folder or the complete new one, never a mix. On any
    error the staging folder goes (a `.NAME.tmp-*` left by a kill is the caller's to sweep)."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes 0700; the result should be an ordinary folder
    try:
        write(staging)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                fsync(path)
        replace_dir(staging, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def replace_dir(new: Path, final: Path) -> None:
    """Put the complete folder `new` at `final`. If `final` exists, swap the two in one step (Linux
    renameat2 RENAME_EXCHANGE) and delete the old one, so no moment exists without a complete `final`.
    Elsewhere: move the old one aside first (a kill in between leaves it as `.old-NAME-PID`, which
    `recover_dir` puts back)."""
    import shutil

    if not final.exists():
        os.rename(new, final)
    elif _exchange(new, final):
        shutil.rmtree(new)  # `new` now holds the previous contents
    else:
        aside = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, aside)
        os.rename(new, final)
        shutil.rmtree(aside, ignore_errors=True)
    fsync(final.parent)


def recover_dir(final: Path) -> None:
    """A `replace_dir` killed between its two renames (not on Linux): the old folder back in place."""
    aside = sorted(final.parent.glob(f".old-{final.name}-*")) if final.parent.is_dir() else []
    if aside and not final.exists():
        aside[-1].rename(final)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
