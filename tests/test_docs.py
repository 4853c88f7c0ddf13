"""Docs that run: the CLI reference is the CLI's own --help, and the README names every verb."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT
from tinytitan.cli import VERBS


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text() == module.render(), \
        "docs/cli.md is stale: run `python tools/gen_cli_docs.py`"


def test_readme_cli_reference_matches_help():
    """The README's CLI reference is every verb's --help: editing the CLI without regenerating fails here."""
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    assert module.render_readme_block() in readme, "README.md's CLI reference is stale: run `python tools/gen_cli_docs.py`"


def test_readme_names_the_two_commands_and_every_verb():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for verb in VERBS:
        assert f"tinytitan {verb}" in readme, verb
