"""`tinytitan report RUN --data test.jsonl`: one Markdown + self-contained HTML report of a run.

It evaluates every artifact of the run side by side on the same rows (`evaluate.evaluate_task`):
the trained torch model, each exported GGUF, base + GGUF adapter, and the base model with a
few-shot prompt as the floor; measures the GGUF artifacts' speed, memory and energy
(`bench.bench_artifact`, 2 threads) and the base model's context scaling; then writes
`RUN/report/`: report.md, report.html (plots inlined), the PNG plots (loss curves, metric vs file
size, decode speed vs context length), eval.json / bench.json and per-example JSONL files.
Finished measurements are reused when the report is made again with the same inputs (`--fresh`
measures again).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.files import FolderLock, read_json, write_json, write_text
from tinytitan.tables import format_cell, markdown_table

ENERGY_PROFILE = "phone"  # the J/conversation column: the edge device this tool ships to


def add_arguments(parser) -> None:
    parser.add_argument("run", help="a `tinytitan run` folder (RUN, or RUN/train) or a fine-tuning run folder, "
                                    "with export/ from `tinytitan export`")
    parser.add_argument("--data", default=None, help="held-out task rows (default: the run's test file)")
    parser.add_argument("--schema", default=None, metavar="SCHEMA.json",
                        help="JSON tasks: decode constrained by this schema too, and serve with it (default: the "
                             "run's schema.json, when it has one)")
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                        help="also decode llama.cpp artifacts constrained (the schema, or the label set)")
    parser.add_argument("--likelihood", action=argparse.BooleanOptionalAction, default=None,
                        help="classification: score every label's likelihood too")
    parser.add_argument("--limit", type=options.positive_int, default=None, help="score at most this many rows")
    parser.add_argument("--base-shots", type=options.non_negative_int, default=None,
                        help="solved examples, from the run's training split, in the base model's prompt")
    parser.add_argument("--max-tokens", type=options.positive_int, default=None, help="generation cap per row")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="recommend the smallest artifact within this of the best score (a fraction)")
    parser.add_argument("--context", default="1024,4096,16384,32768",
                        help="context lengths for the base model's scaling curve, or 'none'")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True,
                        help="measure speed, memory and energy (off: quality only)")
    parser.add_argument("--only", default=None,
                        help="exported GGUFs to include, by name ending, e.g. f16,q8_0,q4_k_m,adapter-f16 (default: all)")
    parser.add_argument("--out", default=None, help="report folder (default: RUN/report)")
    parser.add_argument("--fresh", action="store_true", help="measure speed again even if results are saved")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None, help="CPU threads")
    options.add_json(parser)


def run(args) -> None:
    """The run's report stage on any run folder: evaluate (reusing every artifact already decoded on the
    same rows), bench, report, recommend, and write the fleet file that serves the recommendation. The
    evaluation settings a `tinytitan run` used (in its eval.json) are the defaults; flags override them."""
    run_dir, root = locate_run(Path(args.run))
    with FolderLock(root or run_dir, "report"):  # not while a run or an export writes there
        _report(args, run_dir, root)


def _report(args, run_dir: Path, root: Path | None) -> None:
    from tinytitan.model.artifacts import parse_artifact
    from tinytitan.evaluate.bench import bench_for_report
    from tinytitan.evaluate.eval import evaluate_task, read_schema
    from tinytitan.pipeline.recipe import EvalSettings
    from tinytitan.report.summary import print_summary

    recorded = _recorded_settings(root / "report" / "eval.json") if root else {}
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    settings = EvalSettings(**{**{k: v for k, v in recorded.items() if k in known}, **{k: v for k, v in {
        "constrained": args.constrained, "likelihood": args.likelihood, "base_shots": args.base_shots,
        "max_tokens": args.max_tokens, "tolerance": args.tolerance}.items() if v is not None}})
    if not 0 <= settings.tolerance < 1:
        raise TinyTitanError(f"--tolerance {settings.tolerance}: expected a fraction in [0, 1)")
    config = json.loads((run_dir / "config.json").read_text())
    data = args.data or (str(root / "data" / "test.jsonl") if root else config.get("test") or None)
    if not data:
        raise TinyTitanError(f"{run_dir}: the run has no test file; pass --data with held-out rows")
    out = Path(args.out) if args.out else (root or run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    schema_path = Path(args.schema) if args.schema else root / "schema.json" if root else None
    schema_path = schema_path if schema_path and (args.schema or schema_path.exists()) else None
    schema = read_schema(str(schema_path)) if schema_path and settings.constrained else None
    artifacts = run_artifacts(run_dir, [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None)
    limit = args.limit or settings.rows or None
    evaluation = evaluate_task(artifacts, data, limit=limit, base_shots=settings.base_shots,
                               shots_data=training_rows(run_dir), kl_reference=parse_artifact(str(run_dir)),
                               max_tokens=settings.max_tokens, threads=args.threads, out=out / "examples",
                               schema=schema, likelihood=settings.likelihood, constrained=settings.constrained)
    write_json(out / "eval.json", {"result": evaluation, "settings": dataclasses.asdict(settings)})
    bench = None
    if args.bench:
        ggufs = [a for a in artifacts if a.kind != "run"]
        bench = _cached(out / "bench.json", {"artifacts": [a.spec for a in ggufs], "context": args.context},
                        args.fresh, lambda: bench_for_report(ggufs, args.context, data))
    name = (root or run_dir).resolve().name
    summary = finish_report(run_dir, out, evaluation, bench, name=name, tolerance=settings.tolerance,
                            fleet=(root or out) / "fleet.toml", schema=schema_path if schema else None,
                            system=config.get("system", ""), max_tokens=settings.max_tokens, source=str(run_dir))
    summary = {"run": str(root or run_dir), **summary, "nothing_to_do": False}
    write_json(out / "summary.json", summary)
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)


def _recorded_settings(path: Path) -> dict:
    """The evaluation settings a `tinytitan run` recorded beside its results ({} when none, or unreadable)."""
    try:
        recorded = json.loads(path.read_text()).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def locate_run(path: Path) -> tuple[Path, Path | None]:
    """(the fine-tuning folder, the `tinytitan run` folder around it or None) of RUN or RUN/train."""
    if (path / "train" / "config.json").is_file():
        return path / "train", path
    if (path / "config.json").is_file():
        return path, path.parent if (path.parent / "stages.json").is_file() else None
    raise TinyTitanError(f"{path}: not a fine-tuning run (no config.json), nor a `tinytitan run` folder (no "
                         f"train/config.json)")


def run_artifacts(run_dir: Path, only: list[str] | None = None) -> list:
    """The trained model, every exported GGUF (those kept with --force marked as failing the gate),
    base + adapter, and the base."""
    from dataclasses import astuple

    from tinytitan.model.artifacts import Artifact, parse_artifact
    from tinytitan.model.registry import DEFAULT_MODEL

    model = json.loads((run_dir / "config.json").read_text())["model"]
    base_spec = "base" if model == DEFAULT_MODEL else model  # the model the run was trained from
    found = [parse_artifact(str(run_dir))]
    export = run_dir / "export"
    ggufs = sorted(export.glob("*.gguf"), key=lambda f: -f.stat().st_size) if export.is_dir() else []
    for gguf in ggufs:  # the largest first: F16 down to the smallest quant, then the adapter
        if gguf.name == "imatrix.gguf" or (only and not any(gguf.stem.endswith("-" + o) for o in only)):
            continue
        manifest_path = gguf.with_name(gguf.name + ".manifest.json")
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        failed = manifest.get("status") == "failed"
        if manifest.get("kind") == "adapter-task":  # a base with the task vocabulary: it runs the run's adapter
            adapter = gguf.with_name(manifest["adapter"])
            if not adapter.exists():
                continue
            artifact, label = parse_artifact(f"{gguf}+{adapter}"), f"{gguf.stem}+{adapter.stem}"
        else:
            artifact = parse_artifact(f"{base_spec}+{gguf}" if parse_artifact(str(gguf)).kind == "adapter" else str(gguf))
            label = ("base+" if artifact.kind == "adapter" else "") + gguf.stem
        label += " (gate failed)" if failed else ""
        found.append(Artifact(artifact.spec, label, *astuple(artifact)[2:]))  # kept by export --force: shown, marked
    if len(found) == 1:
        wanted = f" matching --only {','.join(only)}" if only else ""
        raise TinyTitanError(f"{export}: no exported GGUF files{wanted} (run `tinytitan export {run_dir}` first)")
    found.append(Artifact(base_spec, "base (few-shot)", "gguf", None if base_spec == "base" else Path(model),
                          is_base=True))
    return found


def _cached(path: Path, key: dict, fresh: bool, compute):
    saved = None if fresh else read_json(path)  # none yet, or a file cut short: computed again
    if isinstance(saved, dict) and saved.get("key") == key and "result" in saved:
        return saved["result"]
    result = compute()
    write_json(path, {"key": key, "result": result})
    return result


def training_rows(run_dir: Path) -> list:
    """The examples the run trained on (its training split, as fine-tuning split them): where the base
    model's solved examples come from, so that every held-out row is scored."""
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.data.check import split_rows

    config = FinetuneConfig(**json.loads((run_dir / "config.json").read_text()))
    return split_rows(config)[1]["train"]


