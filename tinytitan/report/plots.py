"""PNG plots (matplotlib, headless), written whole or not at all: a run's loss curve (fine-tuning draws it
as it goes), and the report's metric vs file size and context scaling."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, plt, path: Path) -> Path:
    figure.tight_layout()
    from tinytitan.files import atomic_file

    atomic_file(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def metric_vs_size(rows: list[dict], path: Path) -> Path:
    """Each artifact's headline metric (with its 95% interval) against its file size."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for row in rows:
        score, (low, high) = 100 * row["score"], row["ci95"]
        axes.errorbar(row["size_mb"], score, yerr=[[score - 100 * low], [100 * high - score]], fmt="o", capsize=3)
        axes.annotate(row["artifact"], (row["size_mb"], score), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("size on disk (MB, log scale; adapters: base + adapter)")
    axes.set_ylabel(f"{rows[0]['metric'].replace('_', ' ')} (%)")
    axes.grid(alpha=0.3)
    return _save(figure, plt, path)


def context_scaling(bench: dict, path: Path) -> Path:
    """Decode tok/s and KV cache MB at each filled context length."""
    plt = _pyplot()
    points = bench["context"]
    figure, speed = plt.subplots(figsize=(7, 4.5), dpi=110)
    depths = [p["depth"] for p in points]
    speed.plot(depths, [p["decode_tps"] for p in points], "o-", color="tab:blue", label="decode tok/s")
    speed.set_xscale("log", base=2)
    speed.set_xlabel("tokens already in the context")
    speed.set_ylabel("decode tokens/s", color="tab:blue")
    memory = speed.twinx()
    memory.plot(depths, [p["kv_mb"] for p in points], "s--", color="tab:red", label="KV cache MB")
    memory.plot(depths, [p["peak_rss_mb"] for p in points], "^:", color="tab:gray", label="peak RSS MB")
    memory.set_ylabel("MB", color="tab:red")
    figure.legend(loc="upper center", ncol=3, fontsize=8)
    speed.set_title(f"{bench['artifact']}: context scaling", fontsize=10, pad=22)
    speed.grid(alpha=0.3)
    return _save(figure, plt, path)


def loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Training loss per step and validation loss per evaluation, from metrics.jsonl."""
    plt = _pyplot()
    train, val = [], []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "val_loss" in record:
            val.append((record["step"], record["val_loss"]))
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axes.plot(*zip(*train), label="train (completion tokens)", linewidth=1, alpha=0.8)
    if val:
        axes.plot(*zip(*val), "o-", label="validation", linewidth=2)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.set_title(metrics_path.parent.name)
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, plt, png_path)
