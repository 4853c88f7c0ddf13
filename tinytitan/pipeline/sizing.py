"""The fine-tuning schedule of a run: the keys its recipe leaves unset sized to the rows the data check
counted, and with `--budget` the epochs that fit (train/schedule.py decides; this reads the run for it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tinytitan.files import read_json
from tinytitan.pipeline import eta
from tinytitan.pipeline.folder import sha
from tinytitan.train import schedule
from tinytitan.train.schedule import BUDGET_DECIDES, Sized, size_schedule

if TYPE_CHECKING:
    from tinytitan.pipeline.run import Pipeline


def sized(p: "Pipeline", config) -> Sized | None:
    """The schedule sized to the training rows the data check counted (None before it has). A budget's
    choice is kept in stages.json for that budget, data and deciding code (train/schedule.py), so a re-run with
    the same --budget is up to date even after this machine's measured rates have moved."""
    check = read_json(p.data / "check.json")
    if not isinstance(check, dict) or "tokens" not in check:
        return None
    rows = check["splits"]["train"]
    tokens = check["tokens"] * rows / max(check["usable"], 1)
    other = seconds_per_token = None
    memo = {"budget_s": p.budget_s, "tokens": tokens, "given": sorted(p.recipe.finetune),
            "batch_tokens": config.batch_tokens, "code": sha(Path(schedule.__file__))}
    kept = p.state.get("budget")
    if p.budget_s is not None and isinstance(kept, dict) and kept.get("for") == memo:
        return Sized(kept["settings"], kept["said"])
    if p.budget_s is not None:
        rates = eta.load_rates()
        stages = p.stages()
        other = sum(eta.rate(rates, s) * (s.units() or 0) for s in stages
                    if s.name not in ("finetune", "distill") and s.applies())
        seconds_per_token = eta.rate(rates, next(s for s in stages if s.name == "finetune"))
    given = set(p.recipe.finetune) - (BUDGET_DECIDES if p.budget_s is not None else set())
    chosen = size_schedule(given, rows=rows, tokens=tokens, batch_tokens=config.batch_tokens,
                           method=config.method, budget_s=p.budget_s, other_s=other or 0.0,
                           seconds_per_token=seconds_per_token)
    if p.budget_s is not None:
        p.state["budget"] = {"for": memo, "settings": chosen.settings, "said": chosen.said}
    return chosen
