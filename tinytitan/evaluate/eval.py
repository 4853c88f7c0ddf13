"""`tinytitan eval ARTIFACT... --data test.jsonl` and `--benchmark piqa,...`: numbers on the user's task.

Every artifact (base, a run's torch model, any GGUF, base + adapter; see model/artifacts.py) runs the
same rows, and the results sit side by side:
- extraction (JSON completions): JSON validity, record exact match, per-field exact match and
  P/R/F1, the most common field errors;
- classification (a small set of label completions): accuracy and macro-F1 twice, from the label
  likelihoods after one prefill of the prompt (no free decoding) and from greedy generation;
- generation: chrF, ROUGE-L;
- for every task: the perplexity of the reference completions, a 95% bootstrap interval on the
  headline metric, KL divergence against `--kl-reference` (cached top-k, `kl.py`), and one JSONL
  line per example under `--out` so errors can be read.
The base model has never seen the task's format, so it gets `--base-shots` solved examples as
earlier turns of the conversation: the floor a fine-tune has to beat.
Greedy decoding stops at the end of the turn, or at twice the reference's length + 8 tokens (a
longer output is wrong for exact match anyway), capped by --max-tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.files import write_json
from tinytitan.tables import fixed_row, format_cell, interval

TASKS = ("auto", "extraction", "classification", "generation", "chess-mate-in-one", "snips-nlu")


def add_arguments(parser) -> None:
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                        help="base | FILE.gguf | BASE.gguf+ADAPTER.gguf | base+ADAPTER.gguf | RUN folder[:last]")
    parser.add_argument("--data", help="task rows to score (JSONL, CSV or TSV, as for finetune)")
    parser.add_argument("--task", choices=TASKS, default="auto", help="task kind (default: detected from the data)")
    parser.add_argument("--benchmark", help="comma-separated: piqa,arc_easy,arc_challenge,boolq,winogrande,hellaswag")
    parser.add_argument("--benchmark-dir", default="benchmarks", help="folder with the benchmark files")
    parser.add_argument("--shots", type=int, default=None, help="benchmark examples in the prompt (default: per benchmark)")
    parser.add_argument("--limit", type=options.positive_int, default=None, help="score at most this many rows/items")
    parser.add_argument("--base-shots", type=int, default=3, help="solved examples given to the base model")
    parser.add_argument("--shots-data", default=None, help="where the base model's examples are drawn from "
                        "(default: --data, and those rows are left out of every artifact's score)")
    parser.add_argument("--kl-reference", default=None, metavar="ARTIFACT",
                        help="also measure KL divergence against this artifact (e.g. the run folder)")
    parser.add_argument("--max-tokens", type=options.positive_int, default=256, help="generation cap per row")
    parser.add_argument("--schema", default=None, metavar="SCHEMA.json",
                        help="JSON tasks: also decode constrained by this JSON schema (llama.cpp artifacts)")
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True,
                        help="also decode llama.cpp artifacts constrained to --schema (JSON tasks) or to the label "
                             "set (classification); doubles their decoding (default: on)")
    parser.add_argument("--likelihood", action=argparse.BooleanOptionalAction, default=True,
                        help="classification: score every label's likelihood too (default: on; slow with many labels)")
    parser.add_argument("--baseline", default=None, metavar="TRAIN",
                        help="also train a classical baseline on these training rows (TF-IDF + logistic regression for "
                             "labels, a CRF for JSON records of the input's words) and score it beside")
    parser.add_argument("--out", default=None, help="folder for per-example JSONL files and eval.json")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for the bootstrap and the base model's examples")
    options.add_data_spec(parser)
    options.add_json(parser)


def run(args) -> None:
    from tinytitan.evaluate.scoring import evaluate_task
    from tinytitan.model.artifacts import parse_artifact, parse_artifacts

    if not args.data and not args.benchmark:
        raise TinyTitanError("nothing to evaluate: pass --data FILE and/or --benchmark NAMES")
    if args.base_shots < 0 or (args.shots is not None and args.shots < 0):
        raise TinyTitanError("--base-shots and --shots must be >= 0")
    artifacts = parse_artifacts(args.artifacts)
    result: dict = {"artifacts": [a.label for a in artifacts]}
    if args.data:
        reference = parse_artifact(args.kl_reference) if args.kl_reference else None
        result["task"] = evaluate_task(artifacts, args.data, task=args.task, spec=options.data_spec_from(args),
                                       limit=args.limit, base_shots=args.base_shots, shots_data=args.shots_data,
                                       kl_reference=reference, max_tokens=args.max_tokens, threads=args.threads,
                                       seed=args.seed, out=Path(args.out) if args.out else None,
                                       schema=read_schema(args.schema) if args.schema else None,
                                       likelihood=args.likelihood, constrained=args.constrained,
                                       baseline_data=args.baseline)
    if args.benchmark:
        result["benchmarks"] = evaluate_benchmarks(artifacts, args.benchmark, Path(args.benchmark_dir),
                                                   args.shots, args.limit, args.threads)
    if args.out:  # the layout `tinytitan run` and `report` write: the result, and the settings it was made with
        Path(args.out).mkdir(parents=True, exist_ok=True)
        settings = {"rows": args.limit or 0, "base_shots": args.base_shots, "max_tokens": args.max_tokens,
                    "constrained": args.constrained, "likelihood": args.likelihood, "task": args.task,
                    "baseline": bool(args.baseline)}
        saved = {"result": result.get("task"), "settings": settings, "benchmarks": result.get("benchmarks")}
        write_json(Path(args.out) / "eval.json", {k: v for k, v in saved.items() if v is not None})
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)


def read_schema(path: str, name: str = "--schema") -> dict:
    """The JSON schema in the file at `path` (given as `name`), refused when the decoder cannot enforce it."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TinyTitanError(f"{name} {path}: not a readable JSON file ({error})") from None
    if not isinstance(schema, dict):
        raise TinyTitanError(f"{name} {path}: expected a JSON schema object")
    from tinytitan.data.grammar import schema_to_grammar

    schema_to_grammar(schema)  # refuse what the decoder cannot enforce, before any scoring
    return schema


