"""`tinytitan run RECIPE`: the whole job, from a dataset to a checked, shrunk, servable specialist.

    prepare -> check -> schema -> vocab -> finetune -> export -> distill -> eval -> bench -> report

(`vocab` only where [vocab] trim = "train": the task vocabulary the model is fine-tuned in; `distill` only
with a [distill] student: a smaller model the specialist teaches, evaluated beside it.)

Each stage records in RUN/stages.json what it was computed from (a content hash of its settings,
the files it read and the outputs of the stages before it) and the sha256 of what it wrote. A stage
whose record still matches, with its outputs unchanged on disk, is skipped; so a re-run of a
finished recipe does nothing, a changed quant list redoes export, eval, bench and report only, and
a run killed during fine-tuning resumes from its last checkpoint. Progress shows the stage and an
estimate of the time left (rates measured on this machine by earlier runs, else defaults).

At the end: the comparison table, the HTML report, and the `tinytitan serve` line for the
recommended artifact: the smallest servable one whose score is within the recipe's tolerance of
the best servable score. For JSON tasks the schema is inferred from the training targets, saved
as RUN/schema.json, and applied when serving (RUN/fleet.toml).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from dataclasses import asdict, dataclass
from pathlib import Path

from tinytitan import options, progress
from tinytitan.errors import TinyTitanError
from tinytitan.files import FolderLock, read_json, recover_dir, write_json
from tinytitan.pipeline import eta, stages
from tinytitan.pipeline.folder import claim_run_folder, digest as _digest, sha as _sha, unchanged as _unchanged
from tinytitan.report.summary import print_summary

if TYPE_CHECKING:
    from tinytitan.train.schedule import Sized

PACKAGE = Path(__file__).resolve().parents[1]  # tinytitan/: stage keys hash the source of the code that decides

FORMAT = 1  # bump when a stage's output format changes, so old runs are redone
EVAL_FORMAT = 2  # eval.json rows carry what their Artifact says of itself (kind, gate, servable): 1 had labels only


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="a recipe file (.toml/.yaml); see recipes/ and docs/recipes.md")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe key, e.g. --set finetune.epochs=1 --set export.quant=q8_0")
    parser.add_argument("--output", default=None, help="the run folder (default: the recipe's output)")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None, help="CPU threads")
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--budget", default=None, metavar="TIME",
                        help="the whole run's time on this machine, e.g. 20m or 1.5h: fine-tuning fills what the other stages "
                             "leave, at this machine's measured rates (over the recipe's epochs and early stopping)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the recipe, the data and the schema (in a scratch folder) and print the plan: "
                             "which stages would run and about how long they would take; nothing is trained")
    options.add_json(parser)


def run(args) -> None:
    result = run_recipe(args.recipe, overrides=args.set, output=args.output, threads=args.threads, fresh=args.fresh,
                        dry_run=args.dry_run, quiet=args.json, budget=args.budget)
    if args.json:
        print(json.dumps(result))
    elif args.dry_run:
        from tinytitan.pipeline.plan import format_plan

        print(format_plan(result))
    else:
        print_summary(result)


def run_recipe(recipe: str | Path, *, output: str | Path | None = None, threads: int | None = None,
               fresh: bool = False, dry_run: bool = False, quiet: bool = False, overrides: Sequence[str] = (),
               budget: str | None = None, **sections) -> dict:
    """The whole job of a recipe file, as `tinytitan run RECIPE --json` does it (the verb calls this; Python
    calls it as `tinytitan.run`): returns the run's summary (the table, the recommended artifact, the
    report, the serve line and each stage's status), or with `dry_run` the plan. `sections` override the
    recipe's keys by section, as `--set` does (`finetune={"epochs": 1}`, `name="quick"`); `overrides` are
    `--set` texts; `output` is the run folder (default: the recipe's); `budget` the whole run's time ("20m"):
    the epochs the recipe leaves unset are the most that fit. Progress goes to stderr unless `quiet`."""
    from tinytitan.pipeline.recipe import load_recipe
    from tinytitan.train.schedule import parse_budget

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise TinyTitanError(f"threads={threads!r}: expected a whole number >= 1")
    loaded = load_recipe(recipe, overrides, sections)
    if output:
        loaded.output = Path(output)
    pipeline = Pipeline(loaded, threads=threads, fresh=fresh, quiet=quiet,
                        budget_s=parse_budget(budget) if budget is not None else None)
    return pipeline.plan() if dry_run else pipeline.run()


@dataclass
class Stage:
    name: str
    inputs: Callable[[], dict]  # what the stage is computed from (hashed into its key)
    outputs: Callable[[], list[Path]]  # what it writes (hashed after it runs)
    work: Callable[[], None]
    units: Callable[[], float | None]  # work units for the time estimate (rows, tokens...); None: not known yet
    applies: Callable[[], bool] = lambda: True
    done: Callable[[], float | None] = lambda: None  # the units it did, where they can fall short of the plan


class Pipeline:
    def __init__(self, recipe, threads: int | None = None, fresh: bool = False, quiet: bool = False,
                 budget_s: float | None = None):
        self.recipe = recipe
        self.budget_s = budget_s  # --budget: fine-tuning fills what the other stages leave (train/schedule.py)
        self.threads = threads
        self.fresh = fresh
        self.quiet = quiet
        self.root = recipe.output
        self.data = self.root / "data"
        self.train_dir = self.root / "train"
        self.export_dir = self.train_dir / "export"
        self.vocab_model = self.root / "vocab" / "base-task.gguf"  # [vocab] trim = "train": the base it fine-tunes
        self.negatives = self.root / "vocab" / "negatives.npy"  # ... and the dropped rows its softmax keeps
        self.report_dir = self.root / "report"
        self.student_dir = self.root / "student"  # [distill]: the student's fine-tuning run
        self.state_path = self.root / "stages.json"
        self.state = read_json(self.state_path) or {}  # missing or cut short: every stage is checked again

    # --- the stages ------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        r = self.recipe
        return [
            Stage("prepare", lambda: {"kind": r.kind, "options": r.options, "format": FORMAT, "code": self._task_code(),
                                      "sources": {k: _sha(p) for k, p in sorted(r.sources.items())},
                                      "reading": self._reading_key()},
                  lambda: [self.data / f"{s}.jsonl" for s in ("train", "val", "test")] + [self.data / "prepared.json"],
                  lambda: stages.prepare(self), lambda: 1),
            Stage("check", lambda: {"data": self._hashes("prepare"), "model": self._model_sha(),
                                    "settings": {k: v for k, v in self.finetune_config().as_dict().items()
                                                 if k in ("system", "max_length", "skip_bad", "max_bad_fraction",
                                                          "max_rows", "seed")}},
                  lambda: [self.data / "check.json"], lambda: stages.check(self), lambda: 1),
            Stage("schema", lambda: {"train": _sha(self.data / "train.jsonl"), "format": FORMAT,
                                     "inference": _sha(PACKAGE / "data" / "schema.py")},
                  lambda: [self.root / "schema.json"], lambda: stages.schema(self), lambda: 1, applies=self._is_json_task),
            Stage("vocab", lambda: {"data": self._hashes("prepare"), "model": self._model_sha(),
                                    "keep_top": r.vocab.keep_top, "negatives": r.vocab.negatives,
                                    "system": self.finetune_config().system,
                                    "max_length": self.finetune_config().max_length,
                                    "code": _sha(PACKAGE / "shrink" / "vocabulary.py")},
                  lambda: [self.vocab_model, self.vocab_model.with_suffix(".json")]
                  + ([self.negatives] if r.vocab.negatives else []), lambda: stages.vocab(self), lambda: 1,
                  applies=lambda: r.vocab.trim == "train"),
            Stage("finetune", lambda: {"config": self._finetune_key(), "data": self._hashes("prepare"),
                                       "model": self._model_sha(trained=True), "vocab": self._hashes("vocab")},
                  lambda: sorted((self.train_dir / "best").glob("*")), lambda: stages.finetune(self), lambda: stages.finetune_units(self),
                  done=lambda: stages.trained_tokens(self.train_dir)),
            Stage("export", lambda: {"weights": self._hashes("finetune"), "settings": asdict(r.export),
                                     "gate": _sha(PACKAGE / "export" / "gate.py"),  # new gate rules re-gate
                                     **({"vocab": asdict(r.vocab)} if r.vocab.trim == "export" else {})},
                  lambda: sorted(p for p in self.export_dir.glob("*") if p.is_file()), lambda: stages.export(self),
                  lambda: 1 + 0.5 * len(r.export.quant) * (1.5 if r.vocab.trim == "export" else 1)),
            Stage("distill", lambda: {"config": self._finetune_key(self.student_config()), "data": self._hashes("prepare"),
                                      "teacher": [self._hashes("finetune"), self._hashes("export")],
                                      "settings": asdict(r.distill) if r.distill else None,
                                      "unlabelled": _sha(Path(self.distill_settings().unlabelled))
                                      if r.distill and self.distill_settings().unlabelled else None,
                                      "export": [r.export.quant, r.export.gate_rows, r.export.force],
                                      "code": [_sha(PACKAGE / "train" / m) for m in ("distill.py", "teacher.py")]},
                  lambda: [*sorted((self.student_dir / "best").glob("*")),
                           *sorted(p for p in (self.student_dir / "export").glob("*") if p.is_file())],
                  lambda: stages.distill(self), lambda: stages.distill_units(self),
                  applies=lambda: r.distill is not None, done=lambda: stages.trained_tokens(self.student_dir)),
            Stage("eval", lambda: {"artifacts": self._hashes("export"), "weights": self._hashes("finetune"),
                                   "students": self._hashes("distill"),
                                   "test": _sha(self.data / "test.jsonl"), "settings": asdict(r.eval),
                                   "shots": _sha(self.data / "train.jsonl"),
                                   "schema": self._hashes("schema"), "format": EVAL_FORMAT,
                                   "servable": _sha(PACKAGE / "model" / "artifacts.py")},  # the rules of what is servable
                  lambda: [self.report_dir / "eval.json", *sorted((self.report_dir / "examples").glob("*.jsonl"))],
                  lambda: stages.evaluate(self), lambda: stages.eval_units(self)),
            Stage("bench", lambda: {"artifacts": self._hashes("export"), "settings": asdict(r.report),
                                    "students": self._hashes("distill"),
                                    "test": _sha(self.data / "test.jsonl")},
                  lambda: [self.report_dir / "bench.json"], lambda: stages.bench(self), lambda: stages.bench_units(self),
                  applies=lambda: r.report.bench),
            Stage("report", lambda: {"eval": self._hashes("eval"), "bench": self._hashes("bench"),
                                     "tolerance": r.eval.tolerance, "format": FORMAT, "name": r.name,
                                     "recommend": _sha(PACKAGE / "report" / "summary.py"),
                                     "serving": [r.eval.max_tokens, r.eval.constrained, self.finetune_config().system],
                                     "schema": self._hashes("schema")},
                  lambda: [self.report_dir / "report.md", self.report_dir / "report.html", self.root / "fleet.toml",
                           self.root / "summary.json"],
                  lambda: stages.report(self), lambda: 1),
        ]

    def _task_code(self) -> list[str | None] | None:
        """The sha256s of the task's preparation code (its module and the shared helpers): a fix there redoes
        `prepare`, and what depends on its output if the output changed."""
        if self.recipe.kind == "files":
            return None
        import tinytitan.data.tasks
        from tinytitan.data.tasks import task_module

        return [_sha(Path(m.__file__)) for m in (tinytitan.data.tasks, task_module(self.recipe.kind))]

    def finetune_config(self, trained: bool = False):
        """The fine-tuning settings; `trained`: as the finetune stage uses them (in the task vocabulary's base
        where [vocab] trim = "train"; the stages before it read the data with the model the recipe names), with
        the keys the recipe leaves unset sized to the checked data (and the budget), train/schedule.py."""
        import dataclasses

        config = self.recipe.finetune_config(self.data, self.threads or 0)
        sized = self.sized(config)
        if sized:
            config = dataclasses.replace(config, **sized.settings)
        if trained and self.recipe.vocab.trim == "train":
            config.model = str(self.vocab_model)
            config.head_negatives = str(self.negatives) if self.recipe.vocab.negatives else ""
        return config

    def sized(self, config) -> Sized | None:
        """The schedule sized to the checked rows and the budget (pipeline/sizing.py); None before the check."""
        from tinytitan.pipeline.sizing import sized

        return sized(self, config)

    def student_config(self):
        """[distill]: the student's fine-tuning settings: the specialist's, with [distill]'s [finetune] keys,
        taught by the specialist, in RUN/student."""
        import dataclasses

        config = dataclasses.replace(self.finetune_config(), **self.recipe.distill_finetune)
        return dataclasses.replace(config, teacher=str(self.train_dir), output=str(self.student_dir))

    def distill_settings(self):
        """[distill] as the stage runs it: the unlabelled inputs the recipe names, else those the task
        prepared (data/unlabelled.txt, e.g. the ingredients task's `unlabelled_csv`)."""
        import dataclasses

        settings = self.recipe.distill
        prepared = self.data / "unlabelled.txt"
        if settings and not settings.unlabelled and prepared.is_file():
            return dataclasses.replace(settings, unlabelled=str(prepared))
        return settings

    def _finetune_key(self, config=None) -> dict:
        from tinytitan.train.finetune import RESUMABLE_CHANGES

        # encoding (newer than the key) reads the sources: the prepare stage's business, hashed through its outputs
        config = config or self.finetune_config(trained=True)
        key = {k: v for k, v in config.as_dict().items() if k not in RESUMABLE_CHANGES | {"train", "val", "test", "encoding"}}
        if config.teacher == str(self.train_dir):  # the specialist teaches: its stages' hashes say what it is
            key["teacher"] = "specialist"
        elif config.teacher:  # the teacher's files, not only its name
            from tinytitan.train.teacher import teacher_artifact

            key["teacher"] = teacher_artifact(config.teacher).identity()
        else:  # without one, the key of a run from before distillation existed
            for name in ("teacher", "kd_weight", "kd_temperature", "kd_top_k", "kd_divergence", "kd_dtype"):
                key.pop(name)
        return key

    def _reading_key(self) -> dict:
        """What `files` rows depend on besides the files: how they are read and split."""
        if self.recipe.kind != "files":
            return {}
        config = self.recipe.finetune_config(self.data, sources=True).as_dict()
        return {k: config[k] for k in ("format", "input_column", "output_columns", "input_template", "columns",
                                       "system", "split", "seed", "skip_bad", "max_bad_fraction", "encoding")}

    def _model_sha(self, trained: bool = False) -> str:
        from tinytitan.model.registry import resolve

        model = self.finetune_config(trained).model
        if trained and not Path(model).exists():
            return ""  # the vocab stage has not written it yet (a dry run)
        return resolve(model).sha256

    def _hashes(self, stage: str) -> dict:
        return self.state.get(stage, {}).get("outputs", {})

    def _is_json_task(self) -> bool:
        """Every training completion a JSON object: the task gets a schema."""
        from tinytitan.data.rows import DataSpec, load_examples
        from tinytitan.evaluate.metrics import json_answers

        train = self.data / "train.jsonl"
        if not train.exists():
            return False
        answers = json_answers([e.completion for e in load_examples(train, DataSpec()).examples])
        return bool(answers) and all(isinstance(answer, dict) for answer in answers)

    def plan(self) -> dict:
        """A dry run: what would run and about how long it would take (pipeline/plan.py)."""
        from tinytitan.pipeline.plan import plan

        return plan(self)

    # --- running ---------------------------------------------------------------------------------
    def run(self) -> dict:
        claim_run_folder(self.root, self.recipe.path)
        with FolderLock(self.root, "run"):  # one writer per run folder
            self.state = read_json(self.state_path) or {}  # as the last holder left it
            recover_dir(self.export_dir)  # an export killed while it put the new folder in place
            return self._run_stages()

    def _run_stages(self) -> dict:
        stages = self.stages()
        self.say(f"tinytitan run {self.recipe.path} -> {self.root}")
        rates = eta.load_rates()
        done = []
        started = time.perf_counter()
        for number, stage in enumerate(stages, start=1):
            tag = f"[{number}/{len(stages)}] {stage.name}"
            if not stage.applies():
                self.state.pop(stage.name, None)
                for output in stage.outputs():  # a stale output (a schema of an earlier JSON task) must not linger
                    if output.is_file():
                        output.unlink()
                done.append({"stage": stage.name, "status": "not needed"})
                self.say(f"{tag}: not needed")
                continue
            key = _digest(stage.inputs())
            record = self.state.get(stage.name)
            if not self.fresh and record and record["key"] == key and _unchanged(record["outputs"]):
                done.append({"stage": stage.name, "status": "up to date"})
                self.say(f"{tag}: up to date")
                continue
            pending = [(s, s.units()) for s in stages[number - 1:] if s.applies()]
            if any(n is None for _, n in pending):  # a guess without the data's size would jump by minutes once it is known: none yet
                self.say(f"{tag}: running (the time left is estimated once the data is checked)")
            else:
                left = sum(eta.rate(rates, s) * n for s, n in pending)
                self.say(f"{tag}: running (about {eta.duration(left)} left in all, an estimate)")
            self.state.pop(stage.name, None)
            self._save()
            began = time.perf_counter()
            with progress.heartbeat(tag), contextlib.redirect_stdout(sys.stderr):  # stdout: the result only (--json)
                stage.work()
            seconds = time.perf_counter() - began
            outputs = {str(p): _sha(p) for p in stage.outputs()}
            missing = [p for p in stage.outputs() if not p.exists()]
            if missing:
                raise TinyTitanError(f"stage {stage.name} did not write {missing[0]}")
            self.state[stage.name] = {"key": key, "outputs": outputs, "seconds": round(seconds, 1),
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self._save()
            units = stage.done() or stage.units()  # (early stopping or a time limit: fewer tokens than planned)
            if units and seconds > 1:
                rates[eta.rate_key(stage)] = seconds / units
            done.append({"stage": stage.name, "status": "ran", "seconds": round(seconds, 1)})
            self.say(f"{tag}: done in {eta.duration(seconds)}")
        eta.save_rates(rates)
        ran = [d for d in done if d["status"] == "ran"]
        summary = json.loads((self.root / "summary.json").read_text())
        summary.update(stages=done, seconds=round(time.perf_counter() - started, 1),
                       nothing_to_do=not ran)
        return summary

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)
