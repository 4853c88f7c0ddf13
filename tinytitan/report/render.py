"""What the report says, from a run's eval and bench results: the comparison table, how it was measured,
the perplexity of free text, where the errors are, samples and worst errors field by field, plots. It is
built as one document (`report/document.py`) and written as report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path

from tinytitan.files import write_text
from tinytitan.report.document import Paragraph, Plot, Section, Table, escape_markdown, render_pages
from tinytitan.report.samples import is_wrong, read_examples, shown_samples
from tinytitan.tables import format_cell, interval

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
        if "baseline" in r:  # measured on its own: one input at a time
            answer_ms = r["baseline"]["ms_per_answer"]
        else:  # a typical answer: the first token, then the reference answers' mean length at the decode speed
            tokens = r.get("answer_tokens")
            answer_ms = speed and tokens and 1000 * (speed["ttft_s"] + tokens / speed["tg_tps"])
        rows.append({"artifact": r["artifact"], **{k: r[k] for k in ("kind", "vocabulary", "servable", "few_shot")},
                     "size_mb": r["size_mb"], "metric": r["headline"],
                     "score": r["score"], "ci95": r["ci95"], "kl": r.get("kl", {}).get("kl_mean"),
                     "perplexity": r.get("reference_perplexity"),
                     "constrained": constrained,
                     "pp_tps": speed and speed["pp_tps"], "tg_tps": speed and speed["tg_tps"],
                     "rss_mb": speed and speed["peak_rss_mb"],
                     "j_per_conversation": conversation and conversation["joules"], "answer_ms": answer_ms or None})
    return rows


def write_report(run_dir: Path, out: Path, evaluation: dict, bench: list | None, recommended: dict | None = None,
                 title: str | None = None, verdict: str | None = None) -> dict:
    """report.md and report.html in `out`, with their plots; `title` is the run's name (default: the
    run folder's), `verdict` the specialist against the classical baseline. Returns their paths."""
    from tinytitan.report import plots as report_plots

    plots = []
    if (run_dir / "metrics.jsonl").exists():
        report_plots.loss_curve(run_dir / "metrics.jsonl", out / "loss.png")
        plots.append(Plot("Training and validation loss", out / "loss.png"))
    plots.append(Plot("Task metric vs file size",
                      report_plots.metric_vs_size(table_rows(evaluation, bench), out / "metric_vs_size.png")))
    scaling = next((b for b in bench or [] if b["context"]), None)
    if scaling:
        plots.append(Plot("Decode speed and KV cache vs context length",
                          report_plots.context_scaling(scaling, out / "context.png")))
    sections = _sections(evaluation, bench, out, recommended, verdict)
    md, page = render_pages(title or run_dir.resolve().name, sections, plots)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, md)
    write_text(html_path, page)
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


def _sections(evaluation: dict, bench, out: Path, recommended: dict | None = None,
              verdict: str | None = None) -> list[Section]:
    rows = table_rows(evaluation, bench)
    metric = rows[0]["metric"].replace("_", " ")
    constrained = any(r["constrained"] is not None for r in rows)
    header = ["artifact", "size MB", f"{metric} (95% CI)"]
    header += [f"{metric}, constrained"] if constrained else []
    header += ["KL vs torch", "prefill tok/s", "decode tok/s", "peak RSS MB",
               f"J/conversation ({ENERGY_PROFILE}, estimate)", "ms per answer"]
    cells = []
    for r in rows:
        name = escape_markdown(r["artifact"])
        name = f"**{name}** (recommended)" if recommended and r["artifact"] == recommended["artifact"] else name
        row = [name, f"{r['size_mb']:.1f}", f"{100 * r['score']:.1f}% ({interval(r['ci95'])})"]
        row += [format_cell(r["constrained"] and 100 * r["constrained"], "{:.1f}%")] if constrained else []
        row += [format_cell(r["kl"], "{:.4f}"), format_cell(r["pp_tps"], "{:.0f}"),
                format_cell(r["tg_tps"], "{:.1f}"), format_cell(r["rss_mb"], "{:.0f}"),
                format_cell(r["j_per_conversation"], "{:.3g}"), format_cell(r["answer_ms"], "{:.3g}")]
        cells.append(row)
    shots = next((r["few_shot"] for r in evaluation["results"] if r["few_shot"]), 0)
    about = [Paragraph(f"Task: **{evaluation['task']}** on {evaluation['rows']} held-out rows of "
                       f"`{evaluation['data']}`. The base model gets {shots} solved examples in its prompt (the "
                       f"floor). {_measured_how(evaluation, bench)}")]
    if constrained:
        about.append(Paragraph("The constrained column decodes with the grammar the server applies (the JSON schema "
                               "inferred from the training targets, with the fields copied from the input held to "
                               "the input's words; or the label set): llama.cpp artifacts only."))
    if recommended:
        about.append(Paragraph(f"Recommended: **{escape_markdown(recommended['artifact'])}**, the smallest artifact "
                               f"that passed its parity gate with a score within the recipe's tolerance of the best, "
                               f"scored as it is served (constrained where the fleet serves the schema)."))
    if verdict:
        about.insert(0, Paragraph(f"**Verdict:** {escape_markdown(verdict)}"))
    baseline = evaluation.get("baseline") or {}
    if baseline.get("method"):
        about.append(Paragraph(
            f"The classical baseline ({escape_markdown(baseline['method'])}) is trained on the same "
            f"{baseline['train_rows']:,} training rows in {baseline['train_seconds']:.1f} s and scored like every "
            f"artifact; its ms per answer is measured one input at a time (the others': the bench's time to first "
            f"token plus the reference answers' mean length at its decode speed)."))
    sections = [Section("Comparison", [*about, Table(header, cells)])]
    described = _described(evaluation, recommended)
    if evaluation["task"] == "generation":
        sections.append(Section("Perplexity of the held-out references", _perplexity(evaluation, described)))
    details = _details(described)
    if details:
        sections.append(Section("Where the errors are", details))
    sections.append(Section("Samples and worst errors", _samples(evaluation, described, out)))
    return sections