# ---------------------------------------------------------------------------------------------
# task rows


def evaluate_benchmarks(artifacts, names: str, folder: Path, shots, limit, threads) -> list[dict]:
    from tinytitan.evaluate.benchmarks import load_items, parse_names, run_benchmark
    from tinytitan.progress import progress_bar

    chosen = parse_names(names)
    for name in chosen:  # every file is checked before hours of scoring start
        load_items(name, folder)
    results = []
    for artifact in artifacts:
        engine = artifact.open(threads=threads, n_ctx=8192)
        try:
            for name in chosen:
                with progress_bar(f"{name} {artifact.label}") as progress:
                    bar = progress.add_task("items", total=None)
                    found = run_benchmark(engine, name, folder, shots, limit,
                                          on_item=lambda done, total: progress.update(bar, completed=done, total=total))
                results.append({"artifact": artifact.label, **found})
        finally:
            engine.close()
    return results


# ---------------------------------------------------------------------------------------------
# output


def print_result(result: dict) -> None:
    task = result.get("task")
    if task:
        print(f"{task['data']}: {task['task']}, {task['rows']} rows")
        headline = task["results"][0]["headline"]
        widths = [-34, 8, 12, 13, 11, 8, 8, 8]
        header = ["artifact", "size MB", headline, "95% CI", "constrained", "ref ppl", "KL", "seconds"]
        print(fixed_row(header, widths))
        for r in task["results"]:
            kl = f"{r['kl']['kl_mean']:.4f}" if "kl" in r else "-"
            perplexity = format_cell(r.get("reference_perplexity"), "{:.3f}")
            constrained = f"{100 * r['constrained'][headline]:.1f}%" if headline in r.get("constrained", {}) else "-"
            print(fixed_row([r["artifact"], f"{r['size_mb']:.1f}", f"{100 * r['score']:.1f}%",
                             interval(r["ci95"]), constrained,
                             perplexity, kl, f"{r['seconds']:.1f}"], widths))
        if (task.get("baseline") or {}).get("none"):
            print(f"classical baseline: none ({task['baseline']['none']})")
    for b in result.get("benchmarks", []):
        print(f"{b['artifact']:<24} {b['benchmark']:<14} {b['shots']:>2}-shot {b['items']:>5} items  "
              f"acc {b['acc']:5.1f}  acc_norm {b['acc_norm']:5.1f}  (published {b['published']}, "
              f"{b['headline']})  {b['seconds']:.0f} s")
    sys.stdout.flush()
