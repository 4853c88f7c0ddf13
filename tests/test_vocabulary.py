"""A task vocabulary: the trimmed tokenizer cuts the task's text exactly as the full one, and the trimmed
GGUF runs in stock llama.cpp (the Python engine and the native tools)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import run_cli, shared_file
from tinytitan.errors import TinyTitanError

TEXTS = ["the cat sat on the mat", "salt and sugar, one cup", "hello world\n\nthe dog", "red blue two"]


def test_the_tracer_is_llama_cpp_s_tokenizer(tiny_llama):
    from tinytitan.model.gguf import read_gguf
    from tinytitan.model.tiny import WORDS
    from tinytitan.shrink.vocabulary import MergeTracer, Vocab

    tracer = MergeTracer(Vocab.from_gguf(read_gguf(tiny_llama.ref.path)))
    for text in TEXTS + [" ".join(WORDS), "émoji 🍕 and 東京\n\n\n  spaces", "<start_of_turn>user"]:
        assert [token for token, _ in tracer.pieces(text)] == tiny_llama.tokenize(text), text


def test_trimmed_tiny_model_tokenizes_the_task_alike_and_round_trips_unseen_text(tiny, tmp_path):
    from tinytitan.model.engines import load_engine
    from tinytitan.model.gguf import read_gguf
    from tinytitan.shrink.vocabulary import CONTROL, Vocab, keep_set, trim_gguf

    vocab = Vocab.from_gguf(read_gguf(tiny[0]))
    keep = keep_set(vocab, TEXTS, top=0)
    assert len(keep) < len(vocab) and all(i in keep for i, kind in enumerate(vocab.types) if kind == CONTROL)
    target = tmp_path / "trimmed.gguf"
    result = trim_gguf(tiny[0], keep, target)
    assert result["kept"] == len(keep) and result["bytes_after"] < result["bytes_before"]
    full, trimmed = load_engine("llama", str(tiny[0]), n_ctx=256), load_engine("llama", str(target), n_ctx=256)
    for text in TEXTS:  # the same pieces, under new ids
        assert [trimmed.piece(i) for i in trimmed.tokenize(text)] == [full.piece(i) for i in full.tokenize(text)]
    unseen = "Zebra quokka 🦘 naïve — 東京"
    assert trimmed.detokenize(trimmed.tokenize(unseen)) == unseen  # byte fallback spells what no token holds
    assert trimmed.token_id("<end_of_turn>") is not None and trimmed.token_id("<start_of_turn>") is not None
    trimmed_gguf = read_gguf(target)
    assert trimmed_gguf.get("tokenizer.ggml.bos_token_id") == keep.index(read_gguf(tiny[0]).get("tokenizer.ggml.bos_token_id"))
    # every tensor but the embeddings byte for byte; the embeddings' kept rows bit for bit
    import gguf

    before = {t.name: t for t in gguf.GGUFReader(tiny[0]).tensors}
    for tensor in gguf.GGUFReader(target).tensors:
        source = before[tensor.name].data
        expected = source[keep] if tensor.name == "token_embd.weight" else source
        assert tensor.tensor_type == before[tensor.name].tensor_type and (tensor.data == expected).all(), tensor.name
    full.close()
    trimmed.close()


def test_the_trim_verb_and_its_one_line_errors(tiny, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": t, "completion": {"w": t.split()[0]}}) + "\n" for t in TEXTS))
    out = tmp_path / "out.gguf"
    result = run_cli("trim", str(tiny[0]), "--data", str(data), "--keep-top", "0", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert out.is_file() and report["kept"] < report["of"] and report["bytes_after"] < report["bytes_before"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [([str(tiny[0]), "--data", str(empty)], "the file is empty"),
             ([str(data), "--data", str(data)], "not a GGUF"),
             ([str(tiny[0]), "--data", str(data), "-o", str(tiny[0])], "that is the model itself"),
             ([str(tmp_path / "missing.gguf"), "--data", str(data)], "no such file (expected a Gemma 3 GGUF, or `base`")]
    for args, message in cases:
        target = tmp_path / "never.gguf"
        result = run_cli("trim", *args, *([] if "-o" in args else ["-o", str(target)]))
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not target.exists() and not (tmp_path / "never.gguf.partial").exists()


def test_a_keep_set_no_smaller_than_the_vocabulary_is_refused(tiny, tmp_path):
    from tinytitan.model.gguf import read_gguf
    from tinytitan.shrink.vocabulary import Vocab, trim_gguf

    vocab = Vocab.from_gguf(read_gguf(tiny[0]))
    with pytest.raises(TinyTitanError, match="no smaller than the vocabulary"):
        trim_gguf(tiny[0], list(range(len(vocab))), tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.real_model
def test_trimmed_real_model_tokenizes_every_task_row_alike_and_runs_natively(tmp_path):
    from tinytitan.data.rows import load_examples
    from tinytitan.model.engines import load_engine
    from tinytitan.model.gguf import read_gguf
    from tinytitan.model.registry import resolve
    from tinytitan.export.native_tools import find_tool
    from tinytitan.shrink.vocabulary import Vocab, keep_set, trim_gguf

    source = resolve(None).path
    rows = load_examples(shared_file("banking77", "train.csv"), duplicates="keep").examples[:2000]
    texts = [t for e in rows for t in (e.input_text, e.completion)]
    vocab = Vocab.from_gguf(read_gguf(source))
    keep = keep_set(vocab, texts, top=0)
    target = tmp_path / "banking.gguf"
    trim_gguf(source, keep, target)
    full, trimmed = load_engine("llama", None, n_ctx=512), load_engine("llama", str(target), n_ctx=512)
    for text in texts:
        assert [trimmed.piece(i) for i in trimmed.tokenize(text)] == [full.piece(i) for i in full.tokenize(text)], text
    for text in ("Zebra quokka 🦘 naïve — 東京 ∮ E⋅da = Q", "  two  spaces\tand a tab\n\n"):
        assert trimmed.detokenize(trimmed.tokenize(text)) == text
    full.close()
    trimmed.close()
    bench = subprocess.run([str(find_tool("llama-bench")), "-m", str(target), "-p", "16", "-n", "4", "-r", "1", "-t", "2"],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert "tg4" in bench.stdout  # the native tool loaded the trimmed file and decoded with it


@pytest.mark.real_model
def test_trim_takes_the_embedded_base_by_name(tmp_path):
    """`tinytitan trim base --data ...`, as the docs spell it."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"2 cups flour {i}", "completion": {"name": "flour"}}) + "\n"
                            for i in range(5)))
    result = run_cli("trim", "base", "--data", str(rows), "--keep-top", "0", "-o", str(tmp_path / "t.gguf"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["of"] == 262_144 and (tmp_path / "t.gguf").is_file()


@pytest.mark.real_model
def test_both_engines_agree_on_a_trimmed_real_model(tmp_path):
    """The parity thresholds of the full model (mean KL <= 0.01, top-1 >= 95%, perplexities within 1%),
    on text the task vocabulary was made from: the torch engine derives its tokenizer from the trimmed file."""
    from tinytitan.model.engines import load_engine
    from tinytitan.model.gguf import read_gguf
    from tinytitan.model.registry import resolve
    from tinytitan.evaluate.parity import gate_failures, run_parity
    from tinytitan.evaluate.perplexity import read_text
    from tinytitan.shrink.vocabulary import Vocab, keep_set, trim_gguf

    text = read_text(shared_file("wikitext2", "wiki.test.raw"))[:12000]
    source = resolve(None).path
    target = tmp_path / "wiki.gguf"
    trim_gguf(source, keep_set(Vocab.from_gguf(read_gguf(source)), [text], top=0), target)
    with load_engine("torch", str(target)) as torch_engine, load_engine("llama", str(target), n_ctx=512) as llama:
        assert torch_engine.tokenize(text) == llama.tokenize(text)
        report = run_parity(torch_engine, llama, text, min_tokens=1024, ctx=512)
    assert report["tokenizers_agree"]
    assert gate_failures(report, max_kl=0.01, min_top1=0.95, max_ppl_diff=0.01) == [], report


def test_export_trim_gates_and_reports_the_task_vocabulary_artifacts(tiny, tmp_path):
    from tests.conftest import tiny_lora_run

    run, data = tiny_lora_run(tiny[0], tmp_path, rows=200, steps=12, seed=5)
    result = run_cli("export", str(run), "--to", "gguf,adapter", "--quant", "q8_0", "--trim", "--keep-top", "0",
                     "--gate-rows", "12", "--force", "--json")
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    by_name = {a["artifact"]: a for a in report["artifacts"]}
    assert {"run-q8_0.gguf", "run-q8_0-task.gguf", "run-adapter-f16.gguf", "run-base-task.gguf"} <= set(by_name)
    for name in ("run-q8_0-task.gguf", "run-base-task.gguf"):
        parity = by_name[name]["parity"]
        assert parity["vocabulary"] == by_name[name]["vocabulary"] < 479  # fewer tokens than the tiny model's
        assert parity["rows"] + parity["rows_not_spelled"] == 12 and parity["kl_mean"] is not None
    assert by_name["run-base-task.gguf"]["adapter"] == "run-adapter-f16.gguf"
    assert by_name["run-q8_0-task.gguf"]["bytes"] < by_name["run-q8_0.gguf"]["bytes"]
    shown = run_cli("report", str(run), "--data", str(data), "--limit", "6", "--no-bench", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["artifact"].removesuffix(" (gate failed)") for r in json.loads(shown.stdout)["table"]}
    assert {"run-q8_0-task", "run-base-task+run-adapter-f16"} <= rows  # trimmed beside untrimmed


def _completion_batch(tokenizer, prompt: str, completion: str):
    import torch

    prompt_ids, completion_ids = tokenizer.tokenize(prompt), tokenizer.tokenize(completion)
    ids = torch.tensor([prompt_ids + completion_ids])
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[0, len(prompt_ids):] = True
    return ids, torch.ones(ids.shape, dtype=torch.long), mask


def test_training_in_the_task_vocabulary_with_every_dropped_row_as_a_negative_is_training_in_the_full_one(tiny,
                                                                                                          tmp_path):
    """The negatives complete the trimmed head's softmax: with all the dropped rows, the task-vocabulary loss is the
    full-vocabulary loss; with none, it is smaller (the dropped tokens' probability is not counted)."""
    import torch

    from tinytitan.model.gguf import read_gguf
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer, load_torch_model
    from tinytitan.train.training import CompletionLoss
    from tinytitan.shrink.vocabulary import Vocab, keep_set, trim_gguf

    vocab = Vocab.from_gguf(read_gguf(tiny[0]))
    keep = keep_set(vocab, TEXTS, top=0)
    trim_gguf(tiny[0], keep, tmp_path / "trimmed.gguf")
    refs = resolve(str(tiny[0])), resolve(str(tmp_path / "trimmed.gguf"))
    full, trimmed = (load_torch_model(ref, dtype="float32").eval() for ref in refs)
    dropped = sorted(set(range(len(vocab))) - set(keep))
    all_dropped = full.lm_head.weight.detach()[dropped]
    for prompt, completion in zip(TEXTS, TEXTS[1:]):
        batches = [_completion_batch(load_tokenizer(ref), prompt, completion) for ref in refs]
        with torch.no_grad():
            expected = CompletionLoss(full, bf16=False, head_chunk=7)(*batches[0])
            completed = CompletionLoss(trimmed, bf16=False, head_chunk=7, negatives=all_dropped)(*batches[1])
            alone = CompletionLoss(trimmed, bf16=False, head_chunk=7)(*batches[1])
        torch.testing.assert_close(completed, expected, rtol=1e-5, atol=1e-5)
        assert alone < expected - 1e-3, (prompt, float(alone), float(expected))


def test_head_negatives_are_dropped_rows_of_the_full_head_and_cover_more_of_the_dropped_probability_as_they_grow(
        tiny, tmp_path):
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.model.gguf import read_gguf
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_torch_model
    from tinytitan.shrink.vocabulary import Vocab, head_negatives, keep_set

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": t, "completion": {"w": t.split()[-1]}}) + "\n" for t in TEXTS * 3))
    config = FinetuneConfig(model=str(tiny[0]), train=str(data), output=str(tmp_path / "run"))
    keep = keep_set(Vocab.from_gguf(read_gguf(tiny[0])), TEXTS, top=0)
    weight = load_torch_model(resolve(str(tiny[0])), dtype="float32").lm_head.weight.detach()
    kept_rows = {tuple(weight[i].tolist()) for i in keep}
    all_rows = {tuple(row.tolist()): i for i, row in enumerate(weight)}
    few, few_summary = head_negatives(config, keep, count=5)
    more, more_summary = head_negatives(config, keep, count=50)
    assert few.shape == (5, weight.shape[1]) and more.shape == (50, weight.shape[1])
    for row in more.tolist():
        assert tuple(row) in all_rows and tuple(row) not in kept_rows  # a row of a dropped token
    assert len({tuple(r) for r in more.tolist()}) == 50
    assert (more[:5] == few).all()  # the likeliest first
    assert 0 < few_summary["negatives_share_of_dropped"] < more_summary["negatives_share_of_dropped"] <= 1
    assert 0 < few_summary["kept_probability"] < 1


def test_a_head_negatives_file_that_is_not_a_matrix_of_the_model_s_width_is_one_line(tiny, tmp_path):
    import numpy as np

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{t} {i}", "completion": t.split()[-1]}) + "\n"
                            for i, t in enumerate(TEXTS * 5)))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3), dtype=np.float32))
    garbage = tmp_path / "garbage.npy"
    garbage.write_text("not an array")
    for path, expected in ((wrong, "shape (4, 3), expected (rows, "), (garbage, "cannot read it as a .npy array")):
        result = run_cli("finetune", "--model", str(tiny[0]), "--train", str(data), "--output", str(tmp_path / path.stem),
                         "--max-steps", "1", "--precision", "fp32", "--head-negatives", str(path))
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_general_english_ranking_is_traced_once_per_vocabulary_and_read_back(tiny, tmp_path, monkeypatch):
    from tinytitan.shrink import vocabulary
    from tinytitan.model.gguf import read_gguf
    from tinytitan.shrink.vocabulary import MergeTracer, Vocab, general_english, general_ranking

    corpus = tmp_path / "english.txt"
    corpus.write_text("the cat sat on the mat\nthe dog and the cat\nred blue\n")
    monkeypatch.setattr(vocabulary, "_ENGLISH", corpus)
    monkeypatch.setenv("TINYTITAN_HOME", str(tmp_path / "home"))
    vocab = Vocab.from_gguf(read_gguf(tiny[0]))
    tracer = MergeTracer(vocab)
    traced = general_ranking(vocab, tracer, general_english())
    assert traced and all(0 <= i < len(vocab) for tree in traced for i in tree)
    assert general_ranking(vocab, tracer) == traced  # traced and cached
    cached, = (tmp_path / "home" / "vocab").glob("english-*.json")
    cached.write_text("[[1, 2, 3]]")
    assert general_ranking(vocab, tracer) == [[1, 2, 3]]  # read back, not traced again
    other = Vocab(vocab.tokens, [s + 1.0 for s in vocab.scores], vocab.types)
    assert general_ranking(other, MergeTracer(other)) == traced  # another vocabulary: its own file
    assert len(list((tmp_path / "home" / "vocab").glob("english-*.json"))) == 2
