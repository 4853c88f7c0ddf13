"""llama.cpp's native tools (llama-quantize for export; llama-bench, llama-perplexity and
llama-imatrix for benchmarks), from the same CMake build as the library llama-cpp-python loads
(tools/build_llama.py, run once per machine by set-up), so that what we quantize with and compare
against is the llama.cpp we run.

Binaries (and the libraries beside them) are in ~/.cache/tinytitan/llama.cpp-tools/<version>-<flags
key>/bin; a cache emptied since set-up is rebuilt on first use (about 5 minutes on 2 cores).

    python -m tinytitan.export.native_tools       # build if needed, print the bin directory
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from tinytitan.errors import TinyTitanError

ROOT = Path(__file__).resolve().parents[2]  # tools/cpu_flags.py lives beside the package
TOOLS = ("llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix")


def _cpu_flags() -> tuple[str, str]:
    script = ROOT / "tools" / "cpu_flags.py"
    if not script.exists():
        raise TinyTitanError(f"{script} is missing: the native llama.cpp tools are built from a source checkout")
    def run(*args: str) -> str:
        return subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    return run(), run("--key")


def tools_dir() -> Path:
    version = importlib.metadata.version("llama-cpp-python")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinytitan"
    return cache / "llama.cpp-tools" / f"{version}-{_cpu_flags()[1]}"


def find_tool(name: str) -> Path:
    """Path to a native tool, building all of them on first use (about 5 minutes on 2 cores)."""
    path = tools_dir() / "bin" / name
    if not path.exists():
        try:
            build()
        except (subprocess.CalledProcessError, OSError) as error:
            raise TinyTitanError(f"could not build llama.cpp's {name} ({error}); it needs cmake and a C++ "
                                 f"compiler, and pip access to the llama-cpp-python sdist") from None
    return path


def build() -> Path:
    """Build the tools with tools/build_llama.py (one CMake build that also makes the library llama-cpp-python
    loads; set-up runs it, so this is only for a cache emptied since)."""
    version = importlib.metadata.version("llama-cpp-python")
    target = tools_dir()
    cache = target.parent.parent
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_llama.py"), "--version", version, "--wheels",
                    str(cache / "wheels" / _cpu_flags()[1]), "--tools", str(target)], check=True)
    return target


if __name__ == "__main__":
    for tool in TOOLS:
        find_tool(tool)
    print(tools_dir() / "bin")
