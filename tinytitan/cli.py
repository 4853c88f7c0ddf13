"""`tinytitan VERB ...`: routes each verb to its module, imported only when it runs.

No logic lives here, so `tinytitan --help` answers without importing torch or llama.cpp.
Each verb module has `add_arguments(parser)` and `run(args)`; heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tinytitan import __version__

# verb -> (module, one-line summary shown by `tinytitan --help`)
VERBS = {
    "info": ("tinytitan.model.info", "Describe a model file: architecture, size, per-tensor quant types."),
    "generate": ("tinytitan.serve.generate", "Continue a prompt (streaming), with the torch or llama engine."),
    "chat": ("tinytitan.serve.chat", "Interactive chat in the Gemma turn format (reads piped stdin too)."),
    "perplexity": ("tinytitan.evaluate.perplexity", "Perplexity of a text file, llama.cpp's convention."),
    "parity": ("tinytitan.evaluate.parity", "Compare the torch and llama engines: top-1, KL, perplexity."),
    "data": ("tinytitan.data.check", "Check a dataset before training: bad rows, lengths, labels."),
    "prune": ("tinytitan.shrink.prune", "Drop a Gemma 3's least important layers, measured on task rows: a smaller student."),
    "trim": ("tinytitan.shrink.trim", "Prune a GGUF's vocabulary to a task's tokens: smaller, faster, same tokens on the task."),
    "finetune": ("tinytitan.train.finetune", "Fine-tune (LoRA or full) on a dataset, with checkpoints and resume."),
    "distill": ("tinytitan.train.distill", "A teacher teaches a smaller student: its labels for unlabelled inputs, its logits."),
    "export": ("tinytitan.export.export", "Export a run: merged/quantized GGUF, GGUF adapter, HF, PEFT, Ollama; gated."),
    "eval": ("tinytitan.evaluate.eval", "Score artifacts side by side: task metrics with CIs, KL, standard benchmarks."),
    "bench": ("tinytitan.evaluate.bench", "Speed, memory, context scaling and energy per conversation of GGUF artifacts."),
    "report": ("tinytitan.report.report", "One Markdown + HTML report of a run: every artifact's quality, speed, energy."),
    "run": ("tinytitan.pipeline.run", "The whole job from a recipe: data check, fine-tune, export, evaluate, report, serve line."),
    "serve": ("tinytitan.serve.serve", "OpenAI-compatible local server: a task fleet, JSON schemas, limits, API key."),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage dump): `tinytitan VERB: error: ... (see --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tinytitan",
        description="Turn Gemma 3 270M into a task specialist on a CPU, and ship it to the edge.",
    )
    parser.add_argument("--version", action="version", version=f"tinytitan {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, summary) in VERBS.items():
        sub.add_parser(verb, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in VERBS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            sys.exit(0)
        parser.parse_args(argv)  # prints --help/--version, or a clear "invalid choice" error
        return
    verb, rest = argv[0], argv[1:]
    module = importlib.import_module(VERBS[verb][0])
    parser = Parser(prog=f"tinytitan {verb}", description=VERBS[verb][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    sys.exit(run_verb(module.run, args))


def run_verb(run, args) -> int:
    """Run a verb; user errors become one line on stderr and exit status 1."""
    from tinytitan.errors import TinyTitanError

    try:
        run(args)
    except TinyTitanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tinytitan ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
