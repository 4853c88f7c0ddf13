"""`tinytitan eval`: likelihood scoring with prefix reuse, task metrics end to end, benchmark files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tinytitan.evaluate import benchmarks
from tinytitan.errors import TinyTitanError
from tests.conftest import run_cli, shared_file

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
WORDS = ["cat", "dog", "red", "blue", "salt", "sugar", "cup", "one", "two", "mat"]


def _requests(engine):
    rng = random.Random(0)
    shared = engine.tokenize("one two cat dog red blue " * 3, bos=True)
    requests = []
    for _ in range(12):
        context = shared + engine.tokenize(" ".join(rng.choices(WORDS, k=rng.randint(1, 6))))
        requests.append((context + engine.tokenize(" " + " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))),
                         len(context)))
    return requests


def test_llama_logprob_sums_with_prefix_reuse_match_fresh_passes(tiny):
    from tinytitan.model.engines import load_engine

    reusing = load_engine("llama", str(tiny[0]), n_ctx=256, swa_full=True)
    fresh = load_engine("llama", str(tiny[0]), n_ctx=256)
    requests = _requests(reusing)
    expected = [float(fresh.target_logprobs(ids, first - 1).sum()) for ids, first in requests]
    np.testing.assert_allclose(reusing.logprob_sums(requests), expected, atol=1e-3)
    np.testing.assert_allclose(fresh.logprob_sums(requests), expected, atol=1e-5)  # no reuse: one pass each
    # generation in between leaves the cache in a state the next scoring must not trust
    from tinytitan.model.engines import SamplingParams

    reusing.generate(requests[0][0], SamplingParams(max_tokens=3))
    np.testing.assert_allclose(reusing.logprob_sums(requests[:3]), expected[:3], atol=1e-3)
    with pytest.raises(TinyTitanError, match="nothing to score"):
        reusing.logprob_sums([(requests[0][0], 0)])


def test_torch_logprob_sums_batched_match_one_by_one(tiny_torch):
    requests = _requests(tiny_torch)
    expected = [float(tiny_torch.target_logprobs(ids, first - 1).sum()) for ids, first in requests]
    np.testing.assert_allclose(tiny_torch.logprob_sums(requests, batch_size=5), expected, rtol=1e-5, atol=1e-4)


def test_torch_logprob_sums_of_labels_after_one_prompt_match_one_by_one(tiny_torch):
    """A prompt and its candidate labels (one token and several; the prompt longer than the tiny model's
    sliding window of 8): the prompt runs once, its cache is shared; same sums as a full pass each."""
    rng = random.Random(1)
    prompts = [tiny_torch.tokenize("the cat sat on the mat " * 3 + str(i), bos=True) for i in range(2)]
    labels = [tiny_torch.tokenize(w) for w in WORDS] + [tiny_torch.tokenize(" ".join(rng.choices(WORDS, k=k)))
                                                        for k in (2, 3, 5)]
    assert min(map(len, labels)) == 1 and max(map(len, labels)) > 3 and len(prompts[0]) > 8
    requests = [(prompt + label, len(prompt)) for prompt in prompts for label in labels]
    requests += _requests(tiny_torch)[:3]  # prefixes of their own: the padded batches
    expected = [float(tiny_torch.target_logprobs(ids, first - 1).sum()) for ids, first in requests]
    np.testing.assert_allclose(tiny_torch.logprob_sums(requests, batch_size=4), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(TinyTitanError, match="nothing to score"):
        tiny_torch.logprob_sums([(prompts[0], len(prompts[0]))])


def _rows(path, completion, n=24, seed=0):
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}",
                                        "completion": completion(rng)}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("task, completion", [
    ("extraction", lambda rng: {"w": rng.choice(WORDS)}),
    ("classification", lambda rng: rng.choice(["cat", "dog", "mat"])),
    ("generation", lambda rng: " ".join(rng.choices(WORDS, k=8)) + f" {rng.random():.6f}"),
])
def test_eval_cli_every_task_kind(tiny, tmp_path, task, completion):
    data = _rows(tmp_path / "rows.jsonl", completion)
    out = tmp_path / "out"
    model = str(tiny[0])
    result = run_cli("eval", model, "--data", str(data), "--kl-reference", model, "--out", str(out),
                     "--max-tokens", "12", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["task"]
    assert report["task"] == task and report["rows"] == 24
    (figures,) = report["results"]
    assert 0.0 <= figures["score"] <= 1.0 and figures["ci95"][0] <= figures["score"] <= figures["ci95"][1]
    assert figures["kl"]["kl_mean"] < 1e-6 and figures["kl"]["top1"] == 1.0  # the model against itself
    assert figures["reference_perplexity"] > 1.0
    lines = (out / f"{tiny[0].stem}.jsonl").read_text().splitlines()
    assert len(lines) == 24 and {"source", "prompt", "reference", "output"} <= set(json.loads(lines[0]))
    saved = json.loads((out / "eval.json").read_text())  # the layout `run` and `report` write
    assert saved["result"]["task"] == task and saved["settings"]["max_tokens"] == 12
    if task == "classification":
        # the likelihood pick is the label with the largest sum log P(label, <end_of_turn> | prompt)
        from tinytitan.model.engines import load_engine
        from tinytitan.evaluate.scoring import _encode, load_rows
        from tinytitan.data.rows import DataSpec

        engine = load_engine("llama", model, n_ctx=256, swa_full=True)
        row = _encode(engine, load_rows(str(data), DataSpec())[:1], [])[0]
        end = engine.token_id("<end_of_turn>")
        sums = [float(engine.target_logprobs(row["prompt"] + engine.tokenize(label) + [end],
                                             len(row["prompt"]) - 1).sum()) for label in ["cat", "dog", "mat"]]
        assert json.loads(lines[0])["label"] == ["cat", "dog", "mat"][int(np.argmax(sums))]
        assert "generation" in figures and "macro_f1" in figures["likelihood"]
    if task == "extraction":
        assert "json_valid" in figures and "w" in figures["fields"]
    if task == "generation":
        assert "rouge_l" in figures and "chrf" in figures


def test_eval_base_few_shot_rows_are_left_out(tiny, tmp_path):
    """Examples given to the base model are drawn from the data and scored for nobody."""
    from tinytitan.model.artifacts import Artifact
    from tinytitan.evaluate.scoring import evaluate_task

    data = _rows(tmp_path / "rows.jsonl", lambda rng: rng.choice(["cat", "dog"]), n=20)
    floor = Artifact("base", "base", "gguf", tiny[0], is_base=True)
    plain = Artifact(str(tiny[0]), "plain", "gguf", tiny[0])
    report = evaluate_task([floor, plain], str(data), base_shots=3, max_tokens=4)
    assert report["rows"] == 17 and [r["few_shot"] for r in report["results"]] == [3, 0]


def test_eval_bad_input_is_one_line(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a b"}\n')
    cases = [
        (("eval", str(tiny[0])), "nothing to evaluate"),
        (("eval", "nope.gguf", "--data", str(bad)), "nope.gguf is not a file"),
        (("eval", str(tiny[0]), "--data", str(bad)), "bad.jsonl:2"),
        (("eval", str(tiny[0]), "--data", str(tmp_path / "missing.jsonl")), "missing.jsonl: no such file"),
        (("eval", str(tiny[0]), "--benchmark", "mmlu"), "unknown mmlu"),
        (("eval", str(tiny[0]), "--benchmark", "piqa", "--benchmark-dir", str(tmp_path)), "piqa.jsonl: no such file"),
        (("eval", str(tmp_path), "--data", str(bad)), "not a fine-tuning run"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 1 and expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_benchmark_files_load_with_their_published_sizes():
    folder = shared_file("benchmarks", "piqa.jsonl").parent
    sizes = {name: len(benchmarks.load_items(name, folder)) for name in benchmarks.BENCHMARKS}
    assert sizes == {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "winogrande": 1267,
                     "hellaswag": 10042}
    wino = benchmarks.load_items("winogrande", folder)[0]
    assert wino.n_choices == 2 and wino.pair(1)[1] == wino.pair(0)[1]  # one continuation, two contexts
    piqa = benchmarks.load_items("piqa", folder)[0]
    assert piqa.pair(0)[0].endswith("\nAnswer:") and piqa.pair(0)[1].startswith(" ")


def test_few_shot_examples_are_not_scored_and_prefix_is_shared(tmp_path):
    rows = [{"query": f"Question: q{i}", "choices": [" a", " b"], "gold": i % 2} for i in range(10)]
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = benchmarks.load_items("piqa", tmp_path)
    shots, scored = benchmarks.split_shots(items, 3, seed=5)
    assert len(shots) == 3 and len(scored) == 7 and not set(map(id, shots)) & set(map(id, scored))
    prefix = benchmarks.few_shot_prefix(shots)
    assert prefix.count("\n\n") == 3 and prefix.startswith(shots[0].contexts[0])
    with pytest.raises(TinyTitanError, match="10 items"):
        benchmarks.split_shots(items, 10)


@pytest.mark.parametrize("line, expected", [
    ("not json", "not a JSON object"),
    ('{"query": "q", "choices": ["a"], "gold": 0}', r"2\+ texts"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}', "gold"),
])
def test_malformed_benchmark_rows(tmp_path, line, expected):
    (tmp_path / "arc_easy.jsonl").write_text(line + "\n")
    with pytest.raises(TinyTitanError, match=expected) as error:
        benchmarks.load_items("arc_easy", tmp_path)
    assert "arc_easy.jsonl:1" in str(error.value)


def test_run_benchmark_picks_by_likelihood(tiny_llama, tmp_path):
    rows = [{"query": f"Question: {a} {b}", "choices": ["cat dog", "red blue salt sugar"], "gold": i % 2}
            for i, (a, b) in enumerate(zip(WORDS, reversed(WORDS)))]
    (tmp_path / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = benchmarks.run_benchmark(tiny_llama, "arc_easy", tmp_path, shots=2)
    assert found["items"] == 8 and found["shots"] == 2
    shots, items = benchmarks.split_shots(benchmarks.load_items("arc_easy", tmp_path), 2)
    prefix = benchmarks.few_shot_prefix(shots)
    correct = [np.argmax(tiny_llama.logprob_sums(benchmarks.requests_for(tiny_llama, prefix, item))) == item.gold
               for item in items]
    assert found["acc"] == pytest.approx(100 * np.mean(correct))


def test_constrained_decoding_and_generation_only_classification(tiny, tmp_path):
    """With a schema, llama.cpp artifacts are also decoded under its grammar: every such output is valid
    JSON of the schema; classification without likelihoods is scored by generation."""
    from tinytitan.model.artifacts import Artifact
    from tinytitan.evaluate.scoring import evaluate_task

    gguf = Artifact(str(tiny[0]), "tiny", "gguf", tiny[0])
    data = _rows(tmp_path / "rows.jsonl", lambda rng: {"w": rng.choice(["cat", "dog", "red"]), "n": rng.randint(0, 3)})
    schema = {"type": "object", "properties": {"w": {"enum": ["cat", "dog", "red"]}, "n": {"enum": [0, 1, 2, 3]}},
              "required": ["w", "n"], "additionalProperties": False}
    report = evaluate_task([gguf], str(data), schema=schema, max_tokens=24, out=tmp_path / "out")
    (figures,) = report["results"]
    assert figures["constrained"]["json_valid"] == 1.0 and figures["json_valid"] < 1.0  # the random model, free
    records = [json.loads(line) for line in (tmp_path / "out" / "tiny.jsonl").read_text().splitlines()]
    assert json.loads(records[0]["constrained_output"])["w"] in ("cat", "dog", "red")
    # the constrained score has its own interval, and each row's file holds both verdicts
    constrained = figures["constrained"]
    assert constrained["exact_match"] == sum(r["constrained_correct"] for r in records) / len(records)
    assert constrained["ci95"][0] <= constrained["exact_match"] <= constrained["ci95"][1]
    assert figures["score"] == sum(r["correct"] for r in records) / len(records)

    labels = _rows(tmp_path / "labels.jsonl", lambda rng: rng.choice(["cat", "dog", "mat"]))
    report = evaluate_task([gguf], str(labels), likelihood=False, max_tokens=8, out=tmp_path / "labels-out")
    (figures,) = report["results"]
    assert figures["scored_by"] == "generation" and "likelihood" not in figures
    assert figures["score"] == figures["generation"]["accuracy"]
    records = [json.loads(line) for line in (tmp_path / "labels-out" / "tiny.jsonl").read_text().splitlines()]
    assert {r["constrained_output"] for r in records} <= {"cat", "dog", "mat"}  # only ever a label
    assert figures["constrained"]["accuracy"] == \
        sum(r["constrained_output"] == r["reference"] for r in records) / len(records)
    # constrained=False (a recipe's `constrained = false`, `--no-constrained`): one decoding pass, labels too
    (figures,) = evaluate_task([gguf], str(labels), likelihood=False, max_tokens=8, constrained=False)["results"]
    assert "constrained" not in figures and figures["score"] == figures["generation"]["accuracy"]
    result = run_cli("eval", str(tiny[0]), "--data", str(labels), "--no-likelihood", "--no-constrained", "--json",
                     "--max-tokens", "8", "--out", str(tmp_path / "plain"))
    assert result.returncode == 0, result.stderr
    assert "constrained" not in json.loads(result.stdout)["task"]["results"][0]
    (written,) = (tmp_path / "plain").glob("*.jsonl")
    assert written.read_text().count('"output"') == 24 and "constrained_output" not in written.read_text()
    result = run_cli("eval", str(tiny[0]), "--data", str(data), "--schema", str(tmp_path / "missing.json"))
    assert result.returncode == 1 and "--schema" in result.stderr and "Traceback" not in result.stderr


def test_constrained_decoding_takes_copied_words_from_each_row(tiny, tmp_path):
    """A schema field marked `x-input-words` is decoded, row by row, from that row's own words."""
    import re

    from tinytitan.model.artifacts import Artifact
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.evaluate.scoring import _grammars, evaluate_task
    from tinytitan.data.structured import input_words
    from tinytitan.data.grammar import schema_to_grammar

    gguf = Artifact(str(tiny[0]), "tiny", "gguf", tiny[0])
    data = _rows(tmp_path / "rows.jsonl", lambda rng: {"w": rng.choice(WORDS)})
    schema = {"type": "object", "properties": {"w": {"type": "string", "x-input-words": ["zz"]}},
              "required": ["w"], "additionalProperties": False}
    evaluate_task([gguf], str(data), schema=schema, max_tokens=16, out=tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "out" / "tiny.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()]
    assert len(records) == len(prompts) == 24
    for record, prompt in zip(records, prompts):
        value = re.match(r'\{"w":"([^"]*)', record["constrained_output"])  # a cut-off output is scored too
        assert value, record["constrained_output"]
        assert set(value.group(1).split()) <= input_words(prompt) | {"zz"}, (prompt, value.group(1))
    # each row gets the grammar made with its own input (the random model may well write nothing)
    examples = load_examples(data, DataSpec()).examples
    assert _grammars("extraction", schema, [], examples) == [schema_to_grammar(schema, p) for p in prompts]
    assert len(set(_grammars("extraction", schema, [], examples))) == len(set(prompts))


def test_two_artifacts_of_one_name_keep_their_own_rows_and_example_files(tiny, tmp_path):
    """Two runs' models of the same file name (or one model twice) are labelled apart: two rows, two files."""
    import shutil

    data = _rows(tmp_path / "rows.jsonl", lambda rng: rng.choice(["cat", "dog", "mat"]))
    copies = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        copies.append(str(shutil.copy(tiny[0], tmp_path / folder / "model.gguf")))
    result = run_cli("eval", *copies, copies[0], "--data", str(data), "--no-likelihood", "--no-constrained",
                     "--max-tokens", "4", "--limit", "6", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    labels = json.loads(result.stdout)["artifacts"]
    assert labels == [copies[0], copies[1], f"{copies[0]} (2)"]
    assert len(list((tmp_path / "out").glob("*.jsonl"))) == 3
