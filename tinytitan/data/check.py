"""`tinytitan data check FILE`: is this dataset fit to train on? And `prepare_data`, which
fine-tuning uses to read, check, split and tokenize exactly the same way.

The report: rows read, rows rejected with `file:line: reason`, token-length percentiles of prompt
and completion, how many rows the max length would cut, and the label or JSON-field distribution.
Strict by default: any bad row fails. `--skip-bad` skips and counts bad rows, and still fails when
more than `--max-bad-fraction` of them are bad. Zero usable rows always fails, and a row whose
completion the max length would cut away entirely is a bad row, never a silent zero-loss row.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from tinytitan import options
from tinytitan.data.rows import DataSpec, load_examples
from tinytitan.data.examples import LoadReport, Rejected
from tinytitan.data.splits import leakage, split_examples
from tinytitan.data.tokens import TokenizedExample, tokenize_examples
from tinytitan.errors import TinyTitanError
from tinytitan.files import sha256_of
from tinytitan.evaluate.metrics import detect_task, json_answers
from tinytitan.model.registry import DEFAULT_MODEL

MAX_LISTED = 20


@dataclass
class Prepared:
    splits: dict[str, list[TokenizedExample]]
    reports: list[LoadReport]
    rejected: list[Rejected]
    rows: int
    leakage: dict[str, int]
    split_mode: str  # "files" | "hash" (one file split three ways) | "hash-val" (val split off train; test file)
    stats: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> dict:
        """What the run was trained on: file hashes and the token ids of every split."""
        digest = {name: hashlib.sha256(json.dumps([e.ids for e in split]).encode()).hexdigest()
                  for name, split in self.splits.items()}
        files = {str(r.path): sha256_of(r.path) for r in self.reports}
        return {"files": files, "split_mode": self.split_mode, "rows": self.rows,
                "counts": {k: len(v) for k, v in self.splits.items()}, "tokens_sha256": digest,
                "rejected": len(self.rejected)}


def spec_from(config) -> DataSpec:
    return DataSpec(format=config.format, input_column=config.input_column or None,
                    output_columns=tuple(config.output_columns), input_template=config.input_template or None,
                    columns=tuple(config.columns), system=config.system or None,
                    encoding=config.encoding)


def prepare_data(config, tokenizer, strict_errors: bool = True) -> Prepared:
    """Read, check, split and tokenize per `config` (a FinetuneConfig or anything with its data keys)."""
    reports, raw, mode = split_rows(config)
    rejected = [r for report in reports for r in report.rejected]
    splits = {}
    for name, examples in raw.items():
        tokenized, cut = tokenize_examples(tokenizer, examples, config.max_length)
        splits[name] = tokenized
        rejected += cut
    rows = sum(r.rows for r in reports)
    prepared = Prepared(splits, reports, rejected, rows, leakage(raw), mode)
    prepared.stats = statistics(prepared, reports, config.max_length)
    if strict_errors:
        enforce(prepared, config.skip_bad, config.max_bad_fraction)
    return prepared


def split_rows(config) -> tuple[list[LoadReport], dict[str, list], str]:
    """(the files' load reports, the train/val/test examples, how they were split) per `config`."""
    spec = spec_from(config)
    reports = [load_examples(config.train, spec)]
    order = reports[0].json_keys  # validation and test targets are spelled in the training file's key order
    if config.val:
        reports.append(load_examples(config.val, spec, key_order=order))
        if config.test:
            reports.append(load_examples(config.test, spec, duplicates="keep", key_order=order))  # scored as published
        raw = {"train": reports[0].examples, "val": reports[1].examples,
               "test": reports[2].examples if config.test else []}
        mode = "files"
    elif config.test:  # a published test set and one training file: validation is split off the training file
        reports.append(load_examples(config.test, spec, duplicates="keep", key_order=order))
        train, val, _ = config.split
        if train <= 0 or val <= 0:
            raise TinyTitanError(f"split {list(config.split)}: with a test file, the train and val shares must be > 0")
        parts = split_examples(reports[0].examples, (train / (train + val), val / (train + val), 0.0), config.seed)
        raw = {"train": parts["train"], "val": parts["val"], "test": reports[1].examples}
        mode = "hash-val"
    else:
        raw = split_examples(reports[0].examples, config.split, config.seed)
        mode = "hash"
    if config.max_rows:
        raw["train"] = raw["train"][:config.max_rows]
    return reports, raw, mode


def enforce(prepared: Prepared, skip_bad: bool, max_bad_fraction: float,
            hint: str = "see them all with `tinytitan data check`, fix them, or pass --skip-bad") -> None:
    usable = sum(len(s) for s in prepared.splits.values())
    bad = len(prepared.rejected)
    first = f" (first: {prepared.rejected[0]})" if bad else ""
    if not prepared.splits["train"]:
        raise TinyTitanError(f"no usable training rows: {prepared.rows} read, {bad} rejected{first}")
    if bad and not skip_bad:
        raise TinyTitanError(f"{bad} bad row{'s' if bad > 1 else ''}{first}; {hint}")
    if bad and bad / max(prepared.rows, 1) > max_bad_fraction:
        raise TinyTitanError(f"{bad} of {prepared.rows} rows are bad ({bad / prepared.rows:.1%}), more than "
                             f"--max-bad-fraction {max_bad_fraction:.1%}{first}")
    if not usable:
        raise TinyTitanError("no usable rows")


def statistics(prepared: Prepared, reports: list[LoadReport], max_length: int) -> dict:
    examples = [e for split in prepared.splits.values() for e in split]
    prompt = np.array([e.completion_start for e in examples]) if examples else np.zeros(1)
    completion = np.array([e.n_completion for e in examples]) if examples else np.zeros(1)

    def pct(values):
        return {"p50": int(np.percentile(values, 50)), "p95": int(np.percentile(values, 95)), "max": int(values.max())}

    completions = [e.completion for r in reports for e in r.examples]
    json_keys = reports[0].json_keys
    stats = {
        "rows": prepared.rows,
        "usable": len(examples),
        "rejected": len(prepared.rejected),
        "splits": {k: len(v) for k, v in prepared.splits.items()},
        "split_mode": prepared.split_mode,
        "leakage": prepared.leakage,
        "conflicting_prompts": sum(r.conflicts for r in reports),
        "repeated_test_rows": sum(r.repeats for r in reports),
        "shape": reports[0].shape,
        "prompt_tokens": pct(prompt),
        "completion_tokens": pct(completion),
        "max_length": max_length,
        "truncated": sum(e.truncated for e in examples),
        "tokens": int(prompt.sum() + completion.sum()) if examples else 0,
    }
    if json_keys:  # JSON objects among the answers: what each field holds
        stats["fields"] = field_distribution(completions, json_keys)
    elif detect_task(completions) == "classification":  # as `eval` decides it
        stats["labels"] = dict(Counter(completions).most_common())
    return stats


def field_distribution(completions: list[str], keys: list[str]) -> dict:
    present: Counter = Counter()
    values: dict[str, Counter] = {k: Counter() for k in keys}
    for text in completions:
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a plain-text completion in a file of JSON ones: no fields to count
        if not isinstance(record, dict):
            continue
        for key in keys:
            value = record.get(key)
            if value not in (None, "", [], {}):
                present[key] += 1
                values[key][json.dumps(value, ensure_ascii=False)] += 1
    total = max(len(completions), 1)
    return {k: {"filled": round(present[k] / total, 4), "distinct": len(values[k]),
                "top": [v for v, _ in values[k].most_common(5)]} for k in keys}


# ---------------------------------------------------------------------------------------------
# the verb


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="check a dataset: bad rows, token lengths, labels")
    check.add_argument("file", help="training data: JSONL, CSV or TSV")
    check.add_argument("--val", default="", help="a separate validation file (else FILE is split)")
    check.add_argument("--test", default="", help="a separate test file")
    check.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions for one file")
    options.add_data_spec(check)
    check.add_argument("--max-length", type=int, default=512, help="tokens per example (prompt + completion)")
    check.add_argument("--model", "-m", default=DEFAULT_MODEL, help="whose tokenizer counts the tokens")
    check.add_argument("--skip-bad", action="store_true", help="skip bad rows instead of failing")
    check.add_argument("--max-bad-fraction", type=float, default=0.05, help="fail above this share of bad rows")
    check.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    check.add_argument("--unlabelled", default="", metavar="FILE",
                       help="also check a file of inputs without answers, for `tinytitan distill`")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    schema = sub.add_parser("schema", help="the JSON schema of a file's JSON answers, as `run` infers it")
    schema.add_argument("file", help="training rows with JSON answers: JSONL, CSV or TSV")
    options.add_data_spec(schema)
    schema.add_argument("--out", "-o", default=None, help="write it here (default: print it)")


