"""tools/cpu_flags.py: the llama.cpp build's instruction sets are the ones /proc/cpuinfo lists, by Linux's names."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT


def _cpu_flags():
    spec = importlib.util.spec_from_file_location("cpu_flags", ROOT / "tools" / "cpu_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_instruction_set_is_switched_by_the_flag_linux_names_it(monkeypatch):
    cpu_flags = _cpu_flags()
    # a Zen 5 EPYC's /proc/cpuinfo, vector flags only
    zen5 = set("avx avx2 fma f16c bmi2 avx_vnni avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma avx512vbmi "
               "avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_bf16".split())
    monkeypatch.setattr(cpu_flags, "cpu_flags", lambda: zen5)
    monkeypatch.setattr(cpu_flags.platform, "machine", lambda: "x86_64")
    args = cpu_flags.cmake_args().split()
    assert all(f"-D{option}=ON" in args for option in cpu_flags.X86_OPTIONS)
    assert all(f"-D{option}=OFF" in args for option in cpu_flags.AMX_OPTIONS)
    monkeypatch.setattr(cpu_flags, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2", "avx512_vbmi2"})
    args = cpu_flags.cmake_args().split()
    assert "-DGGML_AVX2=ON" in args and "-DGGML_AVX512=OFF" in args and "-DGGML_AVX512_VBMI=OFF" in args
