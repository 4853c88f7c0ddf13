"""What each stage of `tinytitan run` does (pipeline/run.py decides when it runs, and skips it while
what it was computed from is unchanged), and how much work it is, for the time estimate."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tinytitan.errors import TinyTitanError
from tinytitan.files import replace_dir, write_json

if TYPE_CHECKING:
    from tinytitan.pipeline.run import Pipeline


def prepare(p: "Pipeline") -> None:
    if p.data.exists():
        shutil.rmtree(p.data)
    p.data.mkdir(parents=True)
    if p.recipe.kind == "files":
        counts = _prepare_files(p.recipe, p.data)
    else:
        from tinytitan.data.tasks import task_module

        counts = task_module(p.recipe.kind).prepare(p.recipe.sources, p.data, **p.recipe.options)
    write_json(p.data / "prepared.json", {"kind": p.recipe.kind, **counts})
    p.say(f"      rows: {', '.join(f'{k} {v}' for k, v in counts.items())}")
    empty = [name for name in ("train", "val", "test") if not counts.get(name)]
    if empty:
        raise TinyTitanError(f"the {empty[0]} split is empty (rows: {', '.join(f'{k} {v}' for k, v in counts.items())}"
                             f"): give more rows, a {empty[0]} file of its own, or other [finetune] split shares")

def check(p: "Pipeline") -> None:
    from tinytitan.data.check import enforce, prepare_data
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer

    config = p.finetune_config()
    prepared = prepare_data(config, load_tokenizer(resolve(config.model)), strict_errors=False)
    stats = {**prepared.stats, "errors": [str(r) for r in prepared.rejected][:50]}
    write_json(p.data / "check.json", stats)  # written first: the error points to it
    enforce(prepared, config.skip_bad, config.max_bad_fraction,
            hint=f"see {p.data / 'check.json'}; fix the data or set finetune.skip_bad = true")
    tokens = stats["prompt_tokens"], stats["completion_tokens"]
    p.say(f"      {stats['usable']} usable rows, {stats['rejected']} rejected; prompt tokens p95 "
              f"{tokens[0]['p95']}, completion p95 {tokens[1]['p95']}, {stats['truncated']} cut by max_length")

def schema(p: "Pipeline") -> None:
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.data.schema import infer_schema
    from tinytitan.data.structured import uses_input
    from tinytitan.data.grammar import schema_to_grammar

    examples = load_examples(p.data / "train.jsonl", DataSpec()).examples
    schema = infer_schema([json.loads(e.completion) for e in examples], inputs=[e.input_text for e in examples])
    schema_to_grammar(schema)  # it must be enforceable
    write_json(p.root / "schema.json", schema, ensure_ascii=False)
    fields = schema.get("properties", {})
    enums = [k for k, v in fields.items() if "enum" in v]
    copied = [k for k, v in fields.items() if uses_input(v)]
    p.say(f"      {len(fields)} fields" + (f"; enums: {', '.join(enums)}" if enums else "")
              + (f"; words from the input: {', '.join(copied)}" if copied else ""))

def vocab(p: "Pipeline") -> None:
    from tinytitan.model.registry import resolve
    import numpy as np

    from tinytitan.files import atomic_file
    from tinytitan.shrink.vocabulary import Vocab, describe, head_negatives, run_keep_set, trim_gguf

    config, top = p.finetune_config(), p.recipe.vocab.keep_top
    source = resolve(config.model)
    vocab = Vocab.from_gguf(source.gguf)
    keep = run_keep_set(config, vocab, top)
    p.vocab_model.parent.mkdir(parents=True, exist_ok=True)
    result = {**trim_gguf(source.path, keep, p.vocab_model), **describe(keep, vocab), "keep_top": top,
              "source": str(source.path)}
    if p.recipe.vocab.negatives:
        rows, summary = head_negatives(config, keep, p.recipe.vocab.negatives)
        def save(path: Path) -> None:
            with open(path, "wb") as file:  # np.save to a name would add ".npy" to the temporary one
                np.save(file, rows.numpy(), allow_pickle=False)

        atomic_file(p.negatives, save)
        result.update(summary)
        p.say(f"      the untrained model gives the kept tokens {summary['kept_probability']:.0%} of its "
                  f"next-token probability; {summary['negatives']:,} dropped tokens holding "
                  f"{summary['negatives_share_of_dropped']:.0%} of the rest stay in the training softmax")
    write_json(p.vocab_model.with_suffix(".json"), result)
    p.say(f"      {result['kept']:,} of {result['of']:,} tokens kept; {result['bytes_before'] / 2**20:.1f} -> "
              f"{result['bytes_after'] / 2**20:.1f} MiB base")

def finetune(p: "Pipeline") -> None:
    from tinytitan.train.finetune import CannotResume, train

    config = p.finetune_config(trained=True)
    sized = p.sized(config)
    if sized and sized.said:
        p.say(f"      fine-tuning schedule, sized to the data{' and the budget' if p.budget_s else ''}: {sized.said}")
    if p.fresh and p.train_dir.exists():  # --fresh trains anew; what was trained before is kept aside
        set_aside(p, p.train_dir)
    if (p.train_dir / "config.json").exists():
        try:
            train(config, resume=True)
            return
        except CannotResume as error:  # changed settings or data: this run cannot continue; any other error
            p.say(f"      starting over: {error}")  # (a full disk...) leaves it to resume once fixed
            set_aside(p, p.train_dir)
    train(config)

def set_aside(p: "Pipeline", folder: Path) -> None:
    """A training folder that cannot continue: moved aside when it holds trained weights or checkpoints
    (hours of work), deleted when it holds none."""
    if any((folder / "checkpoints").glob("step-*")) or any((folder / "best").glob("*")):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = next(a for n in range(1000) if not (a := folder.with_name(
            f"{folder.name}.replaced-{stamp}" + (f"-{n}" if n else ""))).exists())
        folder.rename(aside)
        p.say(f"      the earlier training is kept in {aside}")
    else:
        shutil.rmtree(folder)

def export(p: "Pipeline") -> None:
    settings = p.recipe.export
    _export(p, p.train_dir, p.export_dir, settings.to, p.recipe.name, trim=p.recipe.vocab.trim == "export")


def _export(p: "Pipeline", run_dir: Path, export_dir: Path, to: list[str], name: str, trim: bool) -> None:
    from tinytitan.export.export import export as export_run
    from tinytitan.export.quantize import parse_quants

    settings = p.recipe.export
    building = export_dir.with_name("export.new")  # the previous export and the fleet serving it stay
    if building.exists():  # whole until this one is complete
        shutil.rmtree(building)
    report = export_run(run_dir, to, parse_quants(",".join(settings.quant)) if "gguf" in to else [],
                        building, gate_rows=settings.gate_rows, force=settings.force, threads=p.threads,
                        name=name, trim=trim, keep_top=p.recipe.vocab.keep_top)
    replace_dir(building, export_dir)
    for item in report["artifacts"]:
        parity = item["parity"]
        p.say(f"      {item['artifact']:<40} {item['bytes'] / 2**20:7.1f} MiB  gate "
                  f"{'passed' if parity['passed'] else 'FAILED: ' + '; '.join(parity['failures'])}")


def distill(p: "Pipeline") -> None:
    """A student taught by the run's specialist (train/distill.py), in RUN/student, exported as merged GGUFs
    with the recipe's quants, so eval, bench and the report put it beside its teacher."""
    from tinytitan.train.distill import distill as teach
    from tinytitan.train.finetune import CannotResume

    config, settings = p.student_config(), p.distill_settings()
    if p.fresh and p.student_dir.exists():
        set_aside(p, p.student_dir)
    try:
        teach(config, settings, resume=(p.student_dir / "config.json").exists(), say=p.say)
    except CannotResume as error:  # changed settings or data: this student cannot continue
        p.say(f"      starting over: {error}")
        set_aside(p, p.student_dir)
        teach(config, settings, say=p.say)
    _export(p, p.student_dir, p.student_dir / "export", ["gguf"], f"{p.recipe.name}-student", trim=False)


