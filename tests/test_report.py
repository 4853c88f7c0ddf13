"""`tinytitan report` and `tinytitan bench` on a tiny run: every artifact in one table, files written."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

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
    assert set(rows) == {"torch (run)", "run-f16", "run-q8_0", "base+run-adapter-f16", "base (few-shot)",
                         "classical baseline (logistic regression per field)"}
    assert rows["torch (run)"]["kl"] < 1e-9 and rows["torch (run)"]["tg_tps"] is None  # the reference itself
    for name in ("run-f16", "run-q8_0", "base+run-adapter-f16"):
        row = rows[name]
        assert row["kl"] < 0.05 and row["tg_tps"] > 0 and row["pp_tps"] > 0 and row["j_per_conversation"] > 0
        assert row["answer_ms"] > 1000 * row["pp_tps"] ** -1  # the first token, then the answer's tokens
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
    assert page.count('src="data:image/png;base64,') == 3 and page.count("<img ") == 3  # every plot inlined
    assert "<title>tinytitan report: run</title>" in page and "<h1>tinytitan report: run</h1>" in page
    assert report.startswith("# tinytitan report: run\n")  # the run's name
    # the samples, field by field ({"w": word}): every field line of report.md is a marked row of the page
    shown = Page(page).fields()
    assert shown and {kind for kind, _ in shown} <= {"field-ok", "field-wrong"}
    assert [cells[0] for _, cells in shown] == re.findall(r"^  - (?:\*\*)?([^*:]+)", report, re.M)
    assert [kind == "field-wrong" for kind, _ in shown] == \
        [line.startswith("**") for line in re.findall(r"^  - (.*)$", report, re.M)]
    bench = json.loads((run / "report" / "bench.json").read_text())["result"]
    base = next(b for b in bench if b["artifact"] == "base (few-shot)")
    assert [c["depth"] for c in base["context"]] == [64, 128]
    # what the report says of how it measured is read from the results it shows
    threads = "/".join(str(n) for n in sorted({s["threads"] for b in bench for s in b["speed"]}))
    assert f"Speed: {threads} threads, pp{base['pp']} / tg{base['tg']} as llama-bench measures them." in report
    top_k = {r["kl"]["top_k"] for r in json.loads((run / "report" / "eval.json").read_text())["result"]["results"]
             if "kl" in r}
    assert len(top_k) == 1 and f"(top-{top_k.pop()} cache)" in report
    assert len(list((run / "report" / "examples").glob("*.jsonl"))) == 6  # the five artifacts and the baseline
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


def fake_result(name: str, kind: str, size: float, few_shot: int = 0, **figures) -> dict:
    """One artifact's evaluation result as `evaluate_task` writes it, with only what the report reads."""
    return {"artifact": name, "size_mb": size, "headline": "exact_match", "score": 0.5, "ci95": [0.3, 0.7],
            "kl": {"kl_mean": 0.002, "top_k": 32}, "few_shot": few_shot, "kind": kind, "vocabulary": None,
            "reference": kind == "run", "servable": kind != "run" and not few_shot, **figures}


def fake_evaluation(task: str, folder, records: list[dict], **figures) -> dict:
    """An evaluation of three artifacts whose per-example file (run-q8_0's, the one described) is `records`."""
    (folder / "examples").mkdir()
    (folder / "examples" / "run-q8_0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"task": task, "rows": len(records), "data": "data/test.jsonl",
            "results": [fake_result("torch (run)", "run", 1000, **figures),
                        fake_result("run-q8_0", "gguf", 278, **figures),
                        fake_result("base (few-shot)", "gguf", 241, few_shot=2, **figures)]}


class Page(HTMLParser):
    """What a reader of report.html sees: its text (no CSS), its h2 headings, and each row of the samples
    table as (class, cell texts)."""

    def __init__(self, page: str):
        super().__init__()
        self.text, self.headings, self.sample_rows, self.classes = [], [], [], []
        self._where: list[str] = []  # the open tags
        self._in_samples = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.classes += (attrs.get("class") or "").split()
        self._in_samples = self._in_samples or attrs.get("id") == "samples"
        if tag == "tr" and self._in_samples:
            self.sample_rows.append((attrs.get("class", ""), []))
        if tag in ("td", "th") and self._in_samples:
            self.sample_rows[-1][1].append("")
        self._where.append(tag)

    def handle_endtag(self, tag):
        while self._where and self._where.pop() != tag:
            pass
        if tag == "table":
            self._in_samples = False

    def handle_data(self, data):
        if "style" in self._where or "script" in self._where:
            return
        self.text.append(data)
        if self._where and self._where[-1] == "h2":
            self.headings.append(data)
        if self._in_samples and {"td", "th"} & set(self._where) and self.sample_rows and self.sample_rows[-1][1]:
            self.sample_rows[-1][1][-1] += data

    def fields(self) -> list[tuple[str, list[str]]]:
        """The samples table's field rows: (field-ok or field-wrong, [field, expected, got])."""
        return [(kind, cells) for kind, cells in self.sample_rows if kind.startswith("field-")]


