"""Docs that run: the CLI reference is the CLI's own --help, the README's commands use real verbs and
flags, the README names every verb, and no relative link is broken."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT
from tinytitan.cli import VERBS


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text() == module.render(), \
        "docs/cli.md is stale: run `python tools/gen_cli_docs.py`"


def readme_commands() -> list[list[str]]:
    """Every `tinytitan ...` command in the README's ```bash blocks, as its words: continuation lines
    joined, comments dropped, pipelines and `&&` chains cut apart, `VAR=value` prefixes skipped."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", readme, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for word in [*lexer, ";"]:
                if word in ("|", "||", "&&", ";", "&"):
                    while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                        command.pop(0)
                    if command[:1] == ["tinytitan"]:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


@functools.cache
def verb_help(*words: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tinytitan", *words, "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert done.returncode == 0, f"tinytitan {' '.join(words)} --help: {done.stderr.strip()}"
    return done.stdout


def test_readme_commands_use_real_verbs_and_flags():
    """Every `tinytitan` command the README shows names a verb that exists and only flags its --help lists."""
    commands = readme_commands()
    assert len(commands) > 20, commands  # the parser found the README's commands
    for command in commands:
        shown = " ".join(command)
        assert len(command) > 1 and command[1] in VERBS, f"README: unknown verb in `{shown}`"
        words = command[1:3] if command[1] == "data" else command[1:2]  # `data check`: a verb of two words
        text = verb_help(*words)
        for word in command[len(words) + 1:]:
            if re.match(r"--?[A-Za-z]", word):  # --flag, --flag=value, -o
                flag = word.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
                    f"README: `{shown}` uses {flag}, which `tinytitan {' '.join(words)} --help` does not list"


def test_relative_links_point_to_files():
    """Every relative link in README.md and docs/*.md names a file that exists."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a web address, or a heading of the same page
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_readme_names_the_two_commands_and_every_verb():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for verb in VERBS:
        assert f"tinytitan {verb}" in readme, verb
