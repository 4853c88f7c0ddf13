"""The playground: a page at `/` to try the fleet's tasks in a browser, and the two routes it uses.

    GET  /                    the page (playground.html: no external assets, no build step; works offline)
    GET  /playground/tasks    each task's name, schema, sampling defaults and whether it has a report;
                              the energy profiles and a slot's threads, for the per-answer estimate
    POST /playground/check    {"model", "text"}: is an answer a valid record of the task's schema
                              (jsonschema, the library the evaluator uses), and where not, why
    GET  /playground/report/{model}   the run's report.html, when the task came from a run

The page streams answers from /v1/chat/completions like any client, with the API key the user types
(kept in the tab's sessionStorage); only the page itself is served without the key, and it holds no data.
"""

from __future__ import annotations

import json
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from tinytitan.evaluate.energy import PROFILES
from tinytitan.serve.limits import ApiError


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    text: str = Field(max_length=1 << 20)


def page() -> str:
    return resources.files("tinytitan.serve").joinpath("playground.html").read_text(encoding="utf-8")


def router(fleet: dict, task_of, threads_per_slot: int) -> APIRouter:
    """The playground's routes for `fleet` (task name -> fleet.Task); `task_of(name)` is the app's own lookup
    (a 404 naming the models for an unknown one)."""
    routes = APIRouter(include_in_schema=False)
    html = page()

    @routes.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @routes.get("/playground/tasks")
    async def tasks():
        return {"tasks": [{"name": t.name, "schema": t.schema, "system": t.system, "defaults": t.defaults,
                           "report": f"/playground/report/{t.name}" if t.report else None}
                          for t in fleet.values()],
                "energy": {"threads_per_slot": threads_per_slot,
                           "profiles": [{"name": name, "watts_per_core": watts, "note": note}
                                        for name, (watts, note) in PROFILES.items()]}}

    @routes.post("/playground/check")
    async def check(body: CheckRequest):
        return check_answer(task_of(body.model), body.text)

    @routes.get("/playground/report/{model}")
    async def report(model: str):
        task = task_of(model)
        if not task.report or not task.report.is_file():
            raise ApiError(404, f"The model {model!r} has no report (it was not served from a run folder)", "model",
                           "report_not_found")
        return FileResponse(task.report, media_type="text/html")

    return routes


def check_answer(task, text: str) -> dict:
    """{"json": is it JSON, "valid": does it satisfy the task's schema (None: the task has none), "record": the
    parsed value, "errors": what is wrong, one line each (at most 10)}."""
    try:
        record = json.loads(text)
    except ValueError as error:
        return {"json": False, "valid": False if task.schema else None, "record": None,
                "errors": [f"not JSON: {error}"]}
    if task.schema is None:
        return {"json": True, "valid": None, "record": record, "errors": []}
    import jsonschema

    validator = jsonschema.Draft202012Validator(task.schema)
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return {"json": True, "valid": not errors, "record": record,
            "errors": [f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}" for e in errors[:10]]}