def run(args) -> None:
    if args.action == "schema":
        return write_schema(args)
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer

    try:
        split = [float(x) for x in args.split.split(",")]
    except ValueError:
        raise TinyTitanError(f"--split: expected three fractions like 0.8,0.1,0.1, not {args.split!r}") from None
    config = FinetuneConfig(
        train=args.file, val=args.val, test=args.test, split=split, format=args.format,
        input_column=args.input_column, input_template=args.input_template, system=args.system,
        output_columns=[c for c in args.output_columns.split(",") if c],
        columns=[c for c in args.columns.split(",") if c], max_length=args.max_length, encoding=args.encoding,
        skip_bad=args.skip_bad, max_bad_fraction=args.max_bad_fraction, seed=args.seed)
    tokenizer = load_tokenizer(resolve(args.model))
    prepared = prepare_data(config, tokenizer, strict_errors=False)
    stats = prepared.stats
    if args.unlabelled:  # inputs only: a row with an answer is refused (data/unlabelled.py)
        from tinytitan.data.unlabelled import read_unlabelled

        unlabelled = read_unlabelled(args.unlabelled, args.input_column or None, args.encoding)
        known = {e.input_text for report in prepared.reports for e in report.examples}
        stats["unlabelled"] = {"file": args.unlabelled, "inputs": len(unlabelled.inputs),
                               "repeats": unlabelled.repeats,
                               "already_labelled": sum(text in known for text in unlabelled.inputs)}
    if args.json:
        print(json.dumps({**stats, "errors": [str(r) for r in prepared.rejected]}))
    else:
        print_report(prepared)
        if args.unlabelled:
            u = stats["unlabelled"]
            print(f"unlabelled {u['file']}: {u['inputs']:,} distinct inputs ({u['repeats']} repeats; "
                  f"{u['already_labelled']} already labelled rows)")
    enforce(prepared, args.skip_bad, args.max_bad_fraction, hint="fix them or pass --skip-bad")


