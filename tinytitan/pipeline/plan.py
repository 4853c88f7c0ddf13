"""The dry run of `tinytitan run --dry-run`: the recipe, the data and the schema checked in a scratch
folder, then which stages of the run folder would run and about how long they would take."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tinytitan.pipeline import eta
from tinytitan.pipeline.folder import digest, unchanged

if TYPE_CHECKING:
    from tinytitan.pipeline.run import Pipeline


def plan(p: "Pipeline") -> dict:
    """A dry run: prepare, check and infer the schema in a scratch folder (so bad data, a bad recipe or
    a schema the decoder cannot enforce fail here, as they would in the run), then say which stages of
    the real run folder are up to date and which would run, with this machine's time estimate."""
    with tempfile.TemporaryDirectory() as scratch:
        probe = type(p)(dataclasses.replace(p.recipe, output=Path(scratch)), p.threads, quiet=True,
                         budget_s=p.budget_s)
        probe_stages = probe.stages()
        for stage in probe_stages[:3]:  # prepare, check, schema
            if stage.applies():
                with contextlib.redirect_stdout(sys.stderr):
                    stage.work()
        check = json.loads((probe.data / "check.json").read_text())
        schema_path = probe.root / "schema.json"
        schema = json.loads(schema_path.read_text()) if schema_path.exists() else None
        sized = probe.sized(probe.finetune_config())
        rates, steps, changed = eta.load_rates(), [], p.fresh
        for stage, probed in zip(p.stages(), probe_stages):
            if not probed.applies():
                steps.append({"stage": stage.name, "status": "not needed"})
                continue
            record = p.state.get(stage.name)
            if not changed and record and record["key"] == digest(stage.inputs()) and unchanged(record["outputs"]):
                steps.append({"stage": stage.name, "status": "up to date"})
                continue
            changed = True  # what follows reads what this stage writes: it runs unless that comes out the same
            units = probed.units() or 0
            steps.append({"stage": stage.name, "status": "would run",
                          "seconds": round(eta.rate(rates, stage) * units)})
    return {"recipe": str(p.recipe.path), "run": str(p.root), "rows": check["splits"],
            "rejected": check["rejected"], "truncated": check["truncated"], "tokens": check["tokens"],
            "fields": len(schema["properties"]) if schema and "properties" in schema else None,
            "stages": steps, "seconds": sum(s.get("seconds", 0) for s in steps),
            "schedule": sized.settings if sized else {}, "schedule_said": sized.said if sized else ""}


def format_plan(plan: dict) -> str:
    rows = plan["rows"]
    lines = [f"dry run of {plan['recipe']} -> {plan['run']}: the recipe, the data and the schema check out",
             f"  rows: train {rows['train']}, val {rows['val']}, test {rows['test']} ({plan['rejected']} rejected, "
             f"{plan['truncated']} cut by max_length, {plan['tokens']:,} tokens)"
             + (f"; schema of {plan['fields']} fields" if plan["fields"] is not None else "")]
    if plan.get("schedule_said"):
        lines.append(f"  fine-tuning schedule: {plan['schedule_said']}")
    for number, step in enumerate(plan["stages"], start=1):
        estimate = f", about {eta.duration(step['seconds'])}" if "seconds" in step else ""
        lines.append(f"  [{number}/{len(plan['stages'])}] {step['stage']}: {step['status']}{estimate}")
    lines.append(f"about {eta.duration(plan['seconds'])} in all (an estimate from this machine's earlier runs, else "
                 f"defaults for a 2-core CPU); nothing was trained")
    return "\n".join(lines)
