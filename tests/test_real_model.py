"""The real Gemma 3 270M (Q4_K_M): both engines compute the same model. Marked real_model; runs in CI."""

from __future__ import annotations

import json

import pytest

from tinytitan.engines import SamplingParams
from tinytitan.models import resolve
from tinytitan.parity import gate_failures, run_parity
from tinytitan.perplexity import read_text
from tests.conftest import run_cli, shared_file

pytestmark = pytest.mark.real_model


def test_default_model_is_assembled_and_verified():
    ref = resolve("gemma-3-270m")
    assert ref.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert ref.gguf.architecture == "gemma3" and ref.gguf.arch_key("block_count") == 18


def test_parity_on_wikitext2(real_torch, real_llama):
    """Acceptance: >= 2,000 tokens of WikiText-2 test; mean KL <= 0.01, top-1 >= 95%, perplexities within 1%."""
    text = read_text(shared_file("wikitext2", "wiki.test.raw"))
    report = run_parity(real_torch, real_llama, text, min_tokens=2048, ctx=512)
    print(json.dumps(report))
    assert report["tokens_scored"] >= 2000
    assert report["tokenizers_agree"]
    assert gate_failures(report, max_kl=0.01, min_top1=0.95, max_ppl_diff=0.01) == []


def test_greedy_continuation_agrees(real_torch, real_llama):
    prompt = real_llama.tokenize("The Eiffel Tower is located in the city of", bos=True)
    params = SamplingParams(max_tokens=4)
    torch_text = real_torch.generate(prompt, params).text
    llama_text = real_llama.generate(prompt, params).text
    assert torch_text == llama_text
    assert "Paris" in llama_text


def test_info_shows_real_quant_types():
    info = json.loads(run_cli("info", "--json").stdout)
    assert info["parameters"] == 268_098_176
    assert info["context_length"] == 32768 and info["sliding_window"] == 512
    assert info["global_layers"] == 3 and info["sliding_layers"] == 15
    # "Q4_K_M" in name only: most tensors fall back to other types at hidden size 640
    assert set(info["types"]) == {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"}
