"""tinytitan: turn Gemma 3 270M into a task specialist on a CPU, and ship it to the edge.

The command line is `tinytitan VERB` (`cli.py`); the package map is docs/architecture.md. From Python:

    import tinytitan

    summary = tinytitan.run("recipes/ingredients.toml")   # the whole job, as `tinytitan run` does it
    specialist = tinytitan.load("runs/ingredients")       # its recommended artifact, as a function
    specialist("2 cups chopped onions")                   # {"name": "onions", ...}

`load`, `Specialist` and `run` are imported on first use, so `import tinytitan` (and `tinytitan --help`)
stays instant.
"""

__version__ = "0.1.0"

# name -> (module, attribute): the Python API, imported when first used
_API = {
    "load": ("tinytitan.specialist", "load"),
    "Specialist": ("tinytitan.specialist", "Specialist"),
    "run": ("tinytitan.pipeline.run", "run_recipe"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'tinytitan' has no attribute {name!r}")
    import importlib

    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
