"""Architecture rules checked on the source: every concept lives in one place, so no module reaches
into another's underscore-private names (give the thing a public name where it lives instead)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinytitan"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts[:len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, what) for each use in `source` (the text of tinytitan module `module`) of another tinytitan
    module's private name: `from tinytitan.x import _y`, or `x._y` where `x` was bound by
    `import tinytitan.x [as x]` or `from tinytitan import x`. Dunder names are public."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the tinytitan module (or name) it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tinytitan":
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else "tinytitan"
        elif isinstance(node, ast.ImportFrom):
            source_module = _resolve(node, module, is_package)
            if source_module.split(".")[0] != "tinytitan":
                continue
            for alias in node.names:
                if _private(alias.name) and source_module != module:
                    found.append((node.lineno, f"from {source_module} import {alias.name}"))
                bound[alias.asname or alias.name] = f"{source_module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound and bound[root.id] != module:
                found.append((node.lineno, f"{ast.unparse(node)} ({root.id} is {bound[root.id]})"))
    return sorted(found)


def test_no_module_uses_another_modules_private_names():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        is_package = path.name == "__init__.py"
        module = ".".join((relative.parent if is_package else relative.with_suffix("")).parts)
        for line, what in private_uses(path.read_text(encoding="utf-8"), module, is_package):
            problems.append(f"{relative}:{line}: {what}")
    assert not problems, "private names used across modules (give them a public name where they live):\n" + \
        "\n".join(problems)


def test_private_uses_catches_each_form():
    source = "\n".join([
        "import json",
        "import tinytitan.evaluate.bench",
        "import tinytitan.train.config as config",
        "from tinytitan import evaluate",
        "from tinytitan.data.structured import _json_type, json_type, __version__",
        "from ._own import _helper",
        "from . import _sibling",
        "def f(self):",
        "    tinytitan.evaluate.bench._int_list('1', '--x')",
        "    config._coerce('a', 1, 'here')",
        "    evaluate._file_name('x')",
        "    evaluate.examples_file",
        "    self._state, json._default_encoder, evaluate.__name__",
    ])
    found = private_uses(source, "tinytitan.serve.api")
    assert found == [
        (5, "from tinytitan.data.structured import _json_type"),
        (6, "from tinytitan.serve._own import _helper"),
        (7, "from tinytitan.serve import _sibling"),
        (9, "tinytitan.evaluate.bench._int_list (tinytitan is tinytitan)"),
        (10, "config._coerce (config is tinytitan.train.config)"),
        (11, "evaluate._file_name (evaluate is tinytitan.evaluate)"),
    ]
    # a module's own private names, and relative imports from within a package's __init__, are its own
    assert private_uses("from tinytitan.evaluate.kl import _x\nfrom . import _y", "tinytitan.evaluate.kl") == [
        (2, "from tinytitan.evaluate import _y")]
    assert private_uses("from .llama import _z", "tinytitan.model.engines", is_package=True) == [
        (1, "from tinytitan.model.engines.llama import _z")]


def test_the_package_map_names_every_module():
    """docs/architecture.md's package map is how a newcomer finds a module: it must name each one, in its package."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = text[text.index("## The package map"):]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent != PACKAGE:
            name = path.parent.name + "/"  # a package
        elif path.name in ("__init__.py", "__main__.py"):
            continue
        else:
            name = path.name
        if name not in tree:
            missing.append(str(path.relative_to(PACKAGE.parent)))
    assert not missing, f"docs/architecture.md's package map does not name: {', '.join(missing)}"



def test_no_dict_literal_repeats_a_key():
    """A repeated key in a literal silently drops the first value (a stage key once lost its inputs that way)."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                repeated = sorted({k for k in keys if keys.count(k) > 1}, key=str)
                if repeated:
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {repeated}")
    assert not problems, "\n".join(problems)
