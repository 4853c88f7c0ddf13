"""`tinytitan report` and `tinytitan bench` on a tiny run: every artifact in one table, files written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_lora_run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def exported_run(tiny, tmp_path_factory):
    run, data = tiny_lora_run(tiny[0], tmp_path_factory.mktemp("report"), rows=400, steps=30, seed=3)
    exported = run_cli("export", str(run), "--to", "gguf,adapter", "--quant", "f16,q8_0", "--gate-rows", "20")
    assert exported.returncode == 0, exported.stderr
    return run, data


def test_report_covers_every_artifact(exported_run):
    run, data = exported_run
    result = run_cli("report", str(run), "--data", str(data), "--limit", "12", "--context", "64,128", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {r["artifact"]: r for r in summary["table"]}
    assert set(rows) == {"torch (run)", "run-f16", "run-q8_0", "base+run-adapter-f16", "base (few-shot)"}
    assert rows["torch (run)"]["kl"] < 1e-9 and rows["torch (run)"]["tg_tps"] is None  # the reference itself
    for name in ("run-f16", "run-q8_0", "base+run-adapter-f16"):
        row = rows[name]
        assert row["kl"] < 0.05 and row["tg_tps"] > 0 and row["pp_tps"] > 0 and row["j_per_conversation"] > 0
    report = (run / "report" / "report.md").read_text()
    for name in rows:  # every artifact has its row; the recommended one is marked
        mark = f"**{name}** (recommended)" if name == summary["recommended"]["artifact"] else name
        assert f"| {mark} |" in report, name
    assert "![Task metric vs file size](metric_vs_size.png)" in report
    # per-field scores over the values present, with their support (a field in 1 of 300 rows is not "99.7%")
    assert "| field | support | precision | recall | F1 |" in report and "| w | 12 |" in report
    for png in ("loss.png", "metric_vs_size.png", "context.png"):
        assert (run / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "src='report" not in page
    assert "<title>tinytitan report: run</title>" in page and "# tinytitan report: run\n" in report  # the run's name
    bench = json.loads((run / "report" / "bench.json").read_text())["result"]
    base = next(b for b in bench if b["artifact"] == "base (few-shot)")
    assert [c["depth"] for c in base["context"]] == [64, 128]
    # what the report says of how it measured is read from the results it shows
    threads = "/".join(str(n) for n in sorted({s["threads"] for b in bench for s in b["speed"]}))
    assert f"Speed: {threads} threads, pp{base['pp']} / tg{base['tg']} as llama-bench measures them." in report
    top_k = {r["kl"]["top_k"] for r in json.loads((run / "report" / "eval.json").read_text())["result"]["results"]
             if "kl" in r}
    assert len(top_k) == 1 and f"(top-{top_k.pop()} cache)" in report
    assert len(list((run / "report" / "examples").glob("*.jsonl"))) == 5
    # the base model's solved examples come from the run's training split: every one of the 12 rows is scored
    evaluation = json.loads((run / "report" / "eval.json").read_text())["result"]
    assert evaluation["rows"] == 12 and evaluation["left_out"] == 0
    assert summary["recommended"]["artifact"] in rows and summary["serve"] == f"tinytitan serve --fleet {run / 'report' / 'fleet.toml'}"
    from tinytitan.serve.fleet import load_fleet

    (task,) = load_fleet(run / "report" / "fleet.toml")  # the recommendation, servable as written
    assert task.name == "run" and task.defaults == {"temperature": 0.0, "max_tokens": 256}
    # the same inputs again: every artifact's decoded rows are reused, nothing is decoded twice
    again = run_cli("report", str(run), "--data", str(data), "--limit", "12", "--context", "64,128", "--json")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("its decoded rows are reused") == 5, again.stderr


def test_bench_cli_json_last_line(tiny, tmp_path):
    result = run_cli("bench", str(tiny[0]), "--threads", "1", "--pp", "32", "--tg", "8", "-r", "1",
                     "--context", "64", "--profile", "phone", "--profile", "3.5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (artifact,) = report["artifacts"]
    (speed,) = artifact["speed"]
    assert speed["threads"] == 1 and speed["pp_tps"] > 0 and speed["tg_tps"] > 0 and speed["ttft_s"] > 0
    assert artifact["context"][0]["depth"] == 64 and artifact["context"][0]["kv_mb"] > 0
    estimates = artifact["energy"]["estimates"]
    assert [e["profile"] for e in estimates] == ["phone", "3.5 W/core"]
    assert estimates[1]["j_per_decode_token"] == pytest.approx(speed["cpu_s_per_decode_token"] * 3.5)
    assert "pp t/s" in result.stdout  # the table comes before the JSON line


@pytest.mark.parametrize("args, expected", [
    (("--threads", "0"), "--threads"),
    (("--context", "4k"), "--context"),
    (("--conversation", "1,2"), "--conversation"),
    (("--profile", "toaster"), "--profile"),
    (("--battery-wh", "0"), "--battery-wh"),
])
def test_bench_bad_flags(tiny, args, expected):
    result = run_cli("bench", str(tiny[0]), *args)
    assert result.returncode == 1 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_report_needs_a_run_with_exports(tmp_path):
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 1 and "not a fine-tuning run" in result.stderr


def test_an_adapter_for_another_model_is_refused(exported_run):
    """llama.cpp would crash on it: the shapes are checked first."""
    run, data = exported_run
    result = run_cli("eval", f"base+{run / 'export' / 'run-adapter-f16.gguf'}", "--data", str(data))
    assert result.returncode == 1 and "does not fit" in result.stderr and "another model" in result.stderr


def test_a_free_text_report_compares_perplexity_with_the_base(tmp_path):
    from tinytitan.report.render import write_report

    def result(name, kind, size, ppl, few_shot=0):
        return {"artifact": name, "size_mb": size, "headline": "chrf", "score": 0.3, "ci95": [0.29, 0.31],
                "kl": {"kl_mean": 0.002}, "reference_perplexity": ppl, "chrf": 30.0, "rouge_l": 0.2,
                "few_shot": few_shot, "kind": kind, "vocabulary": None, "reference": kind == "run",
                "servable": kind != "run" and not few_shot}

    evaluation = {"task": "generation", "rows": 2, "data": "test.jsonl",
                  "results": [result("torch (run)", "run", 1000, 5.5), result("run-q8_0", "gguf", 278, 5.53),
                              result("base (few-shot)", "gguf", 241, 7.5, few_shot=2)]}
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "run-q8_0.jsonl").write_text("".join(json.dumps(
        {"prompt": f"story {n}", "reference": "Once upon a time a cat sat.", "output": "Once there was a dog.",
         "chrf": 20.0}) + "\n" for n in range(5)))
    write_report(tmp_path, tmp_path, evaluation, None)
    report = (tmp_path / "report.md").read_text()
    assert "## Perplexity of the held-out references" in report
    assert "| run-q8_0 | 5.53 | 30.0 | 0.200 |" in report and "| base (few-shot) | 7.50 |" in report
    assert "run-q8_0 vs the base model: perplexity 5.53 vs 7.50 (-26%)." in report
    assert "5 of 5 rows with chrF below 50" in report and "least like the reference" in report
