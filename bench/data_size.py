"""How many rows does the specialist need to beat a classical model? Ingredients with N training rows: the
specialist with the default settings (the recipe leaves the schedule unset: train/schedule.py sizes it)
against the CRF trained on the same N rows, on the 657 test lines. The last line is one JSON document.

    python bench/data_size.py --rows 500,1000,2000

For each N: `tinytitan run` of a recipe with only [task] max_train = N and max_length set (its own eval on 8
rows, no bench: the figures come after), then `tinytitan eval` of its Q8_0 export on the 657 test lines, free
and constrained by the run's schema, with `--baseline` its N training rows (the same split): record exact
match with 95% intervals for both, and the paired difference (constrained, as served, minus the CRF).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """# python bench/data_size.py: ingredients with {rows} training rows, the schedule left to the defaults
name = "size-{rows}"
output = "{output}"

[task]
kind = "ingredients"
csv = "{csv}"
max_train = {rows}
max_val = 300

[finetune]
max_length = 128

[export]
to = ["gguf"]
quant = ["q8_0"]
gate_rows = 32

[eval]
rows = 8
max_tokens = 128

[report]
bench = false
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def tinytitan(*args: str, log: Path) -> str:
    with open(log, "w") as err:
        result = subprocess.run([sys.executable, "-m", "tinytitan", *args], stdout=subprocess.PIPE, stderr=err,
                                text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(f"tinytitan {' '.join(args)} failed; see {log}")
    return result.stdout


def measure(rows: int, work: Path) -> dict:
    from tinytitan.evaluate.metrics import bootstrap_ci

    folder = work / f"size-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.toml"
    csv = ROOT / "recipes" / "data" / "ingredients" / "tastecooking-ingredients-2024.csv"
    recipe.write_text(RECIPE.format(rows=rows, output=folder / "run", csv=csv))
    started = time.perf_counter()
    tinytitan("run", str(recipe), "--json", log=folder / "run.log")
    run_seconds = time.perf_counter() - started
    run = folder / "run"
    gguf = next((run / "train" / "export").glob("*q8_0.gguf"))
    evaluation = folder / "eval.json"
    if not evaluation.exists():
        out = tinytitan("eval", str(gguf), "--data", str(run / "data" / "test.jsonl"), "--schema",
                        str(run / "schema.json"), "--baseline", str(run / "data" / "train.jsonl"), "--max-tokens", "128",
                        "--out", str(folder / "examples"), "--json", log=folder / "eval.log")
        evaluation.write_text(out.splitlines()[-1])
    task = json.loads(evaluation.read_text())["task"]
    specialist, baseline = task["results"][0], task["results"][-1]
    config = json.loads((run / "train" / "config.json").read_text())
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "tokens" in m]
    mine = [json.loads(x) for x in (folder / "examples" / f"{gguf.stem}.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (folder / "examples" / "classical_baseline__CRF.jsonl").read_text().splitlines()]
    differences = [100 * (a["constrained_correct"] - b["correct"]) for a, b in zip(mine, theirs, strict=True)]
    return {"rows": rows, "test_rows": task["rows"],
            "schedule": {k: config[k] for k in ("epochs", "eval_every", "lora_rank", "lora_alpha", "learning_rate")},
            "steps": trained[-1]["step"] if trained else None, "epochs_run": trained[-1].get("epoch") if trained else None,
            "run_seconds": round(run_seconds), "specialist": {
                "exact_match": specialist["score"], "ci95": specialist["ci95"],
                "constrained": specialist["constrained"]["exact_match"], "ci95_constrained": specialist["constrained"]["ci95"]},
            "crf": {"exact_match": baseline["score"], "ci95": baseline["ci95"],
                    "train_seconds": baseline["baseline"]["train_seconds"]},
            "constrained_minus_crf_points": sum(differences) / len(differences),
            "ci95_points": list(bootstrap_ci(differences))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500,1000,2000")
    parser.add_argument("--work", default="runs/data-size")
    args = parser.parse_args()
    results = []
    for rows in (int(n) for n in args.rows.split(",")):
        found = measure(rows, ROOT / args.work)
        results.append(found)
        print(f"{rows} rows: specialist {100 * found['specialist']['constrained']:.1f}% constrained "
              f"({100 * found['specialist']['exact_match']:.1f}% free), CRF {100 * found['crf']['exact_match']:.1f}%, "
              f"difference {found['constrained_minus_crf_points']:+.1f} points (95% CI {found['ci95_points'][0]:+.1f} to "
              f"{found['ci95_points'][1]:+.1f}); {found['schedule']}, {found['steps']} steps, {found['run_seconds']} s",
              file=sys.stderr)
    print(json.dumps({"cpu": cpu_model(), "threads": 2, "sizes": results}))


if __name__ == "__main__":
    main()
