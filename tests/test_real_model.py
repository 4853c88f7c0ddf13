"""The real Gemma 3 270M (Q4_K_M): both engines compute the same model. Marked real_model; runs in CI."""

from __future__ import annotations

import json

import pytest

from tinytitan.model.engines import SamplingParams
from tinytitan.model.registry import resolve
from tinytitan.evaluate.parity import gate_failures, run_parity
from tinytitan.evaluate.perplexity import read_text
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


def test_piqa_sample_on_the_base_model(tmp_path):
    """100 PIQA items, 0-shot, log-likelihood scoring: in the range of the published 67.7 (acc_norm).
    The full-set figures are measured by `tinytitan eval base --benchmark ...` (docs/evaluate.md)."""
    from tests.conftest import run_cli, shared_file

    folder = shared_file("benchmarks", "piqa.jsonl").parent
    result = run_cli("eval", "base", "--benchmark", "piqa", "--benchmark-dir", str(folder), "--limit", "100", "--json")
    assert result.returncode == 0, result.stderr
    (found,) = json.loads(result.stdout)["benchmarks"]
    assert found["items"] == 100 and found["headline"] == "acc_norm"
    assert 55.0 <= found["acc_norm"] <= 85.0 and found["ci95"][0] <= found["acc_norm"] <= found["ci95"][1]


def test_label_likelihood_classification_on_sms_spam(tmp_path):
    """The label-likelihood path on the real model and real SMS rows: each pick is the label whose
    tokens + <end_of_turn> are most likely after the prompt, as a fresh engine scores them one by one.
    (The untuned base model is near chance on this task by likelihood: the floor, not a failure.)"""
    import csv

    from tinytitan.data.rows import DataSpec
    from tinytitan.model.engines import load_engine
    from tinytitan.evaluate.scoring import _encode, load_rows
    from tests.conftest import run_cli, shared_file

    rows = list(csv.reader(shared_file("sms_spam", "sms.tsv").open(encoding="utf-8"), delimiter="\t"))
    picked = [r for r in rows if r[0] == "spam"][:10] + [r for r in rows if r[0] == "ham"][:10]
    data = tmp_path / "sms.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Spam or ham? {text}", "completion": label}) + "\n"
                            for label, text in picked))
    result = run_cli("eval", "base", "--data", str(data), "--base-shots", "0", "--out", str(tmp_path / "out"),
                     "--json")
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["task"]
    assert task["task"] == "classification" and task["rows"] == 20 and task["labels"] == 2
    picks = [json.loads(line)["label"] for line in (tmp_path / "out" / "base.jsonl").read_text().splitlines()]
    engine = load_engine("llama", n_ctx=1024)
    end = engine.token_id("<end_of_turn>")
    for row, pick in zip(_encode(engine, load_rows(str(data), DataSpec()), [])[:6], picks):
        sums = {label: float(engine.target_logprobs(row["prompt"] + engine.tokenize(label) + [end],
                                                    len(row["prompt"]) - 1).sum()) for label in ("ham", "spam")}
        assert pick == max(sums, key=sums.get) or abs(sums["ham"] - sums["spam"]) < 0.05  # float ties only