def write_schema(args) -> None:
    """`tinytitan data schema FILE`: the schema `tinytitan run` would infer from these training rows (fields,
    types, optional fields, enums, `x-input-words`), for `eval --schema`, `report --schema` and serving."""
    from tinytitan.data.schema import infer_schema
    from tinytitan.data.grammar import schema_to_grammar

    report = load_examples(args.file, options.data_spec_from(args), duplicates="keep")  # a repeat changes nothing here
    if report.rejected:
        raise TinyTitanError(f"{report.rejected[0]} ({len(report.rejected)} bad rows; `tinytitan data check "
                             f"{args.file}` lists them)")
    answers = json_answers([e.completion for e in report.examples])
    if not answers or len({type(a) for a in answers}) > 1:
        raise TinyTitanError(f"{args.file}: a schema needs every answer to be a JSON object (or every one a list)")
    schema = infer_schema(answers, inputs=[e.input_text for e in report.examples])
    schema_to_grammar(schema)  # enforceable, as `run` requires
    text = json.dumps(schema, indent=1, ensure_ascii=False)
    if args.out:
        from tinytitan.files import write_text

        write_text(Path(args.out), text + "\n")
        print(f"wrote {args.out}: {len(schema.get('properties', {}))} fields", file=sys.stderr)
    else:
        print(text)


def print_report(prepared: Prepared) -> None:
    from rich.console import Console
    from rich.markup import escape

    # no wrapping at the terminal's width (a value cut in two reads as two), and user data is text, not markup
    console = Console(highlight=False, soft_wrap=True)
    s = prepared.stats
    console.print(f"[bold]rows[/bold] {s['rows']} read, {s['usable']} usable, {s['rejected']} rejected "
                  f"({s['shape']})")
    for rejected in prepared.rejected[:MAX_LISTED]:
        console.print(f"  [red]{escape(str(rejected))}[/red]")
    if len(prepared.rejected) > MAX_LISTED:
        console.print(f"  ... and {len(prepared.rejected) - MAX_LISTED} more (--json lists all)")
    how = {"hash": " (by hash of the input)", "files": " (from files)",
           "hash-val": " (validation split off the training file by hash of the input; test from its file)"}
    console.print("[bold]splits[/bold] " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + how[s["split_mode"]])
    if s["leakage"]:
        console.print("[yellow]leakage[/yellow] " + ", ".join(f"{k}: {v} shared inputs" for k, v in s["leakage"].items()))
    if s.get("repeated_test_rows"):
        console.print(f"{s['repeated_test_rows']} test rows repeat an earlier one (kept: a test set is scored as given)")
    if s["conflicting_prompts"]:
        console.print(f"[yellow]{s['conflicting_prompts']} inputs appear with different outputs[/yellow]")
    for name in ("prompt_tokens", "completion_tokens"):
        p = s[name]
        console.print(f"[bold]{name.replace('_', ' ')}[/bold] p50 {p['p50']}, p95 {p['p95']}, max {p['max']}")
    console.print(f"[bold]max length[/bold] {s['max_length']}: {s['truncated']} rows cut (completion shortened)")
    if "labels" in s:
        top = list(s["labels"].items())[:15]
        console.print(f"[bold]labels[/bold] {len(s['labels'])} distinct: " +
                      ", ".join(f"{escape(k[:30])} {v}" for k, v in top) + (" ..." if len(s["labels"]) > 15 else ""))
    for key, info in s.get("fields", {}).items():
        console.print(f"[bold]field {escape(key)}[/bold] filled {info['filled']:.0%}, {info['distinct']} distinct, "
                      f"e.g. {escape(', '.join(info['top'][:3]))}")
