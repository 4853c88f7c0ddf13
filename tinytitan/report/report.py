"""`tinytitan report RUN --data test.jsonl`: one Markdown + self-contained HTML report of a run.

It evaluates every artifact of the run side by side on the same rows (`evaluate_run`, as the run's eval stage does):
the trained torch model, each exported GGUF, base + GGUF adapter, and the base model with a
few-shot prompt as the floor; measures the GGUF artifacts' speed, memory and energy
(`bench.bench_for_report`, 2 threads) and the base model's context scaling; then writes
`RUN/report/`: report.md, report.html (plots inlined), the PNG plots (loss curves, metric vs file
size, decode speed vs context length), eval.json / bench.json and per-example JSONL files.
Finished measurements are reused when the report is made again with the same inputs (`--fresh`
measures again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.evaluate.bench import DEFAULT_CONTEXTS
from tinytitan.files import FolderLock, read_json, write_json


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
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                        help="train a classical baseline on the run's training rows and score it beside (default: on)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="recommend the smallest artifact within this of the best score (a fraction)")
    parser.add_argument("--context", default=None,
                        help="context lengths for the base model's scaling curve, or 'none' (default: what the run's "
                             f"bench measured, else {DEFAULT_CONTEXTS})")
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
    from tinytitan.evaluate.eval import read_schema
    from tinytitan.pipeline.recipe import EvalSettings
    from tinytitan.report.summary import finish_report, print_summary

    recorded = _recorded(root / "report" / "eval.json", "settings") if root else {}
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    settings = EvalSettings(**{**{k: v for k, v in recorded.items() if k in known}, **{k: v for k, v in {
        "constrained": args.constrained, "likelihood": args.likelihood,
        "base_shots": args.base_shots, "max_tokens": args.max_tokens, "tolerance": args.tolerance,
        "baseline": args.baseline}.items()
        if v is not None}})
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
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    evaluation = evaluate_run(run_dir, root, settings, data, out, schema=schema, threads=args.threads, only=only,
                              limit=args.limit)
    bench = None
    if args.bench:
        measured = _recorded(out / "bench.json", "key")
        bench = bench_run(run_dir, data, out, context=args.context or measured.get("context", DEFAULT_CONTEXTS),
                          reps=measured.get("reps", 3), fresh=args.fresh, only=only, root=root)
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


def evaluate_run(run_dir: Path, root: Path | None, settings, data: str, out: Path, *, schema: dict | None,
                 threads: int | None, only: list[str] | None = None, limit: int | None = None) -> dict:
    """Every artifact of a run scored side by side on `data` with `settings` (recipe.EvalSettings), as the
    run's eval stage and `tinytitan report` both do: writes OUT/eval.json (the result and the settings) and
    OUT/examples/. The base model's solved examples come from the run's training rows, so every held-out
    row is scored, and the classical baseline (`settings.baseline`) trains on them; decodes are reused from eval's own cache when nothing changed. `limit`: score only the
    first rows this once (the settings, saved for the next report, keep their own)."""
    from tinytitan.evaluate.scoring import evaluate_task
    from tinytitan.model.artifacts import parse_artifact, run_artifacts

    examples = out / "examples"
    if examples.exists():  # only the artifacts scored now
        shutil.rmtree(examples)
    shots = str(root / "data" / "train.jsonl") if root else training_rows(run_dir)
    evaluation = evaluate_task(run_artifacts(run_dir, only, students=student_run(root)), data, task=settings.task,
                               limit=limit or settings.rows or None,
                               base_shots=settings.base_shots, shots_data=shots,
                               kl_reference=parse_artifact(str(run_dir)), max_tokens=settings.max_tokens,
                               threads=threads, out=examples, schema=schema, likelihood=settings.likelihood,
                               constrained=settings.constrained, baseline_data=shots if settings.baseline else None)
    write_json(out / "eval.json", {"result": evaluation, "settings": dataclasses.asdict(settings)})
    return evaluation


def bench_run(run_dir: Path, data: str, out: Path, *, context: str, reps: int, fresh: bool,
              only: list[str] | None = None, root: Path | None = None) -> list[dict]:
    """Speed, memory and energy of a run's llama.cpp artifacts (`bench.bench_for_report`), as the run's bench
    stage and `tinytitan report` both do: OUT/bench.json holds the result with what it was measured on, and
    is reused while that is unchanged (unless `fresh`)."""
    from tinytitan.evaluate.bench import bench_for_report
    from tinytitan.model.artifacts import run_artifacts

    ggufs = [a for a in run_artifacts(run_dir, only, students=student_run(root)) if a.kind != "run"]
    key = {"artifacts": [[a.spec, a.size_bytes()] for a in ggufs], "context": context, "reps": reps}
    saved = None if fresh else read_json(out / "bench.json")  # none yet, or a file cut short: measured again
    if isinstance(saved, dict) and saved.get("key") == key and "result" in saved:
        return saved["result"]
    result = bench_for_report(ggufs, context, data, reps)
    write_json(out / "bench.json", {"key": key, "result": result})
    return result


def student_run(root: Path | None) -> Path | None:
    """The student a `tinytitan run` with [distill] taught (RUN/student), once exported; else None."""
    folder = root / "student" if root else None
    return folder if folder and (folder / "config.json").is_file() and (folder / "export").is_dir() else None


def _recorded(path: Path, field: str) -> dict:
    """What an earlier report or run recorded beside its results: eval.json's settings, bench.json's key
    ({} when none, or unreadable)."""
    try:
        recorded = json.loads(path.read_text()).get(field, {})
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


def training_rows(run_dir: Path) -> list:
    """The examples the run trained on (its training split, as fine-tuning split them): where the base
    model's solved examples come from, so that every held-out row is scored."""
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.data.check import split_rows

    config = FinetuneConfig(**json.loads((run_dir / "config.json").read_text()))
    return split_rows(config)[1]["train"]


