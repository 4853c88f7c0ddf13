"""Score artifacts side by side on a task's held-out rows (`evaluate_task`), the engine of `tinytitan eval`,
the run's eval stage and `tinytitan report`.

Every artifact decodes the same rows greedily (the base model with solved examples as earlier turns);
the task's metrics, a 95% bootstrap interval on the headline metric, the perplexity of the references
and KL against the reference are computed from the decodes, which are cached per artifact and rows
(`DECODING` bumps the format) so a report made again decodes nothing it has seen.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

from tinytitan.errors import TinyTitanError
from tinytitan.evaluate import metrics
from tinytitan.files import atomic_file, read_json, write_json

HEADLINE = {"extraction": "exact_match", "classification": "accuracy", "generation": "chrf"}


def load_rows(path: str, spec, limit: int | None = None, key_order=()):
    from tinytitan.data.rows import load_examples

    report = load_examples(path, spec, duplicates="keep", key_order=key_order)  # every row is scored, repeats included
    if report.rejected:
        first = report.rejected[0]
        raise TinyTitanError(f"{first} ({len(report.rejected)} bad rows in {path}; "
                             f"`tinytitan data check {path}` lists them)")
    return report.examples[:limit] if limit else report.examples


def evaluate_task(artifacts, data: str, *, task="auto", spec=None, limit=None, base_shots=3, shots_data=None,
                  kl_reference=None, max_tokens=256, threads=None, seed=0, out: Path | None = None,
                  schema: dict | None = None, likelihood: bool = True, constrained: bool = True,
                  baseline_data=None) -> dict:
    """Score every artifact on the rows of `data`. The base model's `base_shots` solved examples come from
    `shots_data` (a file, or a list of examples such as a run's training split), else from `data`, whose
    rows they then leave out of every score (said on stderr and in `left_out`). With `constrained`, and a
    `schema` (extraction) or
    for classification, llama.cpp artifacts are also decoded constrained (the schema's grammar, or the
    label set): the `constrained` figures. `likelihood=False` skips classification's label-likelihood pass (the
    costly one: every label is scored for every row), leaving generation as the headline. With `baseline_data`
    (a file, or a list of examples: the training rows), a classical baseline trained on them is scored too
    (evaluate/baseline.py): a row of the results, and `baseline` says what it was, or why none applies."""
    from tinytitan.data.rows import DataSpec

    spec = spec or DataSpec()
    # references are spelled in the schema's key order, as the model was trained to write them
    examples = load_rows(data, spec, key_order=list((schema or {}).get("properties", {})))
    shots, left_out = [], 0
    if base_shots and any(a.is_base for a in artifacts):
        if shots_data:  # drawn at random: a file sorted by label must not give the base 3 of one label
            pool = load_rows(shots_data, spec) if isinstance(shots_data, (str, Path)) else list(shots_data)
            shots = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), min(base_shots, len(pool))))]
        else:  # drawn from the data and left out of every artifact's rows, so all score the same rows
            if base_shots >= len(examples):
                raise TinyTitanError(f"{data}: {len(examples)} rows leave none to score after {base_shots} "
                                     f"examples for the base model (lower --base-shots or pass --shots-data)")
            picked = set(random.Random(seed).sample(range(len(examples)), base_shots))
            shots = [examples[i] for i in sorted(picked)]
            examples = [e for i, e in enumerate(examples) if i not in picked]
            left_out = len(picked)
            print(f"{data}: {left_out} rows ({', '.join(e.source for e in shots)}) are the base model's solved "
                  f"examples and are left out of every artifact's score (--shots-data keeps every row)",
                  file=sys.stderr)
    examples = examples[:limit] if limit else examples
    task = metrics.detect_task([e.completion for e in examples]) if task == "auto" else task
    labels = sorted({e.completion for e in examples}) if task == "classification" else []
    grammars = _grammars(task, schema, labels, examples) if constrained else None
    results = []
    reference_topk, reference_vocab = None, None
    for artifact in artifacts:
        from tinytitan.progress import progress_bar

        row_shots = shots if artifact.is_base else []
        cache = _cache_path(artifact, examples, row_shots, task, labels, max_tokens, grammars, likelihood,
                            kl_reference)
        raw = _load_cached(cache)
        if raw is not None:
            print(f"eval {artifact.label}: its decoded rows are reused (the same files, rows and settings were "
                  f"evaluated before)", file=sys.stderr)
        else:
            engine = artifact.open(threads=threads)
            try:
                rows = _encode(engine, examples, row_shots)
                if kl_reference is not None and reference_topk is None:
                    # the reference sees the plain prompts; a few-shot base model is compared against that
                    reference_topk, reference_vocab = _reference(kl_reference, examples, threads)
                kl = None
                # a task vocabulary's ids are not the reference's: its KL is the export gate's (over kept tokens)
                if reference_topk is not None and engine.vocab_size == reference_vocab:
                    from tinytitan.evaluate.kl import KLAgainst

                    kl = KLAgainst(reference_topk)
                with progress_bar(f"eval {artifact.label}") as progress:
                    def track(what: str):  # one bar per pass over the rows
                        bar = progress.add_task(what, total=len(rows))
                        return lambda done: progress.update(bar, completed=done)

                    raw = _decode(engine, task, rows, labels, max_tokens, kl, track, grammars=grammars,
                                  likelihood=likelihood)
            finally:
                engine.close()
            _save_cached(cache, raw)
        figures, per_example = _figures(raw, task, examples, labels, likelihood)
        # headline and interval as fractions (chrF's 0-100 scale too)
        headline = figures["chrf"] / 100 if task == "generation" else figures[headline_of(task)] \
            if task != "classification" else figures["accuracy"]
        values = [v / 100 for v in per_example["chrf"]] if task == "generation" else per_example["correct"]
        # a task's own headline that is no mean over rows (Snips' mean slot F1) comes with its own interval
        low, high = figures.pop("ci95") if "ci95" in figures else metrics.bootstrap_ci(values, seed=seed)
        figures.update(artifact=artifact.label, **artifact.describe(), size_mb=artifact.size_bytes() / 2**20,
                       headline=headline_of(task), score=headline, ci95=[low, high],
                       few_shot=len(shots) if artifact.is_base else 0)
        results.append(figures)
        if out:
            write_examples(examples_file(out, artifact.label), examples, per_example)
    baseline = None
    if baseline_data is not None:
        from tinytitan.evaluate.baseline import score_baseline

        training = load_rows(baseline_data, spec, key_order=list((schema or {}).get("properties", {}))) \
            if isinstance(baseline_data, (str, Path)) else list(baseline_data)
        found = score_baseline(task, training, examples, seed=seed, out=out)
        if "none" in found:
            baseline = found
            print(f"classical baseline: none ({found['none']})", file=sys.stderr)
        else:
            results.append(found)
            baseline = {"artifact": found["artifact"], **found["baseline"]}
            print(f"classical baseline: {baseline['method']}, trained on {len(training):,} rows in "
                  f"{baseline['train_seconds']} s", file=sys.stderr)
    return {"data": data, "task": task, "rows": len(examples), "labels": len(labels), "results": results,
            "left_out": left_out, "baseline": baseline}


def headline_of(task: str) -> str:
    """The name of `task`'s headline figure."""
    if task in HEADLINE:
        return HEADLINE[task]
    from tinytitan.data.tasks import task_module

    return task_module(task).HEADLINE


