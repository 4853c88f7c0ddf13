"""`tinytitan info [MODEL]`: what a GGUF file holds.

Architecture, parameter count, file size, context length, sliding window, shape, and the real
storage type of every tensor: a "Q4_K_M" file of Gemma 3 270M stores most tensors as Q5_0, Q8_0
or Q6_K, because its hidden size (640) is not a multiple of the 256-wide k-quant blocks.
"""

from __future__ import annotations

import json
from collections import defaultdict

from tinytitan import options
from tinytitan.errors import TinyTitanError


def add_arguments(parser) -> None:
    options.add_model(parser, positional=True)
    parser.add_argument("--tensors", action="store_true", help="list every tensor, not only the totals per type")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="rows (JSONL, CSV or TSV): how much of their text this model's vocabulary spells as raw "
                             "bytes, and how many more pieces it takes than the full vocabulary")
    options.add_json(parser)


def describe(ref) -> dict:
    g = ref.gguf
    by_type: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    for t in g.tensors:
        row = by_type[t.type_name]
        row["tensors"] += 1
        row["parameters"] += t.n_elements
        row["bytes"] += t.n_bytes
    parameters = sum(t.n_elements for t in g.tensors)
    tensor_bytes = sum(t.n_bytes for t in g.tensors)
    arch = g.architecture
    window = g.arch_key("attention.sliding_window")
    info = {
        "path": str(ref.path),
        "name": g.get("general.name"),
        "architecture": arch,
        "file_bytes": g.file_size,
        "parameters": parameters,
        "bits_per_weight": round(8 * tensor_bytes / max(parameters, 1), 3),
        "context_length": g.arch_key("context_length"),
        "sliding_window": window,
        "layers": g.arch_key("block_count"),
        "embedding_length": g.arch_key("embedding_length"),
        "feed_forward_length": g.arch_key("feed_forward_length"),
        "attention_heads": g.arch_key("attention.head_count"),
        "kv_heads": g.arch_key("attention.head_count_kv"),
        "head_dim": g.arch_key("attention.key_length"),
        "vocab_size": _vocab_size(g),
        "trimmed_from": g.get("tinytitan.trim.source_vocab"),  # a task vocabulary (`tinytitan trim`) of this many
        "license": g.get("general.license"),
        "gguf_version": g.version,
        "types": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])),
        "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.n_bytes}
                    for t in g.tensors],
    }
    if window and arch == "gemma3":
        from tinytitan.model.convert import layer_is_sliding

        sliding = layer_is_sliding(g)
        info["sliding_layers"] = sum(sliding)
        info["global_layers"] = len(sliding) - sum(sliding)
    return info


def _vocab_size(g) -> int | None:
    from tinytitan.model.gguf import ArrayRef

    tokens = g.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    return tokens.count if isinstance(tokens, ArrayRef) else len(tokens)


def run(args) -> None:
    from tinytitan.model.registry import resolve

    ref = resolve(args.model)
    info = describe(ref)
    if args.data:
        info["data"] = data_cost(ref, args.data)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print_info(info, show_tensors=args.tensors)


def print_info(info: dict, show_tensors: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(no_wrap=True)
    summary.add_column(overflow="fold")
    rows = [
        ("file", f"{info['path']} ({mib(info['file_bytes'])})"),
        ("name", info["name"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{info['parameters'] / 1e6:.1f} M ({info['bits_per_weight']} bits per weight)"),
        ("context length", info["context_length"]),
        ("sliding window", _window_text(info)),
        ("layers", info["layers"]),
        ("hidden / ffn", f"{info['embedding_length']} / {info['feed_forward_length']}"),
        ("heads / kv heads / head dim", f"{info['attention_heads']} / {info['kv_heads']} / {info['head_dim']}"),
        ("vocabulary", _vocab_text(info)),
        ("licence", info["license"]),
    ]
    for key, value in rows:
        summary.add_row(f"[bold]{key}[/bold]", "-" if value is None else str(value))
    console.print(summary)

    table = Table(title="storage by tensor type")
    for column in ("type", "tensors", "parameters", "size", "share"):
        table.add_column(column, justify="left" if column == "type" else "right")
    total = sum(row["bytes"] for row in info["types"].values())
    for name, row in info["types"].items():
        table.add_row(name, str(row["tensors"]), f"{row['parameters'] / 1e6:.2f} M", mib(row["bytes"]),
                      f"{100 * row['bytes'] / max(total, 1):.1f}%")
    console.print(table)
    if show_tensors:
        tensors = Table(title="tensors")
        for column in ("name", "type", "shape", "size"):
            tensors.add_column(column, justify="right" if column == "size" else "left")
        for t in info["tensors"]:
            tensors.add_row(t["name"], t["type"], "x".join(map(str, t["shape"])), mib(t["bytes"]))
        console.print(tensors)


def data_cost(ref, path: str) -> dict:
    """How this model's vocabulary spells the text of a data file: the share of pieces that are raw bytes,
    and, for a task vocabulary, how many pieces it takes against the full vocabulary it was trimmed from."""
    from tinytitan.data.rows import load_examples
    from tinytitan.model.gguf import read_gguf
    from tinytitan.shrink.vocabulary import BYTE, MergeTracer, Vocab, unseen_cost

    texts = [t for e in load_examples(path, duplicates="keep").examples
             for t in (*(m.content for m in e.messages), e.completion)]
    vocab = Vocab.from_gguf(ref.gguf)
    source = ref.gguf.get("tinytitan.trim.source")
    if source:
        from pathlib import Path

        if not Path(source).is_file():
            raise TinyTitanError(f"{ref.path}: trimmed from {source}, which is not here to compare with")
        full = Vocab.from_gguf(read_gguf(Path(source)))
        index = {t: i for i, t in enumerate(full.tokens)}
        return {"file": path, **unseen_cost(full, sorted(index[t] for t in vocab.tokens), texts)}
    tracer = MergeTracer(vocab)
    pieces = [token for text in texts for token, _ in tracer.pieces(text)]
    return {"file": path, "byte_share": sum(vocab.types[t] == BYTE for t in pieces) / max(len(pieces), 1),
            "pieces_ratio": 1.0}


def _vocab_text(info: dict) -> str:
    text = f"{info['vocab_size']:,}" if info["vocab_size"] else "-"
    if info.get("trimmed_from"):
        text += f" of {info['trimmed_from']:,} (a task vocabulary)"
    if "data" in info:
        data = info["data"]
        text += (f"; {data['file']}: {100 * data['byte_share']:.2f}% of pieces as raw bytes, "
                 f"{data['pieces_ratio']:.3f}x the full vocabulary's pieces")
    return text


def _window_text(info: dict) -> str:
    if not info["sliding_window"]:
        return "none"
    text = f"{info['sliding_window']} tokens"
    if "sliding_layers" in info:
        text += f" ({info['sliding_layers']} sliding layers, {info['global_layers']} global)"
    return text


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"
