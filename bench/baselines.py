"""The classical baseline of each recipe, as `tinytitan run` trains and scores it, beside the specialist.
The last line is one JSON document.

    python bench/baselines.py                                      # ingredients, banking77, snips-nlu, bedtime-stories
    python bench/baselines.py --specialist ingredients=runs/ingredients/report/examples/ingredients-q8_0.jsonl

Per recipe: its data prepared as the run prepares it (into --work), the baseline (evaluate/baseline.py)
trained on the training split and scored on the test split with the task's metrics and 95% interval, its
training seconds, size and ms per answer; and where a specialist's per-example file of the same test rows is
given (`--specialist NAME=FILE`, or the recommended artifact's file in runs/NAME/report), the paired
difference with its 95% bootstrap interval (constrained outputs when the file has them, as they are served).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPES = ("ingredients", "banking77", "snips-nlu", "bedtime-stories")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def prepared(name: str, work: Path) -> Path:
    """The recipe's train/val/test rows, prepared as `tinytitan run` prepares them."""
    from tinytitan.data.tasks import task_module
    from tinytitan.pipeline.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / f"{name}.toml")
    folder = work / name / "data"
    if not (folder / "test.jsonl").exists():
        folder.mkdir(parents=True, exist_ok=True)
        task_module(recipe.kind).prepare(recipe.sources, folder, **recipe.options)
    return folder


def specialist_file(name: str, given: dict[str, str]) -> Path | None:
    if name in given:
        return Path(given[name])
    summary = ROOT / "runs" / name / "summary.json"
    if not summary.exists():
        return None
    from tinytitan.evaluate.scoring import examples_file

    pick = json.loads(summary.read_text()).get("recommended") or {}
    path = examples_file(ROOT / "runs" / name / "report" / "examples", pick.get("artifact", ""))
    return path if path.exists() else None


def paired(specialist: Path, baseline: Path) -> dict:
    """The specialist's per-row verdicts (constrained when it has them) minus the baseline's, in points."""
    from tinytitan.evaluate.metrics import bootstrap_ci

    mine = [json.loads(line) for line in specialist.read_text().splitlines() if line.strip()]
    theirs = [json.loads(line) for line in baseline.read_text().splitlines() if line.strip()]
    if [r["prompt"] for r in mine] != [r["prompt"] for r in theirs]:
        return {"error": f"{specialist} holds other rows than the test split"}
    key = "constrained_correct" if "constrained_correct" in mine[0] else "correct"
    differences = [100 * (a[key] - b["correct"]) for a, b in zip(mine, theirs)]
    low, high = bootstrap_ci(differences)
    return {"file": str(specialist), "scored": key, "specialist": 100 * sum(r[key] for r in mine) / len(mine),
            "difference_points": sum(differences) / len(differences), "ci95_points": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--work", default="runs/baselines")
    parser.add_argument("--specialist", action="append", default=[], metavar="NAME=FILE",
                        help="a specialist's per-example file of the recipe's test rows (eval --out)")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.specialist)

    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.evaluate import metrics
    from tinytitan.evaluate.baseline import score_baseline
    from tinytitan.evaluate.scoring import examples_file
    from tinytitan.pipeline.recipe import load_recipe

    results = []
    for name in args.recipes.split(","):
        data = prepared(name, ROOT / args.work)
        train = load_examples(data / "train.jsonl", DataSpec()).examples
        test = load_examples(data / "test.jsonl", DataSpec(), duplicates="keep").examples
        task = load_recipe(ROOT / "recipes" / f"{name}.toml").eval.task
        task = metrics.detect_task([e.completion for e in test]) if task == "auto" else task
        out = ROOT / args.work / name / "examples"
        found = score_baseline(task, train, test, out=out)
        row = {"recipe": name, "task": task, "train_rows": len(train), "test_rows": len(test)}
        if "none" in found:
            row["none"] = found["none"]
        else:
            row.update(method=found["baseline"]["method"], metric=found["headline"], score=found["score"],
                       ci95=found["ci95"], train_seconds=found["baseline"]["train_seconds"],
                       size_mb=round(found["size_mb"], 2), ms_per_answer=found["baseline"]["ms_per_answer"],
                       exact_match=found.get("exact_match"),
                       aligned_rows=found["baseline"].get("aligned_rows"))
            specialist = specialist_file(name, given)
            if specialist:
                row["against_specialist"] = paired(specialist, examples_file(out, found["artifact"]))
        results.append(row)
        said = row.get("none") or (f"{row['method']}: {row['metric']} {100 * row['score']:.1f}% "
                                   f"({100 * row['ci95'][0]:.1f}-{100 * row['ci95'][1]:.1f}), trained in "
                                   f"{row['train_seconds']} s, {row['size_mb']} MB, {row['ms_per_answer']} ms/answer")
        print(f"{name}: {said}", file=sys.stderr)
        if "against_specialist" in row:
            print(f"  specialist - baseline: {json.dumps(row['against_specialist'])}", file=sys.stderr)
    print(json.dumps({"cpu": cpu_model(), "recipes": results}))


if __name__ == "__main__":
    main()