def _grammars(task: str, schema: dict | None, labels: list[str], examples) -> list[str] | None:
    """Each row's grammar for constrained decoding: the schema's (made with the row's input when
    the schema takes words from it) for rows whose answers are JSON, or exactly one of the labels."""
    from tinytitan.data.grammar import answer_grammars

    inputs = [e.input_text for e in examples]
    json_answers = metrics.json_answers([e.completion for e in examples]) is not None
    if schema is not None and json_answers and task not in ("classification", "generation"):
        return answer_grammars(inputs, schema=schema)
    if task == "classification" and labels:
        return answer_grammars(inputs, labels=labels)
    return None


def _encode(engine, examples, shots) -> list[dict]:
    from tinytitan.model.chat_format import END_OF_TURN, Message, encode_chat

    history = []
    for shot in shots:
        history += [*shot.messages, Message("assistant", shot.completion)]
    end = engine.token_id(END_OF_TURN)
    rows = []
    for example in examples:
        prompt = encode_chat(engine, [*history, *example.messages])
        completion = engine.tokenize(example.completion) + [end]
        rows.append({"prompt": prompt, "ids": prompt + completion, "first": len(prompt),
                     "budget": 2 * len(completion) + 8})
    return rows


def _decode(engine, task, rows, labels, max_tokens, kl, track, grammars=None, likelihood=True) -> dict:
    """What an artifact does on the rows, before any metric: its outputs (free and constrained), label
    picks, the reference completions' log-likelihood, the KL against the reference, the seconds taken.
    `track(what)` gives the callback that reports how many rows one pass over them has done."""
    started = time.perf_counter()
    nll, tokens = 0.0, 0
    outputs, label_picks = [], []
    prompts = [r["prompt"] for r in rows]
    budgets = [min(max_tokens, r["budget"]) for r in rows]
    batched = constrained = None
    if hasattr(engine, "generate_greedy_batch"):  # many rows decoded at once
        batched = engine.generate_greedy_batch(prompts, max_tokens=max(budgets), budgets=budgets,
                                               on_done=track("rows decoded"))
        if grammars is not None and engine.name == "llama":
            constrained = engine.generate_greedy_batch(prompts, max_tokens=max(budgets), budgets=budgets,
                                                       grammars=grammars, on_done=track("rows constrained"))
    from tinytitan.model.chat_format import END_OF_TURN
    from tinytitan.model.engines import SamplingParams

    end = engine.token_id(END_OF_TURN)
    label_ids = [engine.tokenize(label) + [end] for label in labels]
    on_row = track("rows scored")
    for index, row in enumerate(rows):
        if kl is not None:  # one pass gives the reference completion's likelihood and the KL
            import torch

            logp = torch.log_softmax(torch.from_numpy(engine.score(row["ids"][:-1], row["first"] - 1)), dim=-1)
            kl.add(index, logp)
            reference_logp = logp.gather(1, torch.tensor(row["ids"][row["first"]:])[:, None]).double().numpy()
        else:
            reference_logp = engine.target_logprobs(row["ids"], row["first"] - 1)
        nll -= float(reference_logp.sum())
        tokens += len(reference_logp)
        if batched is not None:
            outputs.append(batched[index])
        else:
            outputs.append(engine.generate(row["prompt"], SamplingParams(max_tokens=budgets[index])).text)
        if task == "classification" and likelihood:
            sums = engine.logprob_sums([(row["prompt"] + ids, len(row["prompt"])) for ids in label_ids])
            label_picks.append(labels[int(np.argmax(sums))])
        on_row(index + 1)
    return {"outputs": outputs, "constrained": constrained, "label_picks": label_picks, "nll": nll, "tokens": tokens,
            "kl": kl.result() if kl is not None else None, "seconds": round(time.perf_counter() - started, 1)}


