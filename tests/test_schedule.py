"""Fine-tuning settings sized to the data and to a budget (train/schedule.py), and `run --budget`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tinytitan.errors import TinyTitanError
from tinytitan.train.schedule import (MAX_EPOCHS, MIN_EPOCHS, MIN_EVAL_EVERY, TARGET_STEPS, parse_budget,
                                      size_schedule)


def test_small_data_gets_more_passes_and_a_recipe_keeps_what_it_sets():
    # 5,042 ingredient rows (about 237k training tokens): the recipe's measured 4 epochs
    full = size_schedule(set(), rows=5042, tokens=237_000, batch_tokens=1024, method="lora")
    assert full.settings["epochs"] == 4 and full.settings["eval_every"] == 116 == full.settings["save_every"]  # 232 steps an epoch
    assert full.settings["lora_rank"] == 32 and full.settings["lora_alpha"] == 64 and full.settings["learning_rate"] == 3e-4
    small = size_schedule(set(), rows=500, tokens=23_500, batch_tokens=1024, method="lora")
    assert small.settings["epochs"] == MAX_EPOCHS and small.settings["eval_every"] == MIN_EVAL_EVERY  # not 11
    huge = size_schedule(set(), rows=100_000, tokens=5_000_000, batch_tokens=1024, method="lora")
    assert huge.settings["epochs"] == MIN_EPOCHS and huge.settings["eval_every"] == 200
    assert round(TARGET_STEPS / (237_000 / 1024)) == 4
    assert "4 epochs" in full.said and "early stopping" in full.said
    # what the recipe sets is never replaced; alpha follows a rank the user chose
    kept = size_schedule({"epochs", "lora_rank", "eval_every"}, rows=500, tokens=23_500, batch_tokens=1024, method="lora")
    assert set(kept.settings) == {"learning_rate"}
    assert size_schedule({"max_steps"}, rows=500, tokens=23_500, batch_tokens=1024, method="full").settings == \
        {"eval_every": MIN_EVAL_EVERY, "save_every": MIN_EVAL_EVERY}


def test_a_budget_fills_the_time_it_leaves_for_fine_tuning():
    # 100k tokens an epoch at 400 tokens/s: 250 s an epoch; 20 min less 5 min of other stages fits 3.6 epochs
    sized = size_schedule(set(), rows=2000, tokens=100_000, batch_tokens=1024, method="lora", budget_s=1200,
                          other_s=300, seconds_per_token=1 / 400)
    assert sized.settings["epochs"] == 3.6 and sized.settings["max_steps"] == 0
    assert sized.settings["early_stopping"] == 0 and sized.settings["time_limit"] == 900  # the run ends at its end
    assert sized.settings["keep"] == "last" and "the weights at the end kept" in sized.said  # annealed, exported
    assert "3.6 epochs fit the budget" in sized.said and "400 tokens/s" in sized.said and "15 min" in sized.said
    longer = size_schedule(set(), rows=2000, tokens=100_000, batch_tokens=1024, method="lora", budget_s=3600,
                           other_s=300, seconds_per_token=1 / 400)
    assert longer.settings["epochs"] == MAX_EPOCHS and "the budget would fit 13" in longer.said  # the cap
    assert longer.settings["time_limit"] == round(MAX_EPOCHS * 250 * 1.15)  # slack over the capped length
    part = size_schedule(set(), rows=2000, tokens=100_000, batch_tokens=1024, method="lora", budget_s=425,
                         other_s=300, seconds_per_token=1 / 400)
    assert part.settings["epochs"] == 0.5 and part.settings["time_limit"] == 125  # half an epoch
    with pytest.raises(TinyTitanError, match="give a larger budget"):
        size_schedule(set(), rows=2000, tokens=100_000, batch_tokens=1024, method="lora", budget_s=200, other_s=300,
                      seconds_per_token=1 / 400)
    assert parse_budget("20m") == 1200 and parse_budget("1.5h") == 5400 and parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90
    for bad in ("", "20", "soon", "0m", "-5m"):
        with pytest.raises(TinyTitanError, match="--budget"):
            parse_budget(bad)


def test_a_run_says_what_it_sized_and_a_budget_is_kept_for_the_rerun(recipe, tmp_path):
    """The tiny recipe sets its steps; lora_rank and the epochs under a budget are left to the sizing."""
    plan = run_cli("run", str(recipe / "tiny.toml"), "--output", str(tmp_path / "a"), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "fine-tuning schedule: lora_rank 32, lora_alpha 64" in plan.stdout
    bad = run_cli("run", str(recipe / "tiny.toml"), "--budget", "soon", "--dry-run")
    assert bad.returncode == 1 and "--budget 'soon': expected a duration" in bad.stderr and "Traceback" not in bad.stderr
    text = (recipe / "tiny.toml").read_text()  # its max_steps = 6: the budget decides instead
    budget = recipe / "budget.toml"  # beside the recipe: its rows.jsonl is named relative to it
    budget.write_text(text.replace(f'output = "{recipe / "run"}"', f'output = "{tmp_path / "b"}"'))
    first = run_cli("run", str(budget), "--budget", "30m", "--json")
    assert first.returncode == 0, first.stderr
    state = json.loads((tmp_path / "b" / "stages.json").read_text())["budget"]
    assert state["settings"]["epochs"] == MAX_EPOCHS and "the budget would fit" in state["said"]
    config = json.loads((tmp_path / "b" / "train" / "config.json").read_text())
    assert config["epochs"] == MAX_EPOCHS and config["max_steps"] == 0 and config["lora_rank"] == 32
    assert config["early_stopping"] == 0 and config["time_limit"] > 0 and config["keep"] == "last"
    again = run_cli("run", str(budget), "--budget", "30m")  # the same budget: nothing to do
    assert again.returncode == 0 and "nothing to do" in again.stdout
    stages = json.loads((tmp_path / "b" / "stages.json").read_text())  # a choice made by older code ...
    from tinytitan.model.registry import file_sha256
    from tinytitan.train import schedule

    assert stages["budget"]["for"]["code"] == file_sha256(Path(schedule.__file__))
    stages["budget"]["for"]["code"] = "an older train/schedule.py"
    stages["budget"]["settings"].update(epochs=1.0, keep="best")
    (tmp_path / "b" / "stages.json").write_text(json.dumps(stages))
    again = run_cli("run", str(budget), "--budget", "30m")  # ... is made again (the same as the run trained with)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


def test_the_fine_tuning_rate_counts_the_tokens_trained_not_those_planned(tmp_path):
    """Early stopping ends a run before its planned epochs: the machine's rate (and so the next budget) is
    measured on what was trained."""
    from tinytitan.pipeline.stages import trained_tokens

    assert trained_tokens(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "tokens": 900, "loss": 1.0}\n{"step": 1, "val_loss": 0.5}\n'
                                            '{"step": 2, "tokens": 1800, "loss": 0.9}\n{"step": 2, "val_loss": 0.4}\n')
    assert trained_tokens(tmp_path) == 1800