def evaluate(p: "Pipeline") -> None:
    from tinytitan.evaluate.eval import read_schema
    from tinytitan.report.report import evaluate_run

    settings = p.recipe.eval
    schema_path = p.root / "schema.json"
    schema = read_schema(str(schema_path)) if settings.constrained and schema_path.exists() else None
    p.report_dir.mkdir(parents=True, exist_ok=True)
    evaluate_run(p.train_dir, p.root, settings, str(p.data / "test.jsonl"), p.report_dir, schema=schema,
                 threads=p.threads)


def bench(p: "Pipeline") -> None:
    from tinytitan.report.report import bench_run

    p.report_dir.mkdir(parents=True, exist_ok=True)  # measured anew: the stage's own key decided it must be
    bench_run(p.train_dir, str(p.data / "test.jsonl"), p.report_dir, context=p.recipe.report.context,
              reps=p.recipe.report.bench_reps, fresh=True, root=p.root)


def report(p: "Pipeline") -> None:
    from tinytitan.report.summary import finish_report

    evaluation = json.loads((p.report_dir / "eval.json").read_text())["result"]
    bench_path = p.report_dir / "bench.json"
    bench = json.loads(bench_path.read_text())["result"] if bench_path.exists() and p.recipe.report.bench else None
    schema = p.root / "schema.json"
    summary = finish_report(p.train_dir, p.report_dir, evaluation, bench, name=p.recipe.name,
                            tolerance=p.recipe.eval.tolerance, fleet=p.root / "fleet.toml",
                            schema=schema if schema.exists() and p.recipe.eval.constrained else None,
                            system=p.finetune_config().system, max_tokens=p.recipe.eval.max_tokens,
                            source=str(p.recipe.path))
    summary = {"recipe": str(p.recipe.path), "run": str(p.root), **summary}
    write_json(p.root / "summary.json", summary)