def _described(evaluation: dict, recommended: dict | None) -> dict:
    """The artifact the detailed sections describe: the recommended one (what the fleet serves); without
    one (nothing passed its gate), the smallest that is neither the reference nor the few-shot floor."""
    results = evaluation["results"]
    if recommended:
        return next(r for r in results if r["artifact"] == recommended["artifact"])
    shipped = [r for r in results if not r["reference"] and not r["few_shot"] and r["kind"] != "baseline"]
    return min(shipped, key=lambda r: r["size_mb"], default=results[0])


def _perplexity(evaluation: dict, tuned: dict) -> list:
    """Free text has no single right answer: how likely each artifact finds the real held-out texts
    (teacher-forced, lower is better) says more than overlap with one reference."""
    results = evaluation["results"]
    blocks: list = [
        Paragraph("Perplexity of the reference completions given their prompts (lower is better); the base "
                  "model's prompt carries its solved examples. chrF and ROUGE-L compare each generated text with "
                  "the real one."),
        Table(["artifact", "perplexity", "chrF", "ROUGE-L"], [
            [escape_markdown(r["artifact"]), format_cell(r.get("reference_perplexity"), "{:.2f}"),
             format_cell(r.get("chrf"), "{:.1f}"), format_cell(r.get("rouge_l"), "{:.3f}")] for r in results])]
    base = next((r for r in results if r["few_shot"]), None)
    if base and base.get("reference_perplexity") and tuned.get("reference_perplexity"):
        blocks.append(Paragraph(
            f"{escape_markdown(tuned['artifact'])} vs the base model: perplexity {tuned['reference_perplexity']:.2f} "
            f"vs {base['reference_perplexity']:.2f} "
            f"({tuned['reference_perplexity'] / base['reference_perplexity'] - 1:+.0%})."))
    return blocks


def _details(best: dict) -> list:
    """Where the described artifact goes wrong: per-field scores and errors, slot F1 per intent, confusions."""
    blocks: list = []
    name = escape_markdown(best["artifact"])
    if "fields" in best:
        blocks.append(Paragraph(
            f"Per-field scores of {name}: precision, recall and F1 over the values present (a row where neither "
            f"the reference nor the output has the field counts nowhere); support is the number of reference "
            f"values."))
        fields = sorted(best["fields"].items(), key=lambda item: -item[1].get("support", 0))
        blocks.append(Table(["field", "support", "precision", "recall", "F1"], [
            [escape_markdown(field), str(f.get("support", "-")), f"{f['precision']:.3f}", f"{f['recall']:.3f}",
             f"{f['f1']:.3f}"] for field, f in fields]))
        blocks.append(Paragraph("Most common field errors (rows): " + ", ".join(
            f"{escape_markdown(e['field'])} {e['error']} ({e['count']})" for e in best["top_errors"][:8])))
    if "slot_f1_by_intent" in best:
        blocks.append(Paragraph(
            f"Mean slot F1 of {name} per intent (each slot's F1 over the rows of that reference intent, averaged): "
            + ", ".join(f"{escape_markdown(intent)} {value:.3f}" for intent, value in best["slot_f1_by_intent"].items())
            + f"; intent accuracy {100 * best['intent_accuracy']:.1f}%."))
    if "likelihood" in best:
        blocks.append(Paragraph(
            f"{name}: accuracy {100 * best['likelihood']['accuracy']:.1f}% by label likelihood, "
            f"{100 * best['generation']['accuracy']:.1f}% by generation; macro-F1 "
            f"{best['likelihood']['macro_f1']:.3f}. Top confusions: " + ", ".join(
                f"{escape_markdown(c['gold'])} -> {escape_markdown(c['predicted'])} ({c['count']})"
                for c in best["likelihood"]["top_confusions"][:8])))
    return blocks


def _samples(evaluation: dict, deployed: dict, out: Path) -> list:
    """The first outputs of the deployed artifact, and its worst errors (least like the reference), field by
    field where the answers are JSON objects."""
    from tinytitan.evaluate.scoring import examples_file

    path = examples_file(out / "examples", deployed["artifact"])
    if not path.exists():
        return [Paragraph("(no per-example file)")]
    records = read_examples(path)
    free_text = evaluation["task"] == "generation"  # no right answer: "wrong" is chrF below 50
    count = sum(map(is_wrong, records))
    shown = shown_samples(records, free_text)
    how = ("Each row: its input, then per field (the reference's and the output's) the expected and the produced "
           "value; wrong, missing and unexpected fields are marked." if shown.by_field else
           "Each row: its input, then the expected and the produced answer" +
           (" (the label picked by likelihood: that is how the rows were scored)" if any("label" in r for r in records)
            else "") + "; a wrong answer is marked.")
    return [Paragraph(f"From `{path.relative_to(out)}` ({escape_markdown(deployed['artifact'])}; {count} of "
                      f"{len(records)} rows {'with chrF below 50' if free_text else 'wrong'}). {how}"),
            shown]
