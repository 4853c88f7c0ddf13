"""The report's pages: report.md and a self-contained report.html (plots inlined) from a run's eval and
bench results: the comparison table, how it was measured, where the errors are, samples."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tinytitan.files import write_text
from tinytitan.tables import format_cell, interval, markdown_table

ENERGY_PROFILE = "phone"  # the J/conversation column: the edge device this tool ships to


def table_rows(evaluation: dict, bench: list | None) -> list[dict]:
    speeds = {b["artifact"]: b for b in bench or []}
    rows = []
    for r in evaluation["results"]:
        b = speeds.get(r["artifact"])
        speed = b["speed"][0] if b else None
        conversation = next((e["conversation"] for e in b["energy"]["estimates"] if e["profile"] == ENERGY_PROFILE),
                            None) if b else None
        constrained = r.get("constrained", {}).get(r["headline"]) if "constrained" in r else None
        rows.append({"artifact": r["artifact"], **{k: r[k] for k in ("kind", "vocabulary", "servable", "few_shot")},
                     "size_mb": r["size_mb"], "metric": r["headline"],
                     "score": r["score"], "ci95": r["ci95"], "kl": r.get("kl", {}).get("kl_mean"),
                     "perplexity": r.get("reference_perplexity"),
                     "constrained": constrained,
                     "pp_tps": speed and speed["pp_tps"], "tg_tps": speed and speed["tg_tps"],
                     "rss_mb": speed and speed["peak_rss_mb"],
                     "j_per_conversation": conversation and conversation["joules"]})
    return rows


def write_report(run_dir: Path, out: Path, evaluation: dict, bench: list | None, recommended: dict | None = None,
                 title: str | None = None) -> dict:
    from tinytitan.report import plots as report_plots

    plots = {}
    if (run_dir / "metrics.jsonl").exists():
        report_plots.loss_curve(run_dir / "metrics.jsonl", out / "loss.png")
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
        row = [name, f"{r['size_mb']:.1f}", f"{100 * r['score']:.1f}% ({interval(r['ci95'])})"]
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
    described = _described(evaluation, recommended)
    if evaluation["task"] == "generation":
        sections.append(("Perplexity of the held-out references", _perplexity(evaluation, described)))
    details = _details(described)
    if details:
        sections.append(("Where the errors are", details))
    sections.append(("Samples and worst errors", _samples(evaluation, described, out)))
    return sections


def _described(evaluation: dict, recommended: dict | None) -> dict:
    """The artifact the detailed sections describe: the recommended one (what the fleet serves); without
    one (nothing passed its gate), the smallest that is neither the reference nor the few-shot floor."""
    results = evaluation["results"]
    if recommended:
        return next(r for r in results if r["artifact"] == recommended["artifact"])
    shipped = [r for r in results if not r["reference"] and not r["few_shot"]]
    return min(shipped, key=lambda r: r["size_mb"], default=results[0])


def _perplexity(evaluation: dict, tuned: dict) -> list[str]:
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
    if base and base.get("reference_perplexity") and tuned.get("reference_perplexity"):
        lines += ["", f"{tuned['artifact']} vs the base model: perplexity {tuned['reference_perplexity']:.2f} vs "
                      f"{base['reference_perplexity']:.2f} "
                      f"({tuned['reference_perplexity'] / base['reference_perplexity'] - 1:+.0%})."]
    return lines


def _details(best: dict) -> list[str]:
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


def _samples(evaluation: dict, deployed: dict, out: Path) -> list[str]:
    """The first outputs of the deployed artifact, and its worst errors (least like the reference)."""
    from tinytitan.evaluate.scoring import examples_file
    from tinytitan.evaluate.metrics import chrf

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
