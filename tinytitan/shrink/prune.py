"""`tinytitan prune MODEL --data rows.jsonl --layers 12 -o out.gguf`: a Gemma 3 with fewer layers.

MODEL is a GGUF, `base` (the embedded model) or a fine-tuning run (its best weights merged: the
specialist). Each layer's importance is measured on the first `--rows` rows of the data (how much it
turns the hidden state at the completion positions, `shrink/depth.py`); the `--layers` most important
are kept, in order, and written as an F16 GGUF both engines run. The pruned model is a student to
fine-tune, best with the full model as its teacher (`finetune --teacher`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a Gemma 3 GGUF, `base` (the embedded one), or a fine-tuning run folder")
    parser.add_argument("--data", required=True, metavar="FILE",
                        help="task rows to measure the layers on (JSONL, CSV or TSV, as finetune reads them)")
    parser.add_argument("--layers", type=options.positive_int, required=True, help="how many layers to keep")
    parser.add_argument("--rows", type=options.positive_int, default=64, help="rows to measure on (default: 64)")
    parser.add_argument("--max-length", type=options.positive_int, default=512, help="tokens per row, at most")
    parser.add_argument("--output", "-o", required=True, help="the pruned GGUF to write")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None, help="CPU threads")
    options.add_data_spec(parser)
    options.add_json(parser)


def run(args) -> None:
    from tinytitan.data.rows import load_examples

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = load_examples(args.data, options.data_spec_from(args), duplicates="keep")
    if report.rejected:
        raise TinyTitanError(f"{report.rejected[0]} ({len(report.rejected)} bad rows; `tinytitan data check "
                             f"{args.data}` lists them)")
    result = prune_model(args.model, report.examples[:args.rows], args.layers, Path(args.output), args.max_length)
    if args.json:
        print(json.dumps(result))
        return
    print(f"layer importance (1 - cos(in, out) at completion positions, {result['rows']} rows): "
          + ", ".join(f"{i}:{x:.4f}" for i, x in enumerate(result["importance"])))
    print(f"kept {len(result['kept'])} of {result['layers']} layers ({', '.join(map(str, result['kept']))}): "
          f"{result['output']} ({result['bytes'] / 2**20:.1f} MiB, f16)")


def prune_model(spec: str, examples, layers: int, target: Path, max_length: int = 512) -> dict:
    """`spec` (a GGUF, `base` or a run) with its `layers` most important layers, measured on `examples`,
    written to `target` as an F16 GGUF; what was measured and kept."""
    from tinytitan.data.tokens import tokenize_examples
    from tinytitan.export.gguf_writer import write_merged_gguf
    from tinytitan.model.torch_model import load_tokenizer
    from tinytitan.shrink.depth import choose_layers, drop_layers, layer_importance
    from tinytitan.train.batching import collate, plan_epoch

    ref, model = _load(spec)
    if target.resolve() == ref.path.resolve():
        raise TinyTitanError(f"--output {target}: that is the model itself; write the pruned model elsewhere")
    total = model.config.num_hidden_layers
    if layers >= total:
        raise TinyTitanError(f"--layers {layers}: the model has {total}; keep fewer to prune")
    rows, _ = tokenize_examples(load_tokenizer(ref), examples, max_length)
    if not rows:
        raise TinyTitanError(f"{spec}: no rows to measure the layers on")
    batches = (collate(rows, batch, pad_id=0) for batch in plan_epoch(rows, 2048, max_length, 0, 0, shuffle=False))
    importance = layer_importance(model, batches)
    keep = choose_layers(importance, layers)
    drop_layers(model, keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_merged_gguf(target, model, ref.gguf, "f16", {
        "general.finetune": f"{Path(spec).name}, {len(keep)} of {total} layers",
        "tinytitan.depth.source": str(Path(spec).resolve()) if Path(spec).exists() else spec,
        "tinytitan.depth.kept": ",".join(map(str, keep))})
    return {"model": spec, "output": str(target), "layers": total, "kept": keep,
            "importance": [round(x, 6) for x in importance], "rows": len(rows), "bytes": target.stat().st_size}


def _load(spec: str):
    """(ModelRef of the base, Gemma3ForCausalLM in fp32) of a GGUF, `base` or a fine-tuning run."""
    from tinytitan.model.artifacts import BASE_NAMES
    from tinytitan.model.registry import resolve
    from tinytitan.model.runs import load_run_model
    from tinytitan.model.torch_model import load_torch_model

    path = Path(spec)
    if path.is_dir():
        return load_run_model(path / "train" if (path / "train" / "config.json").is_file() else path)
    if spec not in BASE_NAMES and not path.is_file():
        raise TinyTitanError(f"{spec}: no such file or run folder (expected a Gemma 3 GGUF, `base` or a run)")
    ref = resolve(None if spec in BASE_NAMES else spec)
    return ref, load_torch_model(ref)
