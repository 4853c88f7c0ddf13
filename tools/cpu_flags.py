"""Print safe CMake arguments for building llama.cpp (llama-cpp-python and its tools) here.

Why not the default native build: `-march=native` on a CPU with AMX compiles ggml's AMX backend,
which segfaults in `ggml_backend_amx_mul_mat` at the first decode on the machines we develop on.
So on x86-64 we turn GGML_NATIVE off and switch on, one by one, only the instruction sets that
/proc/cpuinfo lists (never AMX). On other platforms (ARM, macOS) the native build is kept: it
has no AMX backend to trip over.

Usage: python tools/cpu_flags.py            -> the CMAKE_ARGS string
       python tools/cpu_flags.py --key      -> a short key naming this flag set (for wheel caches)
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

# ggml CMake option -> /proc/cpuinfo flag that must be present for it.
X86_OPTIONS = {
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_BMI2": "bmi2",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",  # (Linux spells it so; avx512_vbmi2 is another set)
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}
AMX_OPTIONS = ["GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"]  # never: the AMX kernel segfaults


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    flags = cpu_flags()
    args = ["-DGGML_NATIVE=OFF"]
    for option, flag in X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
    args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
    return " ".join(args)


def main() -> None:
    args = cmake_args()
    if "--key" in sys.argv[1:]:
        print(hashlib.sha256(f"{platform.machine()} {args}".encode()).hexdigest()[:12])
    else:
        print(args)


if __name__ == "__main__":
    main()
