"""Build llama.cpp once for this machine: the shared libraries llama-cpp-python loads and the native tools
tinytitan runs (llama-quantize, llama-imatrix, llama-bench, llama-perplexity), from one CMake build of the
llama.cpp source that llama-cpp-python's sdist vendors, with the safe CPU flags of tools/cpu_flags.py.

Before, set-up compiled that source twice (the wheel's own build, then the tools' build): about 8 min
more on 2 cores. Now the package's Python code is built from the same sdist without its native part
(`-DLLAMA_BUILD=OFF`) and the libraries of this build are put into its wheel, so the Python engine and
the native tools are the very same llama.cpp. Standalone (no tinytitan import): tools/bootstrap.sh runs it
before tinytitan is installed.

    python tools/build_llama.py --version 0.3.36 --wheels DIR --tools DIR    # prints each step's time

The wheel lands in --wheels, the tools and libraries in --tools/bin (RUNPATH $ORIGIN), each written to a
temporary name first and renamed when whole, so an interrupted build leaves nothing half-made.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix")
LIBRARIES = ("llama", "ggml", "ggml-base", "ggml-cpu")  # what llama-cpp-python loads (no multimodal: mtmd)


def say(message: str) -> None:
    print(f"\033[1m[setup]\033[0m {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> None:
    subprocess.run(command, check=True, **kwargs)


def compile_quietly(command: list[str], log: Path) -> None:
    """A compiler's output goes to `log` (thousands of lines of vendored-code warnings); on failure its end
    is shown."""
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        print("\n".join(log.read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
        raise subprocess.CalledProcessError(result.returncode, command)


def build(version: str, wheels: Path, tools: Path) -> None:
    cmake_args = subprocess.run([sys.executable, str(HERE / "cpu_flags.py")], check=True, capture_output=True,
                                text=True).stdout.split()
    jobs = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="tinytitan-llama-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        # --no-binary names the one package: `:all:` would build its build tools from source too (+3 min)
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python", "-d",
             str(tmp), f"llama-cpp-python=={version}"], stdout=subprocess.DEVNULL)
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        shutil.unpack_archive(sdist, tmp, filter="data")
        source = next(p for p in tmp.glob("llama_cpp_python-*") if p.is_dir())
        say(f"  llama-cpp-python {version} sdist fetched and unpacked in {time.perf_counter() - started:.0f} s")

        started = time.perf_counter()
        build_dir = tmp / "build"
        compile_quietly(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build_dir),
                         "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
                         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                         "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
                         "-DCMAKE_INSTALL_RPATH=$ORIGIN", *cmake_args], tmp / "configure.log")
        compile_quietly(["cmake", "--build", str(build_dir), "--config", "Release", "-j", jobs, "--target",
                         *LIBRARIES, *TOOLS], tmp / "build.log")
        bin_dir = build_dir / "bin"
        libraries = sorted(p for p in bin_dir.iterdir() if p.name.startswith("lib") and ".so" in p.name)
        say(f"  llama.cpp compiled once ({len(libraries)} library files, {len(TOOLS)} tools) in "
            f"{time.perf_counter() - started:.0f} s with {jobs} jobs")

        started = time.perf_counter()
        staging = tools.with_name(tools.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        for path in [*(bin_dir / tool for tool in TOOLS), *libraries]:
            shutil.copy2(path, staging / "bin" / path.name, follow_symlinks=True)
        shutil.rmtree(tools, ignore_errors=True)
        staging.rename(tools)

        package = tmp / "package"
        env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}  # the Python code only
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(package), str(source)], env=env,
            stdout=subprocess.DEVNULL)
        plain = next(package.glob("llama_cpp_python-*.whl"))
        wheels.mkdir(parents=True, exist_ok=True)
        loaded = [p for p in libraries if p.name.split(".so")[0].removeprefix("lib") in LIBRARIES]
        add_libraries(plain, loaded, wheels / plain.name)
        say(f"  llama-cpp-python {version} wheel (its Python code + these libraries) in "
            f"{time.perf_counter() - started:.0f} s: {wheels / plain.name}")


def add_libraries(wheel: Path, libraries: list[Path], out: Path) -> None:
    """A copy of `wheel` with `libraries` in llama_cpp/lib/ (where llama-cpp-python loads them from) and its
    RECORD rewritten to list them with their hashes, as the wheel format asks."""
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        record_name = next(n for n in source.namelist() if n.endswith(".dist-info/RECORD"))
        records = [line for line in source.read(record_name).decode().splitlines()
                   if line and not line.startswith(f"{record_name},")]
        for item in source.infolist():
            if item.filename != record_name:
                target.writestr(item, source.read(item.filename))
        for library in libraries:
            data = library.read_bytes()
            name = f"llama_cpp/lib/{library.name}"
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        target.writestr(record_name, "\n".join([*records, f"{record_name},,"]) + "\n")
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="llama-cpp-python version (its sdist vendors llama.cpp)")
    parser.add_argument("--wheels", type=Path, required=True, help="folder for the llama-cpp-python wheel")
    parser.add_argument("--tools", type=Path, required=True, help="folder for bin/ (tools and libraries)")
    args = parser.parse_args()
    build(args.version, args.wheels, args.tools)


if __name__ == "__main__":
    main()
