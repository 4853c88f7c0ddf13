"""The end of a report, for `tinytitan report` and the run's report stage alike: the recommended artifact,
the fleet file that serves it, the summary and the comparison table printed to the terminal."""

from __future__ import annotations

from pathlib import Path

from tinytitan.tables import fixed_row, format_cell, interval


def recommend(rows: list[dict], tolerance: float, constrained: bool = False) -> dict | None:
    """The smallest servable artifact within `tolerance` of the best servable score (gate passed), scored as
    it will be served: with `constrained` (the fleet serves the schema), by its constrained score."""
    servable = [r for r in rows if r["servable"]]  # decided by the Artifact (model/artifacts.py)
    if not servable:
        return None
    best = max(served_score(r, constrained) for r in servable)
    return min((r for r in servable if served_score(r, constrained) >= best - tolerance),
               key=lambda r: (r["size_mb"], -served_score(r, constrained)))


def served_score(row: dict, constrained: bool) -> float:
    """A table row's score as it is served: constrained where the fleet serves the schema and there is one."""
    return row["constrained"] if constrained and row.get("constrained") is not None else row["score"]


def print_summary(summary: dict) -> None:
    if summary["nothing_to_do"]:
        print(f"nothing to do: every stage of {summary['recipe']} is up to date ({summary['run']})")
    rows = summary["table"]
    metric = rows[0]["metric"].replace("_", " ") if rows else "score"
    constrained = any(r.get("constrained") is not None for r in rows)
    print(f"\n{summary['task']}: {summary['rows']} held-out rows; {metric} with its 95% interval"
          + (", and with constrained decoding" if constrained else ""))
    free_text = summary["task"] == "generation"  # no right answer: perplexity of the real texts says more
    columns = [("artifact", -44), ("size MB", 8), (metric, 12), ("95% CI", 13)]
    columns += [("constrained", 11)] if constrained else []
    columns += [("perplexity", 10)] if free_text else []
    columns += [("KL", 8), ("decode tok/s", 12), ("ms/answer", 9)]
    widths = [width for _, width in columns]
    print(fixed_row([name for name, _ in columns], widths))
    recommended = (summary["recommended"] or {}).get("artifact")
    for r in rows:
        cells = [r["artifact"], f"{r['size_mb']:.1f}", f"{100 * r['score']:.1f}%", interval(r["ci95"])]
        cells += [format_cell(r["constrained"], "{:.1%}")] if constrained else []
        cells += [format_cell(r.get("perplexity"), "{:.2f}")] if free_text else []
        cells += [format_cell(r["kl"], "{:.4f}"), format_cell(r.get("tg_tps"), "{:.1f}"),
                  format_cell(r.get("answer_ms"), "{:.3g}")]
        print(fixed_row(cells, widths) + ("  <- recommended" if r["artifact"] == recommended else ""))
    if summary.get("verdict"):
        print(f"\n{summary['verdict']}")
    print(f"\nreport: {summary['html']}")
    if summary["serve"]:
        print(f"serve the recommended artifact: {summary['serve']}")
    else:
        print("no servable artifact passed its parity gate: see the report")


def finish_report(run_dir: Path, out: Path, evaluation: dict, bench: list | None, *, name: str, tolerance: float,
                  fleet: Path, schema: Path | None, system: str, max_tokens: int, source: str) -> dict:
    """What a report ends with, for `tinytitan report` and the run's report stage alike: the recommended
    artifact (the smallest that passed its gate within `tolerance` of the best), the report, a fleet
    file serving it (with the schema, greedy) and the summary; returns the summary."""
    from tinytitan.report.render import table_rows, write_report
    from tinytitan.report.verdict import verdict
    from tinytitan.serve.fleet import write_fleet

    rows = table_rows(evaluation, bench)
    pick = recommend(rows, tolerance, constrained=schema is not None)  # the fleet serves the schema
    served_constrained = schema is not None and pick is not None and pick.get("constrained") is not None
    said = verdict(evaluation, pick, out, run_dir, served_constrained)
    paths = write_report(run_dir, out, evaluation, bench, recommended=pick, title=name, verdict=said)
    spec = next(r["spec"] for r in evaluation["results"] if r["artifact"] == pick["artifact"]) if pick else None
    about = f"the report of {source}"
    if pick:
        constrained = schema is not None and pick.get("constrained") is not None
        about = (f"the recommended artifact of {source}: {pick['artifact']} ({pick['metric']} "
                 f"{100 * served_score(pick, constrained):.1f}%{', constrained' if constrained else ''})")
    serve = write_fleet(fleet, name, spec, about=about, schema=schema, system=system, max_tokens=max_tokens)
    return {"task": evaluation["task"], "rows": evaluation["rows"], "table": rows, "recommended": pick,
            "verdict": said, "serve": serve, "report": str(paths["md"]), "html": str(paths["html"])}
