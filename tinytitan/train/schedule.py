"""Fine-tuning settings sized to the data, and to a time budget, for the keys a recipe leaves unset.

A user with 800 rows should not have to know what an epoch is. Measured on this project's recipes (docs/
results.md, docs/finetune.md#defaults-sized-to-the-data): LoRA at rank 32 (alpha 64) and a learning rate of
3e-4 is what the JSON recipes settled on; the rows decide the length. Small data needs many passes: about
`TARGET_STEPS` optimizer steps in all (5,042 ingredient rows: 4 epochs, the recipe's measured best), at least
`MIN_EPOCHS` and at most `MAX_EPOCHS` passes, the validation loss measured about `EVALS_PER_EPOCH` times an
epoch (not more often than every `MIN_EVAL_EVERY` steps: on 500 rows it would double the training time), and
early stopping (3 evaluations without a better loss) deciding the end.

With a budget (`tinytitan run RECIPE --budget 60m`), the budget decides the length, whatever the recipe says
of epochs, steps and early stopping (the command line decides): the epochs (fractions included) that fit in
the budget less the other stages' estimated time, at this machine's measured fine-tuning rate
(pipeline/eta.py), at most `MAX_EPOCHS`. Early stopping is off (a run it ended at epoch 3.9 of 8 took 12.4 of
its 20 minutes): the learning rate decays over the epochs that fit and the weights at the end are the ones
exported (`keep = "last"`: at 8 epochs of 800 ingredient rows the lowest validation loss came at epoch 2, at
a near-peak rate, and scored 64.1% where the annealed end scored 80.8%); a `time_limit` as long as the
fine-tuning's share stops it there if this machine is slower today than its rates say.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tinytitan.errors import TinyTitanError

TARGET_STEPS = 900
MIN_EPOCHS, MAX_EPOCHS = 2, 8
EVALS_PER_EPOCH = 2
MIN_EVAL_EVERY = 25  # a validation pass costs about as much as a few training steps: not more often than this
BUDGET_DECIDES = {"epochs", "max_steps", "early_stopping", "time_limit", "keep"}  # under --budget, whatever the recipe says
SIZED = {"lora_rank": 32, "lora_alpha": 64.0, "learning_rate": 3e-4}  # LoRA; full fine-tuning keeps its own


@dataclass
class Sized:
    settings: dict  # FinetuneConfig keys chosen here (only those the recipe left unset)
    said: str  # what was chosen and why, for the run's log


def parse_budget(text: str) -> float:
    """Seconds of a budget written as "90s", "20m", "1.5h" or "1h30m"."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text or "")
    if not text or not parts or not any(parts.groups()):
        raise TinyTitanError(f"--budget {text!r}: expected a duration such as 20m, 90s, 1.5h or 1h30m")
    hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise TinyTitanError(f"--budget {text!r}: expected a duration above zero")
    return total


def size_schedule(given: set[str], *, rows: int, tokens: float, batch_tokens: int, method: str,
                  budget_s: float | None = None, other_s: float = 0.0, seconds_per_token: float | None = None) -> Sized:
    """The settings for the keys not in `given` (those the recipe or the command line set), from the training
    rows and their tokens (prompt + completion); with `budget_s`, the epochs that fit in it after `other_s`
    seconds of the other stages at `seconds_per_token` of training."""
    steps_per_epoch = max(1, math.ceil(tokens / batch_tokens))
    chosen: dict = {}
    reasons = []
    if "epochs" not in given and "max_steps" not in given:
        if budget_s is not None:
            if not seconds_per_token:
                raise TinyTitanError("--budget: no fine-tuning rate known for this machine yet")
            room = budget_s - other_s
            epoch_s = seconds_per_token * tokens
            epochs = room / epoch_s if room > 0 else 0.0
            if epochs * steps_per_epoch < 1:  # not one optimizer step
                raise TinyTitanError(f"--budget {budget_s / 60:.0f}m: the other stages need about {other_s / 60:.0f} min "
                                     f"and one epoch about {epoch_s / 60:.0f} min on this machine; "
                                     f"give a larger budget")
            fits = min(epochs, MAX_EPOCHS)  # fractional: the trainer counts its steps (padding and all)
            chosen.update(epochs=math.floor(fits * 100) / 100, max_steps=0, early_stopping=0, keep="last",
                          time_limit=round(room if epochs <= MAX_EPOCHS else fits * epoch_s * 1.15))
            fit = (f"{chosen['epochs']:g} epochs fit the budget" if epochs <= MAX_EPOCHS else
                   f"{MAX_EPOCHS} epochs, the most this runs (the budget would fit {epochs:.0f})")
            reasons.append(f"{fit}: about {fits * epoch_s / 60:.0f} min of fine-tuning at this machine's "
                           f"{1 / seconds_per_token:.0f} tokens/s, {other_s / 60:.0f} min for the rest; early stopping "
                           f"off and the weights at the end kept (the learning rate annealed); stopped at "
                           f"{chosen['time_limit'] / 60:.0f} min if slower")
        else:
            chosen["epochs"] = float(min(MAX_EPOCHS, max(MIN_EPOCHS, round(TARGET_STEPS / steps_per_epoch))))
            reasons.append(f"{chosen['epochs']:g} epochs (about {TARGET_STEPS} steps of {batch_tokens} tokens over "
                           f"{rows:,} rows; early stopping may end sooner)")
    if "eval_every" not in given:
        chosen["eval_every"] = max(MIN_EVAL_EVERY, min(200, steps_per_epoch // EVALS_PER_EPOCH))
        reasons.append(f"validation every {chosen['eval_every']} steps")
        if "save_every" not in given:
            chosen["save_every"] = chosen["eval_every"]
    if method == "lora":
        sized = {k: v for k, v in SIZED.items() if k not in given}
        if "lora_rank" in given:  # alpha follows a rank the user chose
            sized.pop("lora_alpha", None)
        chosen.update(sized)
        if sized:
            reasons.append(", ".join(f"{k} {v:g}" for k, v in sized.items()))
    return Sized(chosen, "; ".join(reasons))
