"""What passed the parity gate goes into place: each artifact moved into the output folder whole (never
half-written), beside `<name>.manifest.json` (kind, quant, sha256, size, source run, gate figures and status,
the task vocabulary), which `model/artifacts.run_artifacts` reads back as an Artifact; and Ollama Modelfiles."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tinytitan.files import write_json, write_text


def publish(built, candidates, out: Path, run: Path, ref, weights, force) -> list[dict]:
    by_label = {c.label: c.report() for c in candidates}
    published = []
    for item in built:
        if item["kind"] is None:
            continue
        parity = by_label[item["label"]]
        final = out / item["path"].name
        if not parity["passed"] and not force:
            _remove(final)  # an artifact of that name from an earlier export is not this model
            _remove(out / f"{final.name}.manifest.json")
            published.append({"artifact": final.name, "path": None, "kind": item["label"], "quant": item["quant"],
                              "bytes": _digest(item["path"])["bytes"], "status": "failed", "parity": parity})
            continue
        manifest = {"artifact": final.name, "kind": item["label"], "quant": item["quant"], "imatrix": item["imatrix"],
                    **_digest(item["path"]), "source_run": str(run.resolve()), "weights": weights,
                    "base_model": str(ref.path), "base_sha256": ref.sha256, "parity": parity,
                    "status": "passed" if parity["passed"] else "failed", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if "keep" in item:  # a task vocabulary: how many tokens, and (for the trimmed base) the adapter it serves
            manifest["vocabulary"] = len(item["keep"])
            if "adapter" in item:
                manifest["adapter"] = item["adapter"].name
        _move_into_place(item["path"], final)
        write_json(out / f"{final.name}.manifest.json", manifest, indent=2)
        published.append({**manifest, "path": str(final)})
    return published


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _digest(path: Path) -> dict:
    from tinytitan.files import sha256_of

    if path.is_file():
        return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in sorted(path.iterdir())
             if p.is_file()}
    return {"bytes": sum(f["bytes"] for f in files.values()), "files": files}


def _move_into_place(source: Path, final: Path) -> None:
    """Rename within the output folder's file system: the final path is never half-written."""
    from tinytitan.files import replace_dir

    if source.is_dir():
        replace_dir(source, final)
    else:
        os.replace(source, final)


def write_modelfiles(artifacts, out: Path, ref, config) -> list[dict]:
    from tinytitan.model.chat_format import OLLAMA_TEMPLATE
    from tinytitan.export.quantize import QUANT_TYPES

    ggufs = [a for a in artifacts if a.get("path") and a["kind"] not in ("adapter", "hf", "peft")
             and a["status"] == "passed"]
    written = []
    system = f'SYSTEM """{config["system"]}"""\n' if config.get("system") else ""
    common = f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n{system}PARAMETER stop "<end_of_turn>"\nPARAMETER temperature 0\n'
    if ggufs:
        smallest = min(ggufs, key=lambda a: (QUANT_TYPES[a["quant"]], a["bytes"]))
        write_text(out / "Modelfile", f"# ollama create my-task -f Modelfile\nFROM ./{smallest['artifact']}\n{common}")
        written.append({"artifact": "Modelfile", "path": str(out / "Modelfile"), "kind": "ollama",
                        "for": smallest["artifact"], "parity": smallest["parity"]})
    adapters = [a for a in artifacts if a.get("path") and a["kind"] == "adapter" and a["status"] == "passed"]
    if adapters:
        text = (f"# ollama create my-task -f Modelfile.adapter   (base + hot-swappable adapter)\n"
                f"FROM {ref.path}\nADAPTER ./{adapters[0]['artifact']}\n{common}")
        write_text(out / "Modelfile.adapter", text)
        written.append({"artifact": "Modelfile.adapter", "path": str(out / "Modelfile.adapter"), "kind": "ollama",
                        "for": adapters[0]["artifact"], "parity": adapters[0]["parity"]})
    return written