def _figures(raw: dict, task: str, examples, labels, likelihood: bool) -> tuple[dict, dict]:
    """The task's metrics of one artifact's decoded rows: (figures, per-example lists)."""
    references = [e.completion for e in examples]
    outputs, constrained = raw["outputs"], raw["constrained"]
    figures: dict = {"reference_perplexity": math.exp(raw["nll"] / max(raw["tokens"], 1)), "seconds": raw["seconds"],
                     "answer_tokens": raw["tokens"] / max(len(examples), 1)}  # a reference answer's, end of turn too
    if raw["kl"] is not None:
        figures["kl"] = raw["kl"]
    per_example: dict = {"output": outputs}
    if constrained is not None:
        per_example["constrained_output"] = constrained
    found, correct = task_metrics(task, outputs, references, examples)
    per_example.update(correct)
    if constrained is not None:
        found_constrained, verdicts = task_metrics(task, constrained, references, examples)
        if "ci95" not in found_constrained:
            found_constrained["ci95"] = list(metrics.bootstrap_ci(verdicts["correct"]))
        figures["constrained"] = found_constrained
        per_example["constrained_correct"] = verdicts["correct"]
    if task == "classification":
        found = {"generation": found, "accuracy": found["accuracy"], "scored_by": "generation"}
        if likelihood:
            by_likelihood = metrics.classification_metrics(raw["label_picks"], references)
            per_example.update(correct=by_likelihood.pop("per_example"), label=raw["label_picks"])
            found.update(likelihood=by_likelihood, accuracy=by_likelihood["accuracy"], scored_by="likelihood")
    return {**figures, **found}, per_example


