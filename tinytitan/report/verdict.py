"""Is the specialist worth it? One line comparing the recommended artifact with the classical baseline
(evaluate/baseline.py) on the same held-out rows: the difference in points with a paired 95% bootstrap
interval, and when the specialist does not pull ahead, what to try, read from how it was trained."""

from __future__ import annotations

import json
from pathlib import Path

from tinytitan.evaluate import metrics

ROW_MEANS = {"exact_match": "record exact match", "accuracy": "accuracy"}  # headlines that are a mean over rows


def verdict(evaluation: dict, pick: dict | None, out: Path, run_dir: Path | None, constrained: bool) -> str | None:
    """The verdict line, or None when the evaluation had no baseline asked for. `pick` is the recommended
    table row, `constrained` whether it is served constrained (its per-row verdicts are then those)."""
    from tinytitan.evaluate.scoring import examples_file

    baseline = evaluation.get("baseline")
    if not baseline:
        return None
    if "none" in baseline:
        return f"No classical baseline applies: {baseline['none']}."
    seconds = baseline["train_seconds"]
    about = f"the classical baseline ({baseline['method']}, trained in {seconds:.{1 if seconds < 10 else 0}f} s)"
    if pick is None:
        return f"Nothing passed its parity gate to set against {about}."
    mine = _verdicts(examples_file(out / "examples", pick["artifact"]), constrained)
    theirs = _verdicts(examples_file(out / "examples", baseline["artifact"]), False)
    if mine is None or theirs is None or len(mine) != len(theirs):
        return None
    differences = [100 * (a - b) for a, b in zip(mine, theirs)]
    mean = sum(differences) / len(differences)
    low, high = metrics.bootstrap_ci(differences)
    metric = ROW_MEANS.get(pick["metric"], "record exact match")
    said = f"{mean:+.1f} points of {metric} (paired 95% CI {low:+.1f} to {high:+.1f})"
    specialist = f"the specialist ({pick['artifact']}{', constrained' if constrained else ''})"
    if low > 0:
        return f"{_first_up(specialist)} beats {about} by {said}."
    advice = _advice(run_dir)
    if high < 0:
        return f"{_first_up(about)} beats {specialist}: {said}. Deploy the baseline, or try {advice}."
    return f"{_first_up(specialist)} and {about} are level: {said}. To pull ahead, try {advice}."


def _first_up(text: str) -> str:
    return text[:1].upper() + text[1:]


def _verdicts(path: Path, constrained: bool) -> list[float] | None:
    """Each row's verdict (1 right, 0 wrong) in a per-example file; the constrained decode's when asked."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    key = "constrained_correct" if constrained and rows and "constrained_correct" in rows[0] else "correct"
    if not rows or key not in rows[0]:
        return None
    return [float(row[key]) for row in rows]


def _advice(run_dir: Path | None) -> str:
    """What to try, from the training run: more epochs when its validation loss was still falling at the end,
    a bigger LoRA rank, more rows."""
    tips = []
    try:
        config = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if run_dir else []
    except (OSError, ValueError):
        config, lines = {}, []
    checks = [json.loads(line) for line in lines if '"val_loss"' in line]
    if checks and checks[-1].get("best"):
        tips.append("more epochs (the validation loss was still falling when training ended)")
    else:
        tips.append("more epochs or a higher learning rate")
    if config.get("method", "lora") == "lora":
        tips.append(f"a bigger LoRA rank than {config.get('lora_rank', '?')}")
    tips.append("more training rows")
    return ", ".join(tips[:-1]) + " or " + tips[-1]
