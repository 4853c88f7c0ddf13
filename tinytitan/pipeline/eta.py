"""The time estimate of `tinytitan run`: seconds per unit of each stage's work (rows, tokens, artifacts),
measured on this machine by its earlier runs ($TINYTITAN_HOME/rates.json), else defaults for a 2-core CPU."""

from __future__ import annotations

import json

from tinytitan.files import write_json
from tinytitan.progress import duration  # noqa: F401  (eta.duration: the run's estimates are spelled alike)

DEFAULT_RATES = {  # seconds per unit on a 2-core laptop-class CPU; refined from this machine's own runs
    "prepare": 2.0, "check": 20.0, "schema": 1.0, "vocab": 15.0, "finetune": 1 / 380.0, "export": 40.0,
    "distill": 1 / 300.0,  # per student training token: its teacher pass, labels and export come on top
    "eval_tokens": 0.005, "bench": 45.0, "report": 5.0,
}
RATE_KEYS = {"eval": "eval_tokens"}  # a stage whose unit changed keeps its rate under a new name


def rate_key(stage) -> str:
    return RATE_KEYS.get(stage.name, stage.name)


def rate(rates: dict, stage) -> float:
    """Seconds per unit of `stage`'s work: this machine's, else the default."""
    return rates.get(rate_key(stage), DEFAULT_RATES[rate_key(stage)])


def load_rates() -> dict:
    from tinytitan.model.registry import home

    try:
        return json.loads((home() / "rates.json").read_text())
    except (OSError, ValueError):
        return {}


def save_rates(rates: dict) -> None:
    from tinytitan.model.registry import home

    write_json(home() / "rates.json", rates)