def table_rows(evaluation: dict, bench: list | None) -> list[dict]:
    speeds = {b["artifact"]: b for b in bench or []}
    rows = []
    for r in evaluation["results"]:
        b = speeds.get(r["artifact"])
        speed = b["speed"][0] if b else None
        conversation = next((e["conversation"] for e in b["energy"]["estimates"] if e["profile"] == ENERGY_PROFILE),
                            None) if b else None
        constrained = r.get("constrained", {}).get(r["headline"]) if "constrained" in r else None
        rows.append({"artifact": r["artifact"], "size_mb": r["size_mb"], "metric": r["headline"],
                     "score": r["score"], "ci95": r["ci95"], "kl": r.get("kl", {}).get("kl_mean"),
                     "perplexity": r.get("reference_perplexity"),
                     "constrained": constrained,
                     "pp_tps": speed and speed["pp_tps"], "tg_tps": speed and speed["tg_tps"],
                     "rss_mb": speed and speed["peak_rss_mb"],
                     "j_per_conversation": conversation and conversation["joules"]})
    return rows


def finish_report(run_dir: Path, out: Path, evaluation: dict, bench: list | None, *, name: str, tolerance: float,
                  fleet: Path, schema: Path | None, system: str, max_tokens: int, source: str) -> dict:
    """What a report ends with, for `tinytitan report` and the run's report stage alike: the recommended
    artifact (the smallest that passed its gate within `tolerance` of the best), the report, a fleet
    file serving it (with the schema, greedy) and the summary; returns the summary."""
    from tinytitan.report.summary import recommend, served_score
    from tinytitan.serve.fleet import write_fleet

    rows = table_rows(evaluation, bench)
    pick = recommend(rows, tolerance, constrained=schema is not None)  # the fleet serves the schema
    paths = write_report(run_dir, out, evaluation, bench, recommended=pick, title=name)
    spec = next(r["spec"] for r in evaluation["results"] if r["artifact"] == pick["artifact"]) if pick else None
    about = f"the report of {source}"
    if pick:
        constrained = schema is not None and pick.get("constrained") is not None
        about = (f"the recommended artifact of {source}: {pick['artifact']} ({pick['metric']} "
                 f"{100 * served_score(pick, constrained):.1f}%{', constrained' if constrained else ''})")
    serve = write_fleet(fleet, name, spec, about=about, schema=schema, system=system, max_tokens=max_tokens)
    return {"task": evaluation["task"], "rows": evaluation["rows"], "table": rows, "recommended": pick,
            "serve": serve, "report": str(paths["md"]), "html": str(paths["html"])}


