#!/usr/bin/env bash
# Set up .venv for tinytitan, idempotently: every step checks before it works.
#   1. .venv with Python >= 3.11
#   2. torch 2.13.0, CPU build (from the machine's wheel directory when it has one)
#   3. llama.cpp compiled once from the source llama-cpp-python 0.3.36 vendors, with safe CPU flags
#      (tools/cpu_flags.py, tools/build_llama.py): its library goes into the llama-cpp-python wheel (cached
#      under ~/.cache/tinytitan/wheels/<flags key>/), its native tools into ~/.cache/tinytitan/llama.cpp-tools/
#   4. tinytitan itself (editable) with its dev extras
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tinytitan

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
BEGAN=$(date +%s)
STEP=$BEGAN
took() { local now; now=$(date +%s); say "  $1 took $((now - STEP)) s"; STEP=$now; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python >= 3.11 is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  took "the virtual environment"
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
  took "torch"
fi

KEY=$("$PY" tools/cpu_flags.py --key)
WHEELS="$CACHE/wheels/$KEY"
TOOLS_DIR="$CACHE/llama.cpp-tools/$LLAMA_VERSION-$KEY"
if ! installed llama_cpp_python "$LLAMA_VERSION" || [ ! -x "$TOOLS_DIR/bin/llama-quantize" ]; then
  WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ] || [ ! -x "$TOOLS_DIR/bin/llama-quantize" ]; then
    say "building llama.cpp once for this CPU: the library llama-cpp-python $LLAMA_VERSION loads and the native"
    say "  tools (llama-quantize, llama-imatrix, llama-bench, llama-perplexity); about 5 minutes on 2 cores"
    say "  CMAKE_ARGS=$("$PY" tools/cpu_flags.py)"
    rm -f "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
    "$PY" tools/build_llama.py --version "$LLAMA_VERSION" --wheels "$WHEELS" --tools "$TOOLS_DIR"
    WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
  fi
  say "installing $(basename "$WHEEL")"
  "${PIP[@]}" install --force-reinstall --no-deps "$WHEEL"
  took "llama.cpp"
fi

if ! "$PY" -c 'import tinytitan, pytest' 2>/dev/null || [ pyproject.toml -nt "$VENV/.tinytitan-installed" ]; then
  say "installing tinytitan and its dependencies"
  "${PIP[@]}" install -e ".[dev]"
  touch "$VENV/.tinytitan-installed"
  took "tinytitan and its dependencies"
fi
say "ready in $(( $(date +%s) - BEGAN )) s: $VENV ($("$PY" -c 'import torch, llama_cpp, transformers; print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, transformers {transformers.__version__}")'))"
