"""The command line, end to end through the real entry point, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinytitan.cli import VERBS
from tests.conftest import run_cli


def test_help_imports_no_heavy_library():
    """`tinytitan --help` must answer instantly: it may not import torch, transformers or llama.cpp."""
    code = ("import sys; from tinytitan.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'numpy', 'gguf') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help(verb):
    result = run_cli(verb, "--help")
    assert result.returncode == 0 and f"usage: tinytitan {verb}" in result.stdout


def test_unknown_verb_and_bad_flag():
    result = run_cli("fly")
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr
    result = run_cli("generate", "hi", "--max-tokens", "zero")
    assert result.returncode == 2 and "--max-tokens" in result.stderr and "Traceback" not in result.stderr
    for flag, value, message in (("--max-tokens", "zero", "expected a whole number, got 'zero'"),
                                 ("--max-tokens", "0", "expected a number >= 1, got 0")):
        result = run_cli("generate", "hi", flag, value)
        assert result.returncode == 2 and result.stderr.splitlines() == [
            f"tinytitan generate: error: argument {flag}/-n: {message} (see `tinytitan generate --help`)"]
    result = run_cli("serve", "--port", "-1")
    assert result.returncode == 2 and "argument --port: expected a number >= 0, got -1" in result.stderr


def test_info_json(tiny):
    info = json.loads(run_cli("info", str(tiny[0]), "--json").stdout)
    assert info["architecture"] == "gemma3" and info["layers"] == 2 and info["sliding_window"] == 8
    assert info["types"]["F32"]["tensors"] == len(info["tensors"])
    assert info["parameters"] == sum(p.numel() for n, p in tiny[1].named_parameters() if n != "lm_head.weight")


@pytest.mark.parametrize("engine", ["llama", "torch"])
def test_generate_json_both_engines(tiny, engine):
    result = run_cli("generate", "the cat", "--model", str(tiny[0]), "--engine", engine, "-n", "8", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["engine"] == engine and out["generation_tokens"] <= 8 and out["prompt_tokens"] == 3
    assert out["finish_reason"] in ("stop", "length")


def test_generate_engines_agree_greedy(tiny):
    texts = [json.loads(run_cli("generate", "the dog", "--model", str(tiny[0]), "--engine", e, "-n", "10",
                                "--json").stdout)["text"] for e in ("llama", "torch")]
    assert texts[0] == texts[1]


def test_generate_reads_stdin_and_rejects_empty(tiny):
    ok = run_cli("generate", "-", "--model", str(tiny[0]), "-n", "3", "--json", stdin="the cat")
    assert ok.returncode == 0 and json.loads(ok.stdout)["prompt_tokens"] == 3
    empty = run_cli("generate", "-", "--model", str(tiny[0]), stdin="  \n")
    assert empty.returncode == 1 and empty.stderr.strip() == "error: the prompt is empty"


def test_bad_sampling_flag_is_one_line(tiny):
    result = run_cli("generate", "x", "--model", str(tiny[0]), "--top-p", "2")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: top_p must be in (0, 1], not 2.0"]


def test_chat_over_piped_stdin(tiny):
    result = run_cli("chat", "--model", str(tiny[0]), "-n", "5", "--json",
                     stdin="hello\n\nthe cat <end_of_turn>\n/reset\nred\n")
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["user"] for t in turns] == ["hello", "the cat <end_of_turn>", "red"]
    assert "base (pretrained) model" in result.stderr


def test_perplexity_both_engines_agree(tiny, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and the dog sat on the cup of sugar. " * 60)
    results = {}
    for engine in ("llama", "torch"):
        result = run_cli("perplexity", str(text), "--model", str(tiny[0]), "--engine", engine,
                         "--chunk-size", "64", "--json")
        assert result.returncode == 0, result.stderr
        results[engine] = json.loads(result.stdout)
    assert results["llama"]["tokens_scored"] == results["torch"]["tokens_scored"] > 100
    assert results["llama"]["chunks"] == results["torch"]["chunks"]
    assert abs(results["llama"]["perplexity"] / results["torch"]["perplexity"] - 1) < 1e-3


@pytest.mark.parametrize("content, message", [(b"", "has no text"), (b"\xff\xfe\x00bad", "not UTF-8"),
                                              (b"short text", "shorter than one chunk")])
def test_perplexity_bad_text(tiny, tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    result = run_cli("perplexity", str(path), "--model", str(tiny[0]))
    assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1


def test_parity_gate_on_tiny(tiny, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("hello world, the red cat sat on the blue mat. " * 80)
    args = ("parity", str(text), "--model", str(tiny[0]), "--chunk-size", "64", "--tokens", "200", "--json")
    report = json.loads(run_cli(*args, "--max-kl", "0.001", "--min-top1", "0.99").stdout)
    assert report["gate"] == "passed" and report["tokens_scored"] >= 200 and report["tokenizers_agree"]
    failing = run_cli(*args, "--min-top1", "1.01")
    assert failing.returncode == 1 and "parity gate failed: top-1 agreement" in failing.stderr
