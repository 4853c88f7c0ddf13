"""What does a teacher add? A depth-pruned student with and without distillation, and (ingredients) with
teacher-labelled unlabelled cookstr lines. The last line is one JSON document.

The teacher is a finished specialist: ingredients (`tinytitan run recipes/ingredients.toml`, LoRA r32) or any
other task's run folder, such as banking77 (`--unlabelled 0 --lora-rank 16 --max-tokens 24`). Steps, each
skipped when its output is already there (so a re-run only adds what is missing, and summarizes):

1. `tinytitan prune TEACHER --layers N`: the student, the teacher's N most important layers;
2. `kd`: the student fine-tuned with the teacher's top-64 distributions (`finetune --teacher`, --kd-weight, 0.5);
3. `plain`: the same student, the same settings and steps, without the teacher;
4. `cook`: `tinytitan distill --unlabelled`: the teacher (Q8_0) labels --unlabelled cookstr lines,
   constrained by the schema, kept at confidence >= 0.5, added to the 5,042 labelled rows (no KD term:
   compared with `plain`, it shows what the labels add);
5. `cookkd`: the same rows (the same labels, copied) with the teacher's top-64 beside them: compared with
   `cook`, what the KD term adds on the larger set;
6. Q8_0 exports of the teacher and the students, one `tinytitan eval` of them all on the teacher run's test
   rows (ingredients: record exact match on the 657 lines, free and schema-constrained; banking77: accuracy on
   the 3,080 messages; 95% CIs), one `tinytitan bench` of them all.

    python bench/distill.py [--teacher runs/ingredients] [--work runs/distill-study] [--layers 12] [--unlabelled 0]
                            [--epochs 1] [--kd-weight 0.5] [--steps kd,plain,cook,cookkd] [--lora-rank 32]
                            [--max-tokens 128]

A teacher trained in the task vocabulary (`--set vocab.trim=train`) gives students in that vocabulary, so the
decode comparison is in one vocabulary without the 262k head that no depth pruning shrinks.
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


def tinytitan(*args: str, log: Path | None = None) -> float:
    """Run `tinytitan ARGS`, failing loudly; the wall seconds it took."""
    started = time.perf_counter()
    with open(log, "w") if log else open("/dev/null", "w") as out:
        result = subprocess.run([sys.executable, "-m", "tinytitan", *args], stdout=out if log else None,
                                stderr=subprocess.STDOUT if log else None, cwd=ROOT)
    if result.returncode:
        sys.exit(f"tinytitan {' '.join(args)} failed" + (f"; see {log}" if log else ""))
    return time.perf_counter() - started


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/ingredients", help="a finished ingredients `tinytitan run`")
    parser.add_argument("--work", default="runs/distill-study")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--unlabelled", type=int, default=5600,
                        help="cookstr lines for the teacher to label (0: leave the labels studies out)")
    parser.add_argument("--kd-weight", default="0.5", help="the KD term's weight in kd and cookkd")
    parser.add_argument("--steps", default="kd,plain,cook", help="which students: kd, plain, cook, cookkd")
    parser.add_argument("--lora-rank", type=int, default=32, help="the students' LoRA rank (alpha: twice it)")
    parser.add_argument("--max-tokens", default="128", help="the evaluation's generation cap per row")
    args = parser.parse_args()

    teacher, work = Path(args.teacher), Path(args.work)
    data, runs, exported = teacher / "data", work / "runs", work / "exp"
    for folder in (runs, exported):
        folder.mkdir(parents=True, exist_ok=True)
    student = work / f"student-{args.layers}.gguf"
    seconds: dict[str, float] = {}
    if not student.exists():
        seconds["prune"] = tinytitan("prune", str(teacher), "--data", str(data / "train.jsonl"), "--layers",
                                     str(args.layers), "-o", str(student))
    chosen = [name for name in args.steps.split(",") if args.unlabelled or not name.startswith("cook")]
    unlabelled = work / "unlabelled.txt"
    if any(name.startswith("cook") for name in chosen) and not unlabelled.exists():
        # cookstr's unlabelled lines, as the ingredients task prepares them
        from tinytitan.data.tasks import ingredients

        cookstr = ROOT / "recipes" / "data" / "ingredients"
        ingredients.prepare({"csv": cookstr / "tastecooking-ingredients-2024.csv",
                             "unlabelled_csv": cookstr / "cookstr-ingredients-2017.csv"}, work, max_val=300)
    common = ["--train", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"), "--max-length", "128",
              "--lora-rank", str(args.lora_rank), "--lora-alpha", str(2 * args.lora_rank), "--epochs", args.epochs,
              "--learning-rate", "3e-4",
              "--eval-every", "100", "--save-every", "100", "--early-stopping", "0"]
    teacher_q8 = exported / "teacher"
    if not any(teacher_q8.glob("*q8_0.gguf")):
        seconds["export teacher"] = tinytitan("export", str(teacher / "train"), "--to", "gguf", "--quant", "q8_0",
                                              "--out", str(teacher_q8), "--gate-rows", "32", "--force")
    teacher_gguf = str(next(teacher_q8.glob("*q8_0.gguf")))
    labelling = ["distill", "--teacher", teacher_gguf, "--student", str(student), "--unlabelled", str(unlabelled),
                 "--max-unlabelled", str(args.unlabelled)]
    every = {
        "kd": ["finetune", "--model", str(student), "--teacher", str(teacher), "--kd-weight", args.kd_weight, *common],
        "plain": ["finetune", "--model", str(student), *common],
        "cook": [*labelling, "--kd-weight", "0", *common],
        "cookkd": [*labelling, "--kd-weight", args.kd_weight, *common],
    }
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        sys.exit(f"--steps {args.steps}: unknown {', '.join(unknown)}; expected some of {', '.join(every)}")
    steps = {f"{name}{args.layers}": every[name] for name in chosen}
    for name, command in steps.items():
        labels = [runs / other / "distill" / "labels.json" for other in steps if other.startswith("cook")]
        mine = runs / name / "distill" / "labels.json"
        if name.startswith("cook") and not mine.exists() and any(p.exists() for p in labels):
            mine.parent.mkdir(parents=True, exist_ok=True)  # the same teacher, inputs and settings: labelled once
            mine.write_bytes(next(p for p in labels if p.exists()).read_bytes())
        if not (runs / name / "best").is_dir():
            seconds[name] = tinytitan(*command, "--output", str(runs / name), log=runs / f"{name}.log")
        if not any((exported / name).glob("*q8_0.gguf")):
            tinytitan("export", str(runs / name), "--to", "gguf", "--quant", "q8_0", "--out", str(exported / name),
                      "--gate-rows", "32", "--force")
    ggufs = [teacher_gguf] + [str(next((exported / name).glob("*q8_0.gguf"))) for name in steps]
    evaluation = work / "eval.json"
    if not evaluation.exists():  # JSON tasks also decode constrained by the schema; labels are scored by decoding
        schema = teacher / "schema.json"
        scoring = ["--schema", str(schema)] if schema.exists() else ["--no-constrained"]
        result = subprocess.run([sys.executable, "-m", "tinytitan", "eval", *ggufs, "--data", str(data / "test.jsonl"),
                                 *scoring, "--no-likelihood", "--max-tokens", args.max_tokens, "--out",
                                 str(work / "eval"), "--json"], capture_output=True, text=True, cwd=ROOT)
        if result.returncode:
            sys.exit(f"eval failed: {result.stderr[-2000:]}")
        evaluation.write_text(result.stdout.splitlines()[-1])
    speed = work / "bench.json"
    if not speed.exists():
        result = subprocess.run([sys.executable, "-m", "tinytitan", "bench", *ggufs, "--context", "none", "--json"],
                                capture_output=True, text=True, cwd=ROOT)
        if result.returncode:
            sys.exit(f"bench failed: {result.stderr[-2000:]}")
        speed.write_text(result.stdout.splitlines()[-1])
    print(json.dumps(summarize(ggufs, list(steps), json.loads(evaluation.read_text()),
                               json.loads(speed.read_text()), runs, seconds)))


def summarize(ggufs: list[str], names: list[str], evaluation: dict, speed: dict, runs: Path, seconds: dict) -> dict:
    def by_file(rows: list[dict], gguf: str) -> dict:
        return next((row for row in rows if row.get("spec") == gguf), {})

    evaluation = evaluation.get("task", evaluation)  # `eval --json`: {"artifacts": ..., "task": {"results": ...}}
    out = {"cpu": cpu_model(), "threads": speed.get("machine", {}).get("cpus"), "test_rows": evaluation.get("rows"),
           "artifacts": []}
    for name, gguf in zip(["teacher", *names], ggufs):
        row, bench = by_file(evaluation["results"], gguf), by_file(speed["artifacts"], gguf)
        constrained = row.get("constrained") or {}
        decode = [s["tg_tps"] for s in bench.get("speed", []) if s.get("tg_tps")]
        entry = {"name": name, "artifact": row.get("artifact"), "size_mb": round(row.get("size_mb", 0), 1),
                 "metric": row.get("headline"), "score": row.get("score"), "ci95": row.get("ci95"),
                 "score_constrained": constrained.get(row.get("headline")), "ci95_constrained": constrained.get("ci95"),
                 "decode_tok_s": round(max(decode), 1) if decode else None}
        run = runs / name
        if (run / "metrics.jsonl").exists():
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in records if "loss" in r]
            entry.update(steps=steps[-1]["step"], train_tokens=steps[-1]["tokens"],
                         best_val_loss=round(min(r["val_loss"] for r in records if "val_loss" in r), 5),
                         peak_rss_mb=round(steps[-1]["peak_rss_mb"]))
        labels = run / "distill" / "labels.json"
        if labels.exists():
            entry["labels"] = {k: v for k, v in json.loads(labels.read_text())["labels"].items() if k != "rows"}
        out["artifacts"].append(entry)
    teacher_speed = out["artifacts"][0]["decode_tok_s"]
    for entry in out["artifacts"][1:]:
        if teacher_speed and entry["decode_tok_s"]:
            entry["decode_vs_teacher"] = round(entry["decode_tok_s"] / teacher_speed, 3)
    out["seconds"] = {k: round(v) for k, v in seconds.items()}
    return out


if __name__ == "__main__":
    main()