# --- work units, for the time estimate ---
def finetune_units(p: "Pipeline", config=None) -> float | None:
    check = p.data / "check.json"
    if not check.exists():
        return None  # unknown until the data check has counted the tokens
    stats = json.loads(check.read_text())
    config = config or p.finetune_config(trained=True)
    train_share = stats["splits"]["train"] / max(stats["usable"], 1)
    return stats["tokens"] * train_share * (config.max_steps and 1 or config.epochs)

def trained_tokens(run_dir: Path) -> float | None:
    """The tokens a fine-tuning run trained on, from its metrics.jsonl (None without one): what its time was
    spent on, where early stopping ended it before the planned epochs."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    tokens = [json.loads(line).get("tokens") for line in lines if '"tokens"' in line]
    return float(tokens[-1]) if tokens and tokens[-1] else None

def distill_units(p: "Pipeline") -> float | None:
    """The student's training tokens (its teacher's pass and labels are a fraction of that: not counted)."""
    return finetune_units(p, p.student_config())

def eval_units(p: "Pipeline") -> float | None:
    """Decoded tokens, roughly: every artifact decodes every row (twice when constrained), up to twice the
    reference's length + 8 tokens (at about 4 characters a token), capped by max_tokens; + 8 for the prompt."""
    settings = p.recipe.eval
    test = p.data / "test.jsonl"
    if not test.exists():
        return None
    references = [_completion(json.loads(line)) for line in test.read_text().splitlines() if line.strip()]
    references = references[:settings.rows] if settings.rows else references
    per_row = sum(min(settings.max_tokens, len(text) / 2 + 8) + 8 for text in references)
    return (2 + gguf_units(p)) * per_row * (2 if settings.constrained else 1)

def bench_units(p: "Pipeline") -> float:
    return gguf_units(p)

def gguf_units(p: "Pipeline") -> float:
    """The llama.cpp artifacts eval and bench run, the base included (copies in the task vocabulary count half:
    they run about twice as fast): those the export wrote, or before it has, those the recipe asks for."""
    from tinytitan.model.artifacts import run_artifacts

    if any(p.export_dir.glob("*.gguf")):
        from tinytitan.report.report import student_run

        return sum(0.5 if a.vocabulary else 1.0
                   for a in run_artifacts(p.train_dir, students=student_run(p.root)) if a.kind != "run")
    exported = len(p.recipe.export.quant) * ("gguf" in p.recipe.export.to) + ("adapter" in p.recipe.export.to)
    return 1 + exported * (1.5 if p.recipe.vocab.trim == "export" else 1)


def _prepare_files(recipe, out: Path) -> dict:
    """A `files` task: the user's rows (any format `finetune` reads), split if need be, as JSONL."""
    from tinytitan.data.rows import load_examples
    from tinytitan.data.splits import split_examples
    from tinytitan.data.check import spec_from
    from tinytitan.data.tasks import write_jsonl

    config = recipe.finetune_config(out, sources=True)
    spec = spec_from(config)
    loaded = {"train": load_examples(recipe.sources["train"], spec)}
    order = loaded["train"].json_keys  # every split's targets spelled in the training file's key order
    for name in ("val", "test"):
        if name in recipe.sources:
            loaded[name] = load_examples(recipe.sources[name], spec, duplicates="keep" if name == "test" else "reject",
                                         key_order=order)
    bad = [r for report in loaded.values() for r in report.rejected]
    if bad and not config.skip_bad:
        raise TinyTitanError(f"{len(bad)} bad rows (first: {bad[0]}); fix them or set finetune.skip_bad = true")
    # the training file gives the splits that have no file of their own (a published test set: train and val)
    shares = [share if name == "train" or name not in loaded else 0.0
              for name, share in zip(("train", "val", "test"), config.split)]
    splits = split_examples(loaded["train"].examples, [share / sum(shares) for share in shares], config.seed)
    for name in ("val", "test"):
        if name in loaded:
            splits[name] = loaded[name].examples
    return {name: write_jsonl(out / f"{name}.jsonl", (e.as_row() for e in examples)) for name, examples in splits.items()}


def _completion(row: dict) -> str:
    """A prepared row's reference completion as text (a JSON completion as its JSON)."""
    completion = row.get("completion", (row.get("messages") or [{}])[-1].get("content", ""))
    return completion if isinstance(completion, str) else json.dumps(completion, ensure_ascii=False)
