"""llama.cpp's native tools (llama-quantize for export; llama-bench, llama-perplexity and
llama-imatrix for benchmarks), built from the very source llama-cpp-python vendors, so that what
we quantize with and compare against is the llama.cpp we run.

The sdist of the pinned llama-cpp-python is fetched with pip (from the package registry, or pip's
cache) and built with cmake using the same safe CPU flags as our wheel (tools/cpu_flags.py).
Binaries land in ~/.cache/tinytitan/llama.cpp-tools/<version>-<flags key>/bin and are reused;
`make demo` / `make test` build them during set-up (about 5 minutes, once per machine).

    python -m tinytitan.export.native_tools       # build if needed, print the bin directory
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.files import atomic_dir

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
    version = importlib.metadata.version("llama-cpp-python")
    target = tools_dir()
    cmake_args, _ = _cpu_flags()
    with tempfile.TemporaryDirectory(prefix="llama-tools-") as tmp:
        tmp = Path(tmp)
        print(f"building llama.cpp tools {', '.join(TOOLS)} from llama-cpp-python {version} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", str(tmp), f"llama-cpp-python=={version}"], check=True,
                       stdout=subprocess.DEVNULL)
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = next(tmp.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = tmp / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_SERVER=OFF", *cmake_args.split()], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(os.cpu_count() or 2),
                        "--target", *TOOLS], check=True, stdout=subprocess.DEVNULL)

        def install(staging: Path) -> None:
            (staging / "bin").mkdir()
            for tool in TOOLS:
                shutil.copy2(build_dir / "bin" / tool, staging / "bin" / tool)

        atomic_dir(target, install)
    return target


if __name__ == "__main__":
    for tool in TOOLS:
        find_tool(tool)
    print(tools_dir() / "bin")
