"""Write docs/cli.md, the command-line reference, from the CLI's own --help output (CI checks that it is
current: tests/test_docs.py). The reference lives there only; the README links to it.

    python tools/gen_cli_docs.py          # rewrite docs/cli.md
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
SUBCOMMANDS = {"data": ("check", "schema")}


def help_text(argv: list[str]) -> str:
    from tinytitan.cli import main

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix the width for a stable file
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
    return buffer.getvalue().rstrip() + "\n"


def render() -> str:
    from tinytitan.cli import VERBS

    parts = ["# tinytitan command-line reference\n",
             "Generated from `--help` by `python tools/gen_cli_docs.py`; CI checks that it is current.\n",
             "```text\n$ tinytitan --help\n" + help_text([]) + "```\n"]
    for verb in VERBS:
        parts.append(f"## tinytitan {verb}\n\n```text\n$ tinytitan {verb} --help\n{help_text([verb])}```\n")
        for action in SUBCOMMANDS.get(verb, ()):
            parts.append(f"```text\n$ tinytitan {verb} {action} --help\n{help_text([verb, action])}```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC.relative_to(ROOT)}")
