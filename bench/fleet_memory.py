"""Memory of a fleet of task specialists served together, three ways: every adapter on the one full
base; each adapter on its own trimmed base (docs/pruning.md); every adapter on one base trimmed to
the union of the tasks' tokens.

Each configuration is a `tinytitan serve --fleet` subprocess (loopback, `--slots` slots); once it is
up, every task answers one request (so each slot has run each model), then the server's resident
memory (VmRSS) and the files it serves are recorded, and it is stopped.

    python bench/fleet_memory.py --task NAME=ADAPTER.gguf:TRIMMED_BASE.gguf [--task ...] \\
        --union UNION_BASE.gguf [--slots 2] [--ctx 4096]

The last line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from serve_load import rss_mb, start_server  # bench/ is the script's folder, on sys.path


def serve_and_measure(fleet: dict[str, tuple[str, str]], slots: int, ctx: int) -> dict:
    """fleet: task -> (base GGUF or "base", adapter GGUF). Returns RSS and file sizes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.toml"
        path.write_text("".join(f'[tasks.{name}]\nmodel = "{base}"\nadapter = "{adapter}"\ntemperature = 0.0\n'
                                for name, (base, adapter) in fleet.items()))
        server, url = start_server("--fleet", str(path), "--slots", str(slots), "--ctx", str(ctx))
        try:
            loaded = rss_mb(server.pid)
            for name in fleet:
                body = json.dumps({"model": name, "messages": [{"role": "user", "content": "2 cups flour"}],
                                   "max_tokens": 8}).encode()
                request = urllib.request.Request(url + "/v1/chat/completions", body,
                                                 {"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=120).read()
            answered = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
    bases = {base for base, _ in fleet.values()}
    files = sum(_size(b) for b in bases) + sum(_size(a) for _, a in fleet.values())
    return {"bases": len(bases), "model_files_mb": round(files / 2**20, 1), "rss_after_load_mb": round(loaded, 1),
            "rss_after_requests_mb": round(answered, 1)}


def _size(path: str) -> int:
    if path == "base":
        from tinytitan.model.registry import default_model_path

        return default_model_path().stat().st_size
    return Path(path).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", required=True, metavar="NAME=ADAPTER:TRIMMED_BASE")
    parser.add_argument("--union", required=True, help="one base trimmed to the union of the tasks' rows")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    tasks = {}
    for text in args.task:
        name, _, files = text.partition("=")
        adapter, _, trimmed = files.partition(":")
        if not (name and adapter and trimmed):
            parser.error(f"--task {text!r}: expected NAME=ADAPTER.gguf:TRIMMED_BASE.gguf")
        tasks[name] = (str(Path(adapter).resolve()), str(Path(trimmed).resolve()))
    ways = {
        "full base, shared": {n: ("base", a) for n, (a, _) in tasks.items()},
        "own trimmed base each": {n: (t, a) for n, (a, t) in tasks.items()},
        "union trimmed base, shared": {n: (str(Path(args.union).resolve()), a) for n, (a, _) in tasks.items()},
    }
    results = {}
    for way, fleet in ways.items():
        results[way] = serve_and_measure(fleet, args.slots, args.ctx)
        result = results[way]
        print(f"{way}: {result['bases']} base(s), {result['model_files_mb']} MiB of files, RSS "
              f"{result['rss_after_load_mb']} MiB loaded, {result['rss_after_requests_mb']} MiB after a request "
              f"per task", file=sys.stderr)
    print(json.dumps({"bench": "fleet_memory", "tasks": list(tasks), "slots": args.slots, "ctx": args.ctx,
                      "ways": results}))


if __name__ == "__main__":
    main()