def write_report(run_dir: Path, out: Path, evaluation: dict, bench: list | None, recommended: dict | None = None,
                 title: str | None = None) -> dict:
    from tinytitan.report import figures as report_plots

    plots = {}
    if (run_dir / "metrics.jsonl").exists():
        from tinytitan.report.plots import loss_curve

        loss_curve(run_dir / "metrics.jsonl", out / "loss.png")
        plots["Training and validation loss"] = out / "loss.png"
    plots["Task metric vs file size"] = report_plots.metric_vs_size(table_rows(evaluation, bench), out / "metric_vs_size.png")
    scaling = next((b for b in bench or [] if b["context"]), None)
    if scaling:
        plots["Decode speed and KV cache vs context length"] = report_plots.context_scaling(scaling, out / "context.png")
    sections = _sections(run_dir, evaluation, bench, out, recommended)
    md_path, html_path = out / "report.md", out / "report.html"
    title = title or run_dir.name
    md = [f"# tinytitan report: {title}", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", *body, ""]
    md += ["## Plots", ""] + [f"![{title}]({path.name})" for title, path in plots.items()]
    write_text(md_path, "\n".join(md) + "\n")
    write_text(html_path, _html(title, sections, plots))
    return {"md": md_path, "html": html_path}


def _measured_how(evaluation: dict, bench: list | None) -> str:
    """How the table's KL, speed and energy were measured, read from the results themselves."""
    said = []
    top_k = sorted({r["kl"]["top_k"] for r in evaluation["results"] if r.get("kl", {}).get("top_k")})
    if top_k:
        said.append(f"KL is measured on the reference completions against the trained torch model (top-"
                    f"{'/'.join(map(str, top_k))} cache).")
    speeds = [s for b in bench or [] for s in b["speed"]]
    if speeds:
        threads = "/".join(str(n) for n in sorted({s["threads"] for s in speeds}))
        tests = sorted({(b["pp"], b["tg"]) for b in bench if "pp" in b})
        said.append(f"Speed: {threads} threads" + ("".join(f", pp{pp} / tg{tg}" for pp, tg in tests)
                                                      + " as llama-bench measures them." if tests else "."))
        shapes = [(e["profile"], e["conversation"]) for b in bench for e in b["energy"]["estimates"]
                  if e["profile"] == ENERGY_PROFILE and e.get("estimate")]
        if shapes:
            shape = shapes[0][1]["shape"]
            said.append(f"Energy: an **estimate**, this machine's CPU-seconds x {ENERGY_PROFILE} profile watts, for a "
                        f"conversation of {shape['turns']} turns of {shape['prompt_tokens']} prompt + "
                        f"{shape['reply_tokens']} reply tokens; see bench.json for every profile and its assumptions.")
    return " ".join(said)


def _sections(run_dir: Path, evaluation: dict, bench, out: Path,
              recommended: dict | None = None) -> list[tuple[str, list[str]]]:
    rows = table_rows(evaluation, bench)
    metric = rows[0]["metric"].replace("_", " ")
    constrained = any(r["constrained"] is not None for r in rows)
    header = ["artifact", "size MB", f"{metric} (95% CI)"]
    header += [f"{metric}, constrained"] if constrained else []
    header += ["KL vs torch", "prefill tok/s", "decode tok/s", "peak RSS MB",
               f"J/conversation ({ENERGY_PROFILE}, estimate)"]
    cells = []
    for r in rows:
        name = f"**{r['artifact']}** (recommended)" if recommended and r["artifact"] == recommended["artifact"] else r["artifact"]
        low, high = (100 * bound for bound in r["ci95"])
        row = [name, f"{r['size_mb']:.1f}", f"{100 * r['score']:.1f}% ({low:.1f}-{high:.1f})"]
        row += [format_cell(r["constrained"] and 100 * r["constrained"], "{:.1f}%")] if constrained else []
        row += [format_cell(r["kl"], "{:.4f}"), format_cell(r["pp_tps"], "{:.0f}"),
                format_cell(r["tg_tps"], "{:.1f}"), format_cell(r["rss_mb"], "{:.0f}"),
                format_cell(r["j_per_conversation"], "{:.3g}")]
        cells.append(row)
    table = markdown_table(header, cells)
    about = [f"Task: **{evaluation['task']}** on {evaluation['rows']} held-out rows of `{evaluation['data']}`. "
             f"The base model gets {next((r['few_shot'] for r in evaluation['results'] if r['few_shot']), 0)} solved "
             f"examples in its prompt (the floor). {_measured_how(evaluation, bench)}"]
    if constrained:
        about.append("The constrained column decodes with the grammar the server applies (the JSON schema "
                     "inferred from the training targets, with the fields copied from the input held to the "
                     "input's words; or the label set): llama.cpp artifacts only.")
    if recommended:
        about.append(f"Recommended: **{recommended['artifact']}**, the smallest artifact that passed its parity gate "
                     f"with a score within the recipe's tolerance of the best, scored as it is served (constrained where the "
                     f"fleet serves the schema).")
    sections = [("Comparison", about + [""] + table)]
    if evaluation["task"] == "generation":
        sections.append(("Perplexity of the held-out references", _perplexity(evaluation)))
    details = _details(evaluation)
    if details:
        sections.append(("Where the errors are", details))
    sections.append(("Samples and worst errors", _samples(evaluation, out)))
    return sections


def _deployed(evaluation: dict) -> dict:
    """The smallest artifact one would ship: not the torch reference, not the few-shot floor, and one
    that passed its parity gate when any did."""
    shipped = [r for r in evaluation["results"] if not r["few_shot"] and not r["artifact"].startswith("torch")]
    passed = [r for r in shipped if "gate failed" not in r["artifact"]]
    return min(passed or shipped, key=lambda r: r["size_mb"], default=evaluation["results"][0])


def _perplexity(evaluation: dict) -> list[str]:
    """Free text has no single right answer: how likely each artifact finds the real held-out texts
    (teacher-forced, lower is better) says more than overlap with one reference."""
    results = evaluation["results"]
    lines = ["Perplexity of the reference completions given their prompts (lower is better); the base model's "
             "prompt carries its solved examples. chrF and ROUGE-L compare each generated text with the real one.",
             ""]
    lines += markdown_table(["artifact", "perplexity", "chrF", "ROUGE-L"], [
        [r["artifact"], format_cell(r.get("reference_perplexity"), "{:.2f}"),
         format_cell(r.get("chrf"), "{:.1f}"), format_cell(r.get("rouge_l"), "{:.3f}")] for r in results])
    base = next((r for r in results if r["few_shot"]), None)
    tuned = _deployed(evaluation)
    if base and base.get("reference_perplexity") and tuned.get("reference_perplexity"):
        lines += ["", f"{tuned['artifact']} vs the base model: perplexity {tuned['reference_perplexity']:.2f} vs "
                      f"{base['reference_perplexity']:.2f} "
                      f"({tuned['reference_perplexity'] / base['reference_perplexity'] - 1:+.0%})."]
    return lines


def _details(evaluation: dict) -> list[str]:
    best = _deployed(evaluation)
    lines = []
    if "fields" in best:
        lines += [f"Per-field scores of {best['artifact']}: precision, recall and F1 over the values present "
                  f"(a row where neither the reference nor the output has the field counts nowhere); support is the "
                  f"number of reference values.", ""]
        fields = sorted(best["fields"].items(), key=lambda item: -item[1].get("support", 0))
        lines += markdown_table(["field", "support", "precision", "recall", "F1"], [
            [name, str(f.get("support", "-")), f"{f['precision']:.3f}", f"{f['recall']:.3f}", f"{f['f1']:.3f}"]
            for name, f in fields])
        lines += ["", "Most common field errors (rows): " + ", ".join(
            f"{e['field']} {e['error']} ({e['count']})" for e in best["top_errors"][:8])]
    if "slot_f1_by_intent" in best:
        lines += ["", f"Mean slot F1 of {best['artifact']} per intent (each slot's F1 over the rows of that reference "
                      f"intent, averaged): " + ", ".join(f"{intent} {value:.3f}" for intent, value
                                                          in best["slot_f1_by_intent"].items())
                  + f"; intent accuracy {100 * best['intent_accuracy']:.1f}%."]
    if "likelihood" in best:
        lines += [f"{best['artifact']}: accuracy {100 * best['likelihood']['accuracy']:.1f}% by label likelihood, "
                  f"{100 * best['generation']['accuracy']:.1f}% by generation; macro-F1 "
                  f"{best['likelihood']['macro_f1']:.3f}. Top confusions: " + ", ".join(
                      f"{c['gold']} -> {c['predicted']} ({c['count']})" for c in best["likelihood"]["top_confusions"][:8])]
    return lines


def _samples(evaluation: dict, out: Path) -> list[str]:
    """The first outputs of the deployed artifact, and its worst errors (least like the reference)."""
    from tinytitan.evaluate.eval import examples_file
    from tinytitan.evaluate.metrics import chrf

    deployed = _deployed(evaluation)
    path = examples_file(out / "examples", deployed["artifact"])
    if not path.exists():
        return ["(no per-example file)"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    wrong = [r for r in records[3:] if not r.get("correct", r.get("chrf", 100) >= 50)]
    wrong.sort(key=lambda r: chrf(r["output"], r["reference"]))
    free_text = evaluation["task"] == "generation"  # no right answer: "wrong" is chrF below 50
    count = sum(not r.get("correct", r.get("chrf", 100) >= 50) for r in records)
    lines = [f"From `{path.relative_to(out)}` ({deployed['artifact']}; {count} of {len(records)} rows "
             f"{'with chrF below 50' if free_text else 'wrong'}):",
             ""]
    shown = (("sample", records[:3]), ("least like the reference" if free_text else "worst error", wrong[:8]))
    return lines + markdown_table(["", "input", "reference", "output"], [
        [kind, _cell(r["prompt"]), _cell(r["reference"]), _cell(r["output"])]
        for kind, items in shown for r in items])


def _cell(text: str, width: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[:width] + "…"


def _html(title: str, sections, plots: dict) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tinytitan report: {html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "img{max-width:100%}</style></head><body>", f"<h1>tinytitan report: {html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_markdown_block(body))
    parts.append("<h2>Plots</h2>")
    for caption, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


def _markdown_block(lines: list[str]) -> str:
    """The report's own Markdown (paragraphs and pipe tables) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [[html.escape(c.strip().replace("\\|", "|").replace("**", "")) for c in line.strip("|").split(" | ")]
                    for line in table if not set(line) <= set("|-")]
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body) + "</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            text = html.escape(line)
            out.append(f"<p>{text.replace('**', '')}</p>")
    flush()
    return "\n".join(out)
