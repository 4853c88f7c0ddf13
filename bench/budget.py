"""Does `tinytitan run --budget` keep to its time, and does a larger budget buy a better specialist? The
demo-sized ingredients recipe (tools/demo.sh's settings, less its epochs: the budget decides them) run with
each budget, then every run's Q8_0 scored on all 657 test lines. The last line is one JSON document.

    python bench/budget.py --budgets 20m,60m

For each budget: `tinytitan run recipes/ingredients.toml --budget B` with the demo's `--set`s into
WORK/budget-B, timed (a run already complete there is not redone: its time is then the sum of the seconds
its stages.json recorded); what the budget chose (epochs, steps, whether the time limit stopped it). Then
one `tinytitan eval` of all the runs' Q8_0 exports on the 657 test lines, constrained by the schema as
served, with the CRF trained on the same 800 rows beside them: record exact match with 95% intervals, and
the paired difference between each larger budget and the first.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data_size import cpu_model, tinytitan  # noqa: E402


def demo_settings() -> list[str]:
    """tools/demo.sh's `--set`s, but its epochs: the budget decides those."""
    sets = re.findall(r"--set (\S+)", (ROOT / "tools" / "demo.sh").read_text())
    return [a for s in sets if not s.startswith("finetune.epochs=") for a in ("--set", s)]


def run_budget(budget: str, work: Path) -> dict:
    folder = work / f"budget-{budget}"
    before = json.loads((folder / "stages.json").read_text()) if (folder / "stages.json").exists() else {}
    started = time.perf_counter()
    tinytitan("run", "recipes/ingredients.toml", "--output", str(folder), *demo_settings(), "--budget", budget,
              "--json", log=work / f"budget-{budget}.log")
    wall = time.perf_counter() - started
    stages = json.loads((folder / "stages.json").read_text())
    recorded = sum(v["seconds"] for v in stages.values() if isinstance(v, dict) and "seconds" in v)
    config = json.loads((folder / "train" / "config.json").read_text())
    metrics = [json.loads(line) for line in (folder / "train" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "tokens" in m]
    redone = stages.get("finetune") != before.get("finetune")
    return {"budget": budget, "budget_s": stages["budget"]["for"]["budget_s"], "chose": stages["budget"]["said"],
            "run_seconds": round(wall if redone else recorded), "timed": "this run" if redone else "stages.json",
            "stage_seconds": {k: round(v["seconds"]) for k, v in stages.items() if isinstance(v, dict) and "seconds" in v},
            "epochs_planned": config["epochs"], "steps": trained[-1]["step"], "epochs_run": trained[-1]["epoch"],
            "time_limit_s": config["time_limit"],
            "best_step": max((m["step"] for m in metrics if m.get("best")), default=None)}


def main() -> None:
    import argparse

    from tinytitan.evaluate.metrics import bootstrap_ci
    from tinytitan.evaluate.scoring import examples_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="20m,60m")
    parser.add_argument("--work", default="runs")
    args = parser.parse_args()
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    runs = [run_budget(b, work) for b in args.budgets.split(",")]
    first = work / f"budget-{runs[0]['budget']}"
    ggufs = [next((work / f"budget-{r['budget']}" / "train" / "export").glob("*q8_0.gguf")) for r in runs]
    out = work / "budget-eval"
    evaluation = json.loads(tinytitan("eval", *map(str, ggufs), "--data", str(first / "data" / "test.jsonl"),
                                      "--schema", str(first / "schema.json"), "--baseline",
                                      str(first / "data" / "train.jsonl"), "--max-tokens", "128", "--out", str(out),
                                      "--json", log=work / "budget-eval.log").splitlines()[-1])["task"]
    verdicts = []
    for run, row in zip(runs, evaluation["results"]):
        lines = examples_file(out, row["artifact"]).read_text().splitlines()
        verdicts.append([float(json.loads(x)["constrained_correct"]) for x in lines])
        run.update(exact_match=row["score"], ci95=row["ci95"], constrained=row["constrained"]["exact_match"],
                   ci95_constrained=row["constrained"]["ci95"])
    for run, mine in zip(runs[1:], verdicts[1:]):
        differences = [100 * (a - b) for a, b in zip(mine, verdicts[0], strict=True)]
        run[f"minus_{runs[0]['budget']}_points"] = sum(differences) / len(differences)
        run[f"minus_{runs[0]['budget']}_ci95"] = list(bootstrap_ci(differences))
    crf = evaluation["results"][-1]
    for run in runs:
        print(f"--budget {run['budget']}: {run['run_seconds']} s ({run['run_seconds'] / run['budget_s']:.0%} of it), "
              f"{run['steps']} steps / {run['epochs_run']:.2f} epochs; constrained exact match "
              f"{100 * run['constrained']:.1f}% on {evaluation['rows']} test lines", file=sys.stderr)
    print(json.dumps({"cpu": cpu_model(), "threads": 2, "test_rows": evaluation["rows"], "runs": runs,
                      "crf": {"exact_match": crf["score"], "ci95": crf["ci95"]}}))


if __name__ == "__main__":
    main()