# what a cached evaluation depends on besides its inputs: bump when decoding changes what it writes
DECODING = 2  # 2: decoded by model/engines/runtime.py


def _cache_path(artifact, examples, shots, task, labels, max_tokens, grammars, likelihood, kl_reference) -> Path:
    """Where one artifact's decoded rows are cached (`$TINYTITAN_HOME/evals/`): a hash of the artifact's
    files, the exact rows, shots, grammars and settings. `eval`, `report` and `run` share it, so an
    artifact scored once on the same rows is never decoded again; metrics are always computed afresh."""
    import hashlib

    from tinytitan.model.registry import home

    rows = [[e.key, e.completion] for e in examples]
    key = [DECODING, artifact.identity(), rows, [[s.key, s.completion] for s in shots], task, labels, max_tokens,
           grammars, likelihood, kl_reference.identity() if kl_reference is not None else None]
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()[:32]
    return home() / "evals" / f"{digest}.json"


def _load_cached(path: Path) -> dict | None:
    return read_json(path)  # none yet, or a file cut short: decode again


def _save_cached(path: Path, raw: dict) -> None:
    write_json(path, raw, indent=None, ensure_ascii=False)


def task_metrics(task: str, outputs: list[str], references: list[str], examples) -> tuple[dict, dict]:
    """(figures, per-example lists) of one set of outputs."""
    if task == "extraction":
        found = metrics.extraction_metrics(outputs, references)
        return found, {"correct": found.pop("per_example")}
    if task == "classification":
        found = metrics.classification_metrics([o.strip() for o in outputs], references)
        return found, {"correct": found.pop("per_example")}
    if task == "generation":
        found = metrics.generation_metrics(outputs, references)
        return found, {"chrf": found.pop("per_example")}
    from tinytitan.data.tasks import task_module

    module = task_module(task)
    found = module.score(outputs, examples)
    return found, {"correct": found.pop("per_example"), **{k: found.pop(k) for k in module.PER_EXAMPLE}}


def _reference(artifact, examples, threads) -> tuple[dict, int]:
    """The KL reference's top-k on the rows (tokenized by itself), and its vocabulary size."""
    from tinytitan.evaluate.kl import reference_topk
    from tinytitan.progress import progress_bar

    engine = artifact.open(threads=threads)
    try:
        rows = _encode(engine, examples, [])
        with progress_bar(f"KL reference {artifact.label}") as progress:
            bar = progress.add_task("rows", total=len(rows))
            return reference_topk(engine, [(r["ids"], r["first"]) for r in rows], artifact.identity(),
                                  on_row=lambda done, total: progress.update(bar, completed=done)), engine.vocab_size
    finally:
        engine.close()


def write_examples(path: Path, examples, per_example: dict) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as file:
            for index, example in enumerate(examples):
                record = {"source": example.source, "prompt": example.messages[-1].content,
                          "reference": example.completion,
                          **{key: values[index] for key, values in per_example.items()}}
                file.write(json.dumps(record, ensure_ascii=False) + "\n")

    atomic_file(path, write)


def examples_file(folder: Path, label: str) -> Path:
    """Where the per-example outputs of the artifact labelled `label` are written in `folder`."""
    name = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in label).strip("_")
    return folder / f"{name}.jsonl"


# ---------------------------------------------------------------------------------------------
# standard benchmarks
