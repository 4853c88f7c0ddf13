"""Command-line options shared by several verbs, declared once."""

from __future__ import annotations

import argparse

from tinytitan.model.registry import DEFAULT_MODEL


def add_model(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    help_text = f"model: {DEFAULT_MODEL!r} (the default, embedded) or a path to a GGUF file"
    if positional:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=help_text)
    else:
        parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=help_text)


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", "-e", choices=("llama", "torch"), default="llama",
                        help="runtime: llama (llama.cpp, fast) or torch (PyTorch, the training model)")
    parser.add_argument("--threads", "-t", type=positive_int, default=None,
                        help="CPU threads (default: all cores)")
    parser.add_argument("--ctx", type=positive_int, default=4096, help="context size in tokens (llama engine)")
    parser.add_argument("--lora", default=None, metavar="ADAPTER.gguf",
                        help="apply a GGUF LoRA adapter to the model (llama engine)")


def add_sampling(parser: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", "-n", type=positive_int, default=max_tokens, help="tokens to generate at most")
    group.add_argument("--temperature", "--temp", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with this mass (1 = off)")
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when this text appears (repeatable)")


def sampling_from(args):
    from tinytitan.model.engines import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))


def add_data_spec(parser: argparse.ArgumentParser) -> None:
    """How to read a CSV/TSV dataset (JSONL rows describe themselves)."""
    group = parser.add_argument_group("data columns (CSV/TSV)")
    group.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv", "tsv"))
    group.add_argument("--input-column", default="", help="the input column")
    group.add_argument("--output-columns", default="", help="output column(s), comma-separated")
    group.add_argument("--input-template", default="", help='input built from columns, e.g. "{title}: {body}"')
    group.add_argument("--columns", default="", help="the column names of a file without a header")
    group.add_argument("--system", default="", help="system prompt for rows that have none")
    group.add_argument("--encoding", default="utf-8",
                       help="the files' text encoding: any Python codec (latin-1, cp1252, utf-16...) or cesu-8 "
                            "(default: utf-8)")


def data_spec_from(args):
    from tinytitan.data.rows import DataSpec

    return DataSpec(format=args.format, input_column=args.input_column or None,
                    output_columns=tuple(c for c in args.output_columns.split(",") if c),
                    input_template=args.input_template or None,
                    columns=tuple(c for c in args.columns.split(",") if c), system=args.system or None,
                    encoding=args.encoding)


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _whole_number_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number_at_least(text, 0)


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {value}")
    return value
