#!/usr/bin/env bash
# Set up .venv for tinytitan, idempotently: every step checks before it works.
#   1. .venv with Python >= 3.11
#   2. torch 2.13.0, CPU build (from the machine's wheel directory when it has one)
#   3. llama-cpp-python 0.3.36, built once from its sdist with safe CPU flags (tools/cpu_flags.py)
#      and cached as a wheel under ~/.cache/tinytitan/wheels/<flags key>/
#   4. tinytitan itself (editable) with its dev extras
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tinytitan

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python >= 3.11 is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

if ! installed torch "$TORCH_VERSION+cpu" && ! installed torch "$TORCH_VERSION"; then
  say "installing torch $TORCH_VERSION (CPU build)"
  if ! "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
      || "${PIP[@]}" install "torch==$TORCH_VERSION"
  fi
fi

if ! installed llama_cpp_python "$LLAMA_VERSION"; then
  KEY=$("$PY" tools/cpu_flags.py --key)
  WHEELS="$CACHE/wheels/$KEY"
  WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    export CMAKE_ARGS
    CMAKE_ARGS=$("$PY" tools/cpu_flags.py)
    say "building llama-cpp-python $LLAMA_VERSION (about 4 minutes, once per machine)"
    say "  CMAKE_ARGS=${CMAKE_ARGS:-<native defaults>}"
    mkdir -p "$WHEELS"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
      "${PIP[@]}" wheel --no-deps --no-binary llama-cpp-python --no-cache-dir -w "$WHEELS" \
      "llama-cpp-python==$LLAMA_VERSION"
    WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
  fi
  say "installing $(basename "$WHEEL")"
  "${PIP[@]}" install "$WHEEL"
fi

if ! "$PY" -c 'import tinytitan, pytest' 2>/dev/null || [ pyproject.toml -nt "$VENV/.tinytitan-installed" ]; then
  say "installing tinytitan and its dependencies"
  "${PIP[@]}" install -e ".[dev]"
  touch "$VENV/.tinytitan-installed"
fi
if ! "$PY" -c 'from tinytitan.export.native_tools import tools_dir, TOOLS; import sys; sys.exit(not all((tools_dir() / "bin" / t).exists() for t in TOOLS))'; then
  say "building llama.cpp's native tools (llama-quantize, llama-imatrix, llama-bench, llama-perplexity; about 5 minutes, once per machine)"
  "$PY" -m tinytitan.export.native_tools >/dev/null
fi
say "ready: $VENV ($("$PY" -c 'import torch, llama_cpp, transformers; print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, transformers {transformers.__version__}")'))"
