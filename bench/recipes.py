"""The recipes end to end: `tinytitan run RECIPE` for each, timed, with the figures the README quotes.

    python bench/recipes.py                                   # all four recipes (hours on 2 cores)
    python bench/recipes.py --recipes ingredients,banking77

Each recipe runs in a subprocess (`tinytitan run recipes/NAME.toml --json`); a finished run is
reused (its stages are up to date), and the time reported is then that of the stages as they ran
(`stages.json`). Per recipe: the headline metric of every artifact with its 95% interval, the
recommended artifact, the 4-bit artifact that runs on the Q4_K_M base (base + adapter), and the
untuned base model's floor. The last line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("ingredients", "banking77", "bedtime-stories", "chess-mate-in-one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--set", action="append", default=[], help="passed to every `tinytitan run`")
    args = parser.parse_args()
    results = []
    for name in args.recipes.split(","):
        command = [sys.executable, "-m", "tinytitan", "run", str(ROOT / "recipes" / f"{name}.toml"), "--json"]
        for override in args.set:
            command += ["--set", override]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        stages = json.loads((ROOT / summary["run"] / "stages.json").read_text())
        rows = summary["table"]
        adapter = next((r for r in rows if r["kind"] == "adapter" and not r["vocabulary"]), None)  # on the Q4 base
        floor = next((r for r in rows if r["few_shot"]), None)
        found = {
            "recipe": name, "task": summary["task"], "rows": summary["rows"], "metric": rows[0]["metric"],
            "artifacts": [{k: r[k] for k in ("artifact", "size_mb", "score", "ci95", "constrained", "kl", "tg_tps")}
                          for r in rows],
            "recommended": summary["recommended"] and summary["recommended"]["artifact"],
            "q4_base_plus_adapter": adapter and {"score": adapter["score"], "ci95": adapter["ci95"],
                                                 "constrained": adapter["constrained"]},
            "base_few_shot": floor and {"score": floor["score"], "ci95": floor["ci95"]},
            "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
            "run_seconds": round(sum(v["seconds"] for v in stages.values()), 1), "wall_seconds": round(wall, 1),
            "report": summary["html"], "serve": summary["serve"],
        }
        results.append(found)
        print(f"{name}: {found['metric']} — " + ", ".join(
            f"{r['artifact']} {100 * r['score']:.1f}%" for r in rows) + f"; stages {found['run_seconds'] / 60:.1f} min",
            file=sys.stderr, flush=True)
    print(json.dumps({"bench": "recipes", "results": results}))


if __name__ == "__main__":
    main()
