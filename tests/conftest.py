"""Shared fixtures. Every test runs with TINYTITAN_HOME in a temporary folder, so nothing is read
from or written to the user's cache. The tiny model is built here, in the session's temp dir."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def tinytitan_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("tinytitan-home")
    old = os.environ.get("TINYTITAN_HOME")
    os.environ["TINYTITAN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TINYTITAN_HOME", None)
    else:
        os.environ["TINYTITAN_HOME"] = old


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(path of the tiny GGUF, the transformers model it was written from)."""
    from tinytitan.model.tiny import write_tiny_gguf

    path = tmp_path_factory.mktemp("tiny") / "tiny-gemma3.gguf"
    model = write_tiny_gguf(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_torch(tiny):
    from tinytitan.model.engines import load_engine

    return load_engine("torch", str(tiny[0]))


@pytest.fixture(scope="session")
def tiny_llama(tiny):
    from tinytitan.model.engines import load_engine

    return load_engine("llama", str(tiny[0]), n_ctx=512)


@pytest.fixture(scope="session")
def real_torch():
    from tinytitan.model.engines import load_engine

    return load_engine("torch")


@pytest.fixture(scope="session")
def real_llama():
    from tinytitan.model.engines import load_engine

    return load_engine("llama", n_ctx=2048)


@pytest.fixture(scope="module")
def recipe(tiny, tmp_path_factory):
    """A `files` recipe on the tiny model (tiny.toml, 120 rows with JSON completions, output run/): a whole
    `tinytitan run` takes seconds."""
    folder = tmp_path_factory.mktemp("recipe")
    rng = random.Random(0)
    words = ["cat", "dog", "red", "blue", "salt", "sugar", "cup", "one", "two", "mat"]
    rows = [{"prompt": f"{rng.choice(words)} {rng.choice(words)} {i}",
             "completion": {"w": rng.choice(words[:3]), "n": str(i % 3)}} for i in range(120)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny.toml").write_text(f"""# tinytitan run tiny.toml
name = "tiny"
output = "{folder / 'run'}"

[task]
kind = "files"
train = "rows.jsonl"

[finetune]
model = "{tiny[0]}"
max_length = 64
batch_tokens = 512
learning_rate = 2e-3
max_steps = 6
eval_every = 3
precision = "fp32"

[export]
quant = ["f16"]
gate_rows = 8

[eval]
rows = 8
base_shots = 2
max_tokens = 16

[report]
bench = false
""")
    return folder


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    assert path.is_file(), f"{path} is missing: the tests need the project's shared data (../shared/data)"
    return path


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`tinytitan ARGS` in a subprocess (the real entry point), with the test's TINYTITAN_HOME."""
    return subprocess.run([sys.executable, "-m", "tinytitan", *args], input=stdin, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def tiny_lora_run(tiny_gguf: Path, folder: Path, rows: int, steps: int, seed: int) -> tuple[Path, Path]:
    """A LoRA run on the tiny model over `rows` random word rows with JSON completions: (run, data)."""
    import json
    import random

    rng = random.Random(seed)
    words = ["cat", "dog", "red", "blue", "salt", "sugar", "cup", "one", "two", "mat"]
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{rng.choice(words)} {rng.choice(words)} {i}",
                                        "completion": {"w": rng.choice(words)}}) + "\n" for i in range(rows)))
    run = folder / "run"
    result = run_cli("finetune", "--model", str(tiny_gguf), "--train", str(data), "--output", str(run),
                     "--batch-tokens", "512", "--learning-rate", "2e-3", "--max-steps", str(steps),
                     "--eval-every", str(steps // 2), "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    return run, data
