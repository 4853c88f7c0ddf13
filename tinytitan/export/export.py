"""`tinytitan export RUN`: ship a fine-tuning run in the formats runtimes load, each one checked.

Targets (`--to`, comma-separated):
- `gguf`: the merged model as an F16 GGUF (base metadata, tokenizer, our chat template), then
  quantized by llama.cpp's own quantizer into every `--quant` type (`q8_0,q4_k_m,q4_k_m-imatrix`...);
  `-imatrix` types use an importance matrix computed from the run's training sequences;
- `adapter`: a GGUF LoRA adapter for llama.cpp, to hot-swap on the unchanged base GGUF (LoRA runs);
- `hf`: merged safetensors + config + tokenizer, loadable by transformers and vLLM;
- `peft`: the PEFT adapter folder (LoRA runs);
- `ollama`: a Modelfile beside the smallest GGUF that passed (and one for base + adapter).
Every artifact is built in a staging folder, reloaded through the engine that will run it and
compared with the trained model (`gate.py`). Only artifacts that pass reach the output folder
(`publish.py`), each with `<name>.manifest.json` (sha256, size, source run, type, parity figures). A failure exits
1 and leaves nothing at the final path; `--force` keeps it, marked failed in its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.export.publish import publish, write_modelfiles
from tinytitan.tables import format_cell

TARGETS = ("gguf", "adapter", "hf", "peft", "ollama")


def add_arguments(parser) -> None:
    parser.add_argument("run", help="a fine-tuning run folder (from `tinytitan finetune`)")
    parser.add_argument("--to", default="gguf,adapter", help=f"what to export, comma-separated: {', '.join(TARGETS)}")
    parser.add_argument("--quant", default="f16,q8_0,q4_k_m", help="GGUF types, e.g. f16,q8_0,q5_k_m,q4_k_m-imatrix")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/export)")
    parser.add_argument("--weights", choices=("best", "last"), default="best", help="which weights of the run")
    parser.add_argument("--gate-rows", type=options.positive_int, default=64, help="held-out rows the gate checks")
    parser.add_argument("--gate-data", default=None, help="held-out rows from this file (default: the run's test, else val split)")
    parser.add_argument("--max-tokens", type=options.positive_int, default=128, help="greedy tokens per gate row")
    parser.add_argument("--force", action="store_true", help="keep artifacts that fail the gate (marked failed)")
    parser.add_argument("--trim", action="store_true",
                        help="also export each GGUF, and the base for the adapter, with a task vocabulary: only the "
                             "tokens the run's training and validation rows need (tinytitan/shrink/vocabulary.py)")
    parser.add_argument("--keep-top", type=options.non_negative_int, default=None,
                        help="with --trim: also keep the N most frequent tokens of general English (default: 4000)")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None)
    options.add_json(parser)


def run(args) -> None:
    targets = [t.strip() for t in args.to.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise TinyTitanError(f"--to: {unknown or '(empty)'} not among {', '.join(TARGETS)}")
    if "ollama" in targets and not {"gguf", "adapter"} & set(targets):
        raise TinyTitanError("--to ollama writes a Modelfile for a GGUF: add gguf or adapter to --to")
    from tinytitan.export.quantize import parse_quants

    from tinytitan.files import FolderLock

    quants = parse_quants(args.quant) if "gguf" in targets else []
    _run_config(Path(args.run))  # a run folder, before the lock file goes into it
    with FolderLock(Path(args.run), "export"):  # not while a fine-tune or another export writes there
        report = export(Path(args.run), targets, quants, Path(args.out) if args.out else Path(args.run) / "export",
                        weights=args.weights, gate_rows=args.gate_rows, gate_data=args.gate_data,
                        max_tokens=args.max_tokens, force=args.force, threads=args.threads, trim=args.trim,
                        keep_top=args.keep_top)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    failed = [a["artifact"] for a in report["artifacts"] if not a["parity"]["passed"]]
    if failed:
        kept = " (kept, marked failed: --force)" if args.force else " (removed)"
        raise TinyTitanError(f"parity gate failed for {', '.join(failed)}{kept}")


def export(run: Path, targets, quants, out: Path, *, weights="best", gate_rows=64, gate_data=None,
           max_tokens=128, force=False, threads=None, name: str | None = None, trim: bool = False,
           keep_top: int | None = None) -> dict:
    """Build, gate and publish; files are named `<name>-<type>.gguf` (name: the run folder's, by default).
    With `trim`, every GGUF also comes as `<name>-<type>-task.gguf` with the run's task vocabulary, and the
    adapter with `<name>-base-task.gguf`, the base trimmed alike: each through the gate too (KL and top-1
    over the kept tokens, on the held-out rows the task vocabulary spells)."""
    from tinytitan.model.engines.torch import TorchEngine
    from tinytitan.model.runs import load_run_model
    from tinytitan.model.torch_model import load_tokenizer

    config = _run_config(run)
    ref, model = load_run_model(run, weights)
    tokenizer = load_tokenizer(ref)
    reference = TorchEngine(ref, model=model, tokenizer=tokenizer, threads=threads)
    held_out, train_rows = _rows(config, tokenizer, gate_data, gate_rows)
    _remove_stale_staging(out)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        built = _build(run, config, ref, model, tokenizer, targets, quants, staging, weights, train_rows, threads,
                       name or run.name)
        if trim:
            built += _trimmed(built, config, ref, staging, name or run.name, keep_top)
        candidates = _candidates(built, ref, threads, n_ctx=max(512, int(config["max_length"]) + max_tokens))
        from tinytitan.export.gate import run_gate
        from tinytitan.progress import progress_bar

        with progress_bar("parity gate") as progress:
            task = progress.add_task("rows", total=len(held_out), note=f"{len(candidates)} artifacts")
            run_gate(reference, candidates, held_out, max_tokens, lambda done, total: progress.update(task, completed=done))
        for candidate in candidates:
            candidate.engine.close()
        artifacts = publish(built, candidates, out, run, ref, weights, force)
        cross = _adapter_vs_merged(candidates)
        if "ollama" in targets:
            artifacts += write_modelfiles(artifacts, out, ref, config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"run": str(run), "out": str(out), "gate_rows": len(held_out), "artifacts": artifacts, **cross}


def _remove_stale_staging(out: Path) -> None:
    """Staging folders left by exports that were killed (their process no longer exists)."""
    for folder in out.glob(".staging-*"):
        pid = folder.name.removeprefix(".staging-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _adapter_vs_merged(candidates) -> dict:
    """How often base + GGUF adapter and the merged F16 GGUF, both in llama.cpp, decode the same."""
    adapter = next((c for c in candidates if c.label == "adapter"), None)
    merged = next((c for c in candidates if c.kind == "F16"), None)
    if not adapter or not merged:
        return {}
    same = [a == b for a, b in zip(adapter.outputs, merged.outputs)]
    return {"adapter_vs_merged_f16_greedy_agreement": sum(same) / max(len(same), 1)}


def _run_config(run: Path) -> dict:
    try:
        return json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        raise TinyTitanError(f"{run}: not a fine-tuning run (no readable config.json)") from None


def _rows(config: dict, tokenizer, gate_data: str | None, gate_rows: int):
    """Held-out rows for the gate, and the training rows (for the importance matrix)."""
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.data.check import prepare_data

    settings = FinetuneConfig(**{**config, "skip_bad": True, "max_bad_fraction": 1.0})
    prepared = prepare_data(settings, tokenizer)
    if gate_data:
        held = prepare_data(FinetuneConfig(**{**config, "train": gate_data, "val": "", "test": "",
                                              "split": [1.0, 0.0, 0.0], "max_rows": 0}), tokenizer)
        held_out = held.splits["train"]
    else:
        held_out = prepared.splits["test"] or prepared.splits["val"]
    if not held_out:
        raise TinyTitanError("no held-out rows to check the export against (the run has no val/test split; "
                             "pass --gate-data FILE)")
    return held_out[:gate_rows], prepared.splits["train"]


def _build(run, config, ref, model, tokenizer, targets, quants, staging: Path, weights, train_rows, threads,
           name: str) -> list[dict]:
    """Write every requested artifact into `staging`; returns [{label, kind, path, quant, imatrix}]."""
    from tinytitan.export import gguf_writer as gguf_export
    from tinytitan.export.quantize import quantize

    built = []
    metadata = {"general.finetune": name, "tinytitan.run": str(run.resolve()), "tinytitan.base_sha256": ref.sha256,
                "tinytitan.method": config["method"]}
    if "gguf" in targets:
        source = staging / f"{name}-f16.gguf"
        gguf_export.write_merged_gguf(source, model, ref.gguf, "f16", metadata)
        imatrix = None
        if any(q.imatrix for q in quants):
            imatrix = gguf_export.compute_imatrix(model, [r.ids for r in train_rows], staging / "imatrix.gguf",
                                                  dataset=f"{name}/train")
        for spec in quants:
            path = staging / f"{name}-{spec.label}.gguf"
            if spec.type == "F16":
                built.append({"label": spec.label, "kind": "F16", "path": source, "quant": "F16", "imatrix": False})
                continue
            if spec.type in ("F32", "BF16"):
                gguf_export.write_merged_gguf(path, model, ref.gguf, spec.type.lower(), metadata)
            else:
                quantize(source, path, spec, imatrix, threads)
            built.append({"label": spec.label, "kind": spec.type, "path": path, "quant": spec.type,
                          "imatrix": spec.imatrix})
        if not any(q.type == "F16" for q in quants):
            built.append({"label": "_source", "kind": None, "path": source})  # removed after use
    lora = config["method"] == "lora"
    if "adapter" in targets:
        if not lora:
            raise TinyTitanError("--to adapter needs a LoRA run (this one fine-tuned all weights)")
        from safetensors.torch import load_file

        adapter_config = json.loads((run / weights / "adapter_config.json").read_text())
        state = load_file(str(_safetensors(run / weights / "adapter_model.safetensors")))
        path = staging / f"{name}-adapter-f16.gguf"
        gguf_export.write_lora_adapter(path, state, adapter_config["lora_alpha"], ref.gguf, "f16",
                                       {"general.finetune": name, "tinytitan.base_sha256": ref.sha256})
        built.append({"label": "adapter", "kind": "ADAPTER", "path": path, "quant": "F16", "imatrix": False})
    if "hf" in targets:
        folder = staging / "hf"
        model.save_pretrained(folder, safe_serialization=True)
        _copy_tokenizer(ref, folder)
        built.append({"label": "hf", "kind": "exact", "path": folder, "quant": "F32", "imatrix": False})
    if "peft" in targets:
        if not lora:
            raise TinyTitanError("--to peft needs a LoRA run (this one fine-tuned all weights)")
        shutil.copytree(run / weights, staging / "peft", ignore=shutil.ignore_patterns("manifest.json"))
        built.append({"label": "peft", "kind": "exact", "path": staging / "peft", "quant": "F32", "imatrix": False})
    return built


def _trimmed(built: list[dict], config: dict, ref, staging: Path, name: str, keep_top: int | None) -> list[dict]:
    """Task-vocabulary copies of the built GGUFs (and of the base, for the adapter), with their keep set."""
    from tinytitan.train.config import FinetuneConfig
    from tinytitan.shrink.vocabulary import DEFAULT_TOP, Vocab, run_keep_set, trim_gguf

    top = DEFAULT_TOP if keep_top is None else keep_top
    vocab = Vocab.from_gguf(ref.gguf)
    keep = run_keep_set(FinetuneConfig(**config), vocab, top)
    if len(keep) >= len(vocab):
        print(f"trim: the task vocabulary is the whole vocabulary ({len(vocab):,} tokens): no trimmed copies",
              file=sys.stderr)
        return []
    trimmed = []
    for item in built:
        if item["kind"] in (None, "exact") or item["label"] in ("hf", "peft"):
            continue
        if item["label"] == "adapter":
            path = staging / f"{name}-base-task.gguf"
            trim_gguf(ref.path, keep, path)
            trimmed.append({**item, "label": "adapter-task", "path": path, "adapter": item["path"], "keep": keep})
        else:
            path = staging / f"{item['path'].stem}-task.gguf"
            trim_gguf(item["path"], keep, path)
            trimmed.append({**item, "label": f"{item['label']}-task", "path": path, "keep": keep})
    return trimmed


def _safetensors(path: Path) -> Path:
    if not path.exists():
        pickles = [p.name for p in path.parent.glob("*.bin")] + [p.name for p in path.parent.glob("*.pt")]
        if pickles:
            raise TinyTitanError(f"{path.parent}: holds pickle weights ({pickles[0]}); tinytitan loads only "
                                 f"safetensors (pickle files can run code)")
        raise TinyTitanError(f"{path}: missing")
    return path


def _copy_tokenizer(ref, folder: Path) -> None:
    from tinytitan.model.torch_model import ensure_converted

    source = ensure_converted(ref)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy2(source / name, folder / name)


def _candidates(built, ref, threads, n_ctx: int):
    from tinytitan.model.engines.llama import LlamaEngine
    from tinytitan.model.engines.torch import TorchEngine
    from tinytitan.export.gate import Candidate
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_tokenizer

    candidates = []
    for item in built:
        if item["kind"] is None:
            continue
        if item["label"] == "adapter":
            engine = LlamaEngine(ref, threads=threads, n_ctx=n_ctx, lora=str(item["path"]))
        elif item["label"] == "adapter-task":  # the adapter on the base trimmed to the task vocabulary
            engine = LlamaEngine(resolve(str(item["path"])), threads=threads, n_ctx=n_ctx, lora=str(item["adapter"]))
        elif item["label"] in ("hf", "peft"):
            engine = TorchEngine(ref, model=_load_folder(item, ref), tokenizer=load_tokenizer(ref), threads=threads)
        else:
            engine = LlamaEngine(resolve(str(item["path"])), threads=threads, n_ctx=n_ctx)
        candidates.append(Candidate(item["label"], item["kind"], engine, keep=item.get("keep")))
    return candidates


def _load_folder(item, ref):
    """Reload an HF or PEFT folder with the library a user would load it with."""
    from transformers import Gemma3ForCausalLM

    if item["label"] == "hf":
        return Gemma3ForCausalLM.from_pretrained(item["path"], dtype="float32").eval()
    from peft import PeftModel

    from tinytitan.model.torch_model import load_torch_model

    return PeftModel.from_pretrained(load_torch_model(ref), str(item["path"])).eval()


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    table = Table(title=f"export of {report['run']} (gate on {report['gate_rows']} held-out rows)")
    for column in ("artifact", "size", "mean KL", "top-1", "greedy = torch", "exact match", "gate"):
        table.add_column(column, justify="left" if column == "artifact" else "right", no_wrap=column == "artifact")
    for a in report["artifacts"]:
        if a.get("kind") == "ollama":
            continue
        p = a["parity"]
        size = f"{a['bytes'] / 2**20:.1f} MiB" if "bytes" in a else "-"
        greedy = format_cell(p["greedy_agreement"], "{:.1%}") + \
            ("" if p["thresholds"]["min_greedy_agreement"] else " (not gated)")
        table.add_row(a["artifact"], size, format_cell(p["kl_mean"], "{:.4f}"),
                      format_cell(p["top1"], "{:.1%}"), greedy, format_cell(p["exact_match"], "{:.1%}"),
                      "passed" if p["passed"] else "[red]FAILED[/red]")
    console.print(table)
    for a in report["artifacts"]:
        if not a["parity"]["passed"]:
            console.print(f"[red]{a['artifact']}[/red]: " + "; ".join(a["parity"]["failures"]))
        if a.get("kind") == "ollama":
            console.print(f"{a['artifact']} for {a['for']}: {a['path']}")
    if "adapter_vs_merged_f16_greedy_agreement" in report:
        console.print(f"base + GGUF adapter vs merged F16, same greedy output: "
                      f"{report['adapter_vs_merged_f16_greedy_agreement']:.1%} of rows")
    console.print(f"output: {report['out']}")
