"""A GGUF Gemma 3 as a PyTorch `Gemma3ForCausalLM` and its tokenizer, converted once and cached.

`transformers` can read a GGUF itself, but it takes ~80 s for the 270M and refuses
`save_pretrained` afterwards. So the first load dequantizes the file with `gguf` (see
`convert.py`), builds the tokenizer with `transformers`' GGUF tokenizer converter, and saves a
plain Hugging Face folder (config.json, model.safetensors, tokenizer files) under
`<cache>/torch/<sha256 of the GGUF>/`. Every later load is `from_pretrained` on that folder.
A `manifest.json` written last marks the folder complete; the folder appears by atomic rename.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from tinytitan.model import convert
from tinytitan.files import atomic_dir
from tinytitan.model.registry import ModelRef, home

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
# transformers' deprecation notices (raised from inside PEFT and generate) are not the user's business
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
FORMAT_VERSION = 1


def cache_dir(ref: ModelRef) -> Path:
    return home() / "torch" / ref.sha256[:16]


def load_torch_model(ref: ModelRef, dtype: str = "float32"):
    """The `Gemma3ForCausalLM` for a Gemma 3 GGUF; converts and caches on first use."""
    import torch
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging

    folder = ensure_converted(ref)
    logging.disable_progress_bar()
    model = Gemma3ForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    return model.eval()


class Tokenizer:
    """The model's tokenizer for training and the torch engine (same interface as the engines').

    Wraps a `tokenizers.Tokenizer` set so that control tokens spelled in text stay text. (The
    `transformers` wrapper takes ~3 s to load Gemma's 262,144-piece vocabulary; this ~1 s.)
    """

    def __init__(self, path: Path, bos_id: int):
        from tokenizers import Tokenizer as FastTokenizer

        self.fast = FastTokenizer.from_file(str(path))
        self.fast.encode_special_tokens = True
        self.bos_id = bos_id

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        ids = self.fast.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def tokenize_many(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.fast.encode_batch(texts, add_special_tokens=False)]

    def detokenize(self, ids) -> str:
        return self.fast.decode(list(ids), skip_special_tokens=True)

    def token_id(self, piece: str) -> int | None:
        return self.fast.token_to_id(piece)


def load_tokenizer(ref: ModelRef) -> Tokenizer:
    folder = ensure_converted(ref)
    config = json.loads((folder / "config.json").read_text())
    return Tokenizer(folder / "tokenizer.json", int(config["bos_token_id"]))


def decoder_layers(ref: ModelRef) -> int:
    """How many decoder layers the model has (from the converted folder's config.json)."""
    return int(json.loads((ensure_converted(ref) / "config.json").read_text())["num_hidden_layers"])


def ensure_converted(ref: ModelRef) -> Path:
    convert.require_gemma3(ref.gguf, "the torch engine (training)")
    folder = cache_dir(ref)
    if not _complete(folder):
        convert_to_hf(ref, folder)
    return folder


def _complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format_version") == FORMAT_VERSION


def convert_to_hf(ref: ModelRef, folder: Path) -> None:
    """Dequantize `ref` into a Hugging Face folder at `folder` (atomically), with a progress bar."""
    from safetensors.torch import save_file

    from tinytitan.progress import progress_bar

    g = ref.gguf
    config = convert.gemma3_config(g)
    names = _hf_weight_names(config)
    total = sum(t.n_bytes for t in g.tensors)

    def write(staging: Path) -> None:
        with progress_bar(f"converting {ref.path.name} for torch (once)", bytes_=True) as progress:
            task = progress.add_task("dequantizing", total=total, note="")
            state = convert.gemma3_state_dict(g, names, lambda n: progress.advance(task, n))
            save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
            del state
            config.architectures = ["Gemma3ForCausalLM"]
            config.save_pretrained(staging)
            progress.update(task, description="building the tokenizer")
            build_tokenizer(ref.path).save_pretrained(staging)
        manifest = {"format_version": FORMAT_VERSION, "source": str(ref.path), "source_sha256": ref.sha256}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))

    atomic_dir(folder, write)  # an incomplete leftover at `folder` is replaced whole


def build_tokenizer(gguf_path: Path):
    """The Hugging Face tokenizer `transformers` derives from a GGUF's vocabulary."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _hf_weight_names(config) -> list[str]:
    import torch
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):
        skeleton = Gemma3ForCausalLM(config)
    names = list(skeleton.state_dict())
    if config.tie_word_embeddings:
        names.remove("lm_head.weight")
    return names
