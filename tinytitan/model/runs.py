"""A fine-tuning run folder as a model: the base GGUF plus the run's best (or last) weights."""

from __future__ import annotations

import json
from pathlib import Path

from tinytitan.errors import TinyTitanError


def load_run_model(run: str | Path, which: str = "best"):
    """`(ModelRef of the base, Gemma3ForCausalLM with the run's weights merged in)`."""
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_torch_model

    run = Path(run)
    config_path = run / "config.json"
    if not config_path.exists():
        raise TinyTitanError(f"{run}: not a fine-tuning run (no config.json)")
    config = json.loads(config_path.read_text())
    weights = run / which
    if not (weights / "manifest.json").exists():
        raise TinyTitanError(f"{weights}: missing or incomplete (the run saved no {which} weights)")
    weights_file = weights / ("adapter_model.safetensors" if config["method"] == "lora" else "model.safetensors")
    if not weights_file.exists():
        pickles = sorted(p.name for p in weights.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        detail = f"it holds pickle weights ({pickles[0]}), which tinytitan refuses to load (they can run code)" \
            if pickles else "missing"
        raise TinyTitanError(f"{weights_file}: {detail}")
    ref = resolve(config["model"])
    if config["method"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_torch_model(ref), str(weights)).merge_and_unload()
    else:
        from transformers import Gemma3ForCausalLM

        model = Gemma3ForCausalLM.from_pretrained(weights, dtype="float32")
    return ref, model.eval()