def test_a_json_report_shows_each_field_expected_and_got(tmp_path, monkeypatch):
    """Each shown row of a JSON task field by field, the wrong fields marked, in both pages alike; the
    run's name as the title; the report's own markup rendered, the data's escaped."""
    from tinytitan.report.render import write_report

    def row(reference: dict, output: str, correct: float) -> dict:
        return {"prompt": "2 cups of <b>flour</b>", "reference": json.dumps(reference), "output": output,
                "correct": correct}

    records = [row({"item": "flour", "unit": "cup"}, '{"item": "flour", "unit": "cups"}', 0.0),
               row({"item": "salt", "unit": "pinch"}, '{"unit": "pinch", "item": "salt"}', 1.0),
               row({"item": "sugar", "unit": "tbsp"}, "sugar, one tbsp", 0.0),
               row({"item": "egg", "unit": "whole"}, '{"item": "egg", "note": "large"}', 0.0)]
    fields = {"unit": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4},
              "item": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4}}
    run = tmp_path / "my-run"
    run.mkdir()
    evaluation = fake_evaluation("extraction", run, records, fields=fields,
                                 top_errors=[{"field": "unit", "error": "wrong", "count": 1}])
    monkeypatch.chdir(run)  # `tinytitan report .`: the title is the folder's name all the same
    write_report(Path("."), run, evaluation, None, recommended={"artifact": "run-q8_0"})
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "<title>tinytitan report: my-run</title>" in page and "<h1>tinytitan report: my-run</h1>" in page
    assert md.startswith("# tinytitan report: my-run\n")
    seen = Page(page)
    text = "".join(seen.text)
    # the report's own `code` and **bold** are rendered, not shown raw; the data's markup is escaped, not obeyed
    assert "`" not in text and "**" not in text and "<code>data/test.jsonl</code>" in page
    assert "<strong>run-q8_0</strong> (recommended)" in page and "2 cups of <b>flour</b>" in text and "<b>" not in page
    # the same sections in both pages
    assert seen.headings == re.findall(r"^## (.+)$", md, re.M) == \
        ["Comparison", "Where the errors are", "Samples and worst errors", "Plots"]
    assert page.count('id="samples"') == 1
    # the samples, the first three rows then the worst error (row 3 is a sample already, so only row 4)
    assert seen.fields() == [
        ("field-ok", ["item", '"flour"', '"flour"']),
        ("field-wrong", ["unit", '"cup"', '"cups"wrong value']),
        ("field-ok", ["item", '"salt"', '"salt"']),
        ("field-ok", ["unit", '"pinch"', '"pinch"']),
        ("field-wrong", ["(output)", '{"item": "sugar", "unit": "tbsp"}', "sugar, one tbspnot a JSON object"]),
        ("field-ok", ["item", '"egg"', '"egg"']),
        ("field-wrong", ["unit", '"whole"', "(none)missing"]),
        ("field-wrong", ["note", "(none)", '"large"not expected'])]
    for line in ('- **sample, row 1** (wrong): 2 cups of \\<b>flour\\</b>', '  - item: "flour"',
                 '  - **unit**: expected "cup", got "cups"', '- **sample, row 2** (right)', '  - unit: "pinch"',
                 '  - **(output)**: not a JSON object, got `sugar, one tbsp`; expected {"item": "sugar", "unit": "tbsp"}',
                 '- **worst error, row 4** (wrong)', '  - **unit**: expected "whole", missing',
                 '  - **note**: not expected, got "large"'):
        assert line in md, line
    assert "| **run-q8_0** (recommended) |" in md and "| unit | 4 | 0.500 | 0.500 | 0.500 |" in md
    # the plots: inlined in the page, linked from the Markdown
    assert page.count('src="data:image/png;base64,') == 1 and "![Task metric vs file size](metric_vs_size.png)" in md
    # fits a 1280 px page: the samples table wraps, wide tables scroll inside their own box
    assert re.search(r"table\.samples \{[^}]*table-layout: fixed; width: 100%", page)
    assert re.search(r"table\.samples th, table\.samples td \{[^}]*overflow-wrap: anywhere", page)
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", page) and page.count('<div class="table-wrap">') == 2


def test_a_label_report_shows_the_whole_answer(tmp_path):
    from tinytitan.report.render import write_report

    records = [{"prompt": f"review {n}", "reference": "positive", "output": "negative" if n % 2 else "positive",
                "correct": float(n % 2 == 0)} for n in range(6)]
    evaluation = fake_evaluation("classification", tmp_path, records)
    write_report(tmp_path, tmp_path, evaluation, None, title="sentiment")
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "<title>tinytitan report: sentiment</title>" in page
    assert Page(page).fields() == [("field-ok", ["positive", "positive"]),
                                   ("field-wrong", ["positive", "negativewrong value"]),
                                   ("field-ok", ["positive", "positive"]),
                                   ("field-wrong", ["positive", "negativewrong value"]),  # the worst errors: rows 4, 6
                                   ("field-wrong", ["positive", "negativewrong value"])]
    assert '  - **answer**: expected "positive", got "negative"' in md and '  - answer: "positive"' in md
    assert "3 of 6 rows wrong" in md


def test_a_free_text_report_compares_perplexity_with_the_base(tmp_path):
    from tinytitan.report.render import write_report

    def result(name, kind, size, ppl, few_shot=0):
        return fake_result(name, kind, size, few_shot, headline="chrf", score=0.3, ci95=[0.29, 0.31],
                           reference_perplexity=ppl, chrf=30.0, rouge_l=0.2)

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
    assert "5 of 5 rows with chrF below 50" in report and "least like the reference, row 4** (chrF below 50)" in report
    assert '  - **answer**: expected "Once upon a time a cat sat.", got "Once there was a dog."' in report
    page = Page((tmp_path / "report.html").read_text())
    assert page.fields()[0] == ("field-wrong", ["Once upon a time a cat sat.", "Once there was a dog.chrF below 50"])
