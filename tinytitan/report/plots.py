"""PNG plots for run folders (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


def loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Training loss per step and validation loss per evaluation, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.tight_layout()
    from tinytitan.files import atomic_file

    atomic_file(png_path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
