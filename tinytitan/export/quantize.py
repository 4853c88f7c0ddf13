"""The quantization ladder, run by llama.cpp's own quantizer (`llama-quantize`, built from the source
llama-cpp-python vendors, see `native_tools.py`).

A quant spec is a llama.cpp type name, case-insensitive, optionally suffixed `-imatrix` to use the
importance matrix computed from the task's training sequences: `q8_0`, `q4_k_m`, `q4_k_m-imatrix`.
Gemma 3 270M's hidden size (640) is not a multiple of the 256-wide k-quant blocks, so llama.cpp
falls back to other types for most tensors of a "K" file: `tinytitan info --tensors` shows them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import TinyTitanError

# llama-quantize type -> typical bits per weight (for sorting and docs)
QUANT_TYPES = {
    "F32": 32.0, "BF16": 16.0, "F16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5,
    "IQ4_XS": 4.3, "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q2_K": 3.0,
}
FLOAT_TYPES = ("F32", "BF16", "F16")
# below ~4 bits llama.cpp's i-quants need an importance matrix
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"}


@dataclass(frozen=True)
class QuantSpec:
    type: str  # llama.cpp name, upper case
    imatrix: bool

    @property
    def label(self) -> str:
        return self.type.lower() + ("-imatrix" if self.imatrix else "")


def parse_quants(text: str) -> list[QuantSpec]:
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, suffix = item.lower().partition("-")
        if suffix not in ("", "imatrix"):
            raise TinyTitanError(f"--quant {item!r}: the only suffix is -imatrix (e.g. q4_k_m-imatrix)")
        qtype = name.upper()
        if qtype not in QUANT_TYPES:
            raise TinyTitanError(f"--quant {item!r}: unknown type (choose from {', '.join(t.lower() for t in QUANT_TYPES)})")
        if suffix and qtype in FLOAT_TYPES:
            raise TinyTitanError(f"--quant {item!r}: an importance matrix only matters for quantized types")
        spec = QuantSpec(qtype, bool(suffix))
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise TinyTitanError("--quant: give at least one type, e.g. q8_0,q4_k_m")
    return specs


def quantize(source: Path, target: Path, spec: QuantSpec, imatrix: Path | None = None,
             threads: int | None = None) -> None:
    """Run llama-quantize: `source` (an F32/F16/BF16 GGUF) -> `target` of `spec.type`."""
    from tinytitan.export.native_tools import find_tool

    tool = find_tool("llama-quantize")
    args = [str(tool)]
    if spec.imatrix:
        if imatrix is None:
            raise TinyTitanError(f"{spec.label}: no importance matrix was computed")
        args += ["--imatrix", str(imatrix)]
    args += [str(source), str(target), spec.type, str(threads or os.cpu_count() or 1)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TinyTitanError(f"llama-quantize failed for {spec.label}: {tail[0]}")
