"""Gemma 3 between GGUF and `transformers`: config, tensor names, and weights, both directions.

GGUF -> torch: `gemma3_config(gguf)` builds a `Gemma3TextConfig` from the file's metadata,
`gemma3_state_dict(gguf)` dequantizes every tensor (`gguf.quants.dequantize`) under its Hugging
Face name. torch -> GGUF: `write_gemma3_gguf` writes F32/F16/BF16 tensors with `gguf.GGUFWriter`.

Two facts of the mapping, both from llama.cpp's `convert_hf_to_gguf.py`:
- Gemma's RMSNorm scales by (1 + w); llama.cpp stores (1 + w), Hugging Face stores w.
- Tensor names come from `gguf.get_tensor_name_map`, never from a table of our own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import gguf

from tinytitan.errors import ModelFileError
from tinytitan.model.gguf import GGUFFile

ARCH = "gemma3"
DEFAULT_SWA_PATTERN = 6  # llama.cpp: every 6th Gemma 3 layer attends globally
DEFAULT_SWA_ROPE_BASE = 10_000.0  # llama.cpp's rope_freq_base_train_swa default
CONTROL_TOKEN = 3  # gguf.TokenType.CONTROL

TorchDtype = str  # "f32" | "f16" | "bf16"


def require_gemma3(g: GGUFFile, purpose: str) -> None:
    if g.architecture != ARCH:
        raise ModelFileError(
            f"{g.path}: architecture is {g.architecture!r}, but {purpose} needs a Gemma 3 model "
            f"(general.architecture = 'gemma3')"
        )


MAX_LAYERS = 1024  # far more than any Gemma 3; a larger count in a file is corruption


def metadata_int(g: GGUFFile, key: str, low: int, high: int, default=None) -> int:
    """`{arch}.{key}` as a whole number in [low, high]; one line naming the file and key otherwise."""
    value = g.arch_key(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelFileError(f"{g.path}: metadata {g.architecture}.{key} is {value!r}, expected a whole number in "
                             f"[{low}, {high}]")
    return value


def layer_is_sliding(g: GGUFFile) -> list[bool]:
    """Which layers use sliding-window attention, as llama.cpp decides it."""
    n_layers = metadata_int(g, "block_count", 1, MAX_LAYERS)
    if not g.arch_key("attention.sliding_window"):
        return [False] * n_layers
    pattern = g.arch_key("attention.sliding_window_pattern", DEFAULT_SWA_PATTERN)
    if isinstance(pattern, list):
        return [bool(x) for x in pattern]
    pattern = metadata_int(g, "attention.sliding_window_pattern", 0, MAX_LAYERS, DEFAULT_SWA_PATTERN)
    # llama.cpp set_swa_pattern(n): layer il is dense when il % n == n - 1
    return [pattern == 0 or (il % pattern) < (pattern - 1) for il in range(n_layers)]


def gemma3_config(g: GGUFFile):
    """A `Gemma3TextConfig` equivalent to what llama.cpp builds from this file's metadata."""
    from transformers import Gemma3TextConfig

    require_gemma3(g, "the torch engine (training)")
    try:
        hidden = int(g.arch_key("embedding_length"))
        n_heads = int(g.arch_key("attention.head_count"))
        n_layers = int(g.arch_key("block_count"))
        head_dim = int(g.arch_key("attention.key_length", hidden // n_heads))
        config = dict(
            vocab_size=_vocab_size(g),
            hidden_size=hidden,
            intermediate_size=int(g.arch_key("feed_forward_length")),
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=int(g.arch_key("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            max_position_embeddings=int(g.arch_key("context_length")),
            rms_norm_eps=_f32(g.arch_key("attention.layer_norm_rms_epsilon")),
            sliding_window=int(g.arch_key("attention.sliding_window") or 0) or None,
        )
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as missing:
        raise ModelFileError(f"{g.path}: Gemma 3 metadata is incomplete or invalid ({missing})") from None
    sliding = layer_is_sliding(g)
    config["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    full_rope = {"rope_type": "default", "rope_theta": float(g.arch_key("rope.freq_base", 1e6))}
    factor = g.arch_key("rope.scaling.factor")
    if g.arch_key("rope.scaling.type") == "linear" and factor:
        full_rope = {"rope_type": "linear", "rope_theta": full_rope["rope_theta"], "factor": float(factor)}
    config["rope_parameters"] = {
        "full_attention": full_rope,
        "sliding_attention": {"rope_type": "default",
                              "rope_theta": float(g.arch_key("rope.freq_base_swa", DEFAULT_SWA_ROPE_BASE))},
    }
    # llama.cpp: attention scale 1/sqrt(head_dim), except Gemma 3 27B (62 layers): 1/sqrt(hidden/heads)
    config["query_pre_attn_scalar"] = hidden // n_heads if n_layers == 62 else head_dim
    config["final_logit_softcapping"] = g.arch_key("final_logit_softcapping") or None
    config["attn_logit_softcapping"] = None
    config["hidden_activation"] = "gelu_pytorch_tanh"
    config["tie_word_embeddings"] = not any(t.name == "output.weight" for t in g.tensors)
    for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        value = g.get(f"tokenizer.ggml.{key}")
        if value is not None:
            config[name] = int(value)
    return Gemma3TextConfig(**config)


def _f32(value) -> float:
    """A float32 from the file as the decimal it was written from (1e-06, not 9.99999997e-07)."""
    return float(f"{float(value):.7g}")


def _vocab_size(g: GGUFFile) -> int:
    for t in g.tensors:
        if t.name == "token_embd.weight":
            return int(t.shape[1])
    raise ModelFileError(f"{g.path}: no token_embd.weight tensor (not a usable Gemma 3 model)")


def hf_to_gguf_names(n_layers: int) -> Callable[[str], str]:
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, n_layers)

    def name(hf_name: str) -> str:
        mapped = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise KeyError(f"no GGUF name for tensor {hf_name!r}")
        return mapped

    return name


def is_norm(gguf_name: str) -> bool:
    return gguf_name.endswith("norm.weight")


def gemma3_state_dict(g: GGUFFile, hf_names: Iterable[str], progress: Callable[[int], None] | None = None):
    """Dequantized fp32 weights from the GGUF, keyed by the Hugging Face names asked for."""
    import torch

    n_layers = int(g.arch_key("block_count"))
    to_gguf = hf_to_gguf_names(n_layers)
    by_name = {t.name: t for t in g.tensors}
    state = {}
    for hf_name in hf_names:
        gguf_name = to_gguf(hf_name)
        info = by_name.get(gguf_name)
        if info is None:
            raise ModelFileError(f"{g.path}: tensor {gguf_name} is missing (needed for {hf_name})")
        values = gguf.quants.dequantize(g.tensor_data(info), info.ggml_type)
        values = np.array(values, dtype=np.float32).reshape(tuple(reversed(info.shape)))  # a writable copy
        if is_norm(gguf_name):
            values = values - 1.0
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(values))
        if progress:
            progress(info.n_bytes)
    return state


def tokenizer_fields(g: GGUFFile) -> dict[str, object]:
    """Every `tokenizer.*` metadata value of the file, arrays read in full (for writing a copy)."""
    return {key: g.get(key) for key in g.metadata if key.startswith("tokenizer.")}


# ---------------------------------------------------------------------------------------------
# torch -> GGUF

_GGML_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
               "bf16": gguf.GGMLQuantizationType.BF16}
_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16}


def write_gemma3_gguf(path: Path, config, state_dict: dict, tokenizer: dict[str, object], *,
                      dtype: TorchDtype = "f32", name: str = "tinytitan", extra: dict | None = None) -> None:
    """Write a Gemma 3 GGUF that llama.cpp loads: metadata, tokenizer fields, F32/F16/BF16 tensors."""
    import torch

    if dtype not in _GGML_TYPES:
        raise ValueError(f"dtype must be one of {sorted(_GGML_TYPES)}, not {dtype!r}")
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = config.rope_parameters
    writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    if rope["full_attention"].get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["full_attention"]["factor"])
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    expected_scale = config.hidden_size // config.num_attention_heads \
        if config.num_hidden_layers == 62 else config.head_dim
    if config.query_pre_attn_scalar != expected_scale:
        raise ValueError(f"query_pre_attn_scalar {config.query_pre_attn_scalar} is not what llama.cpp "
                         f"derives for this shape ({expected_scale})")
    for key, value in tokenizer.items():
        add_metadata(writer, key, value)
    for key, value in (extra or {}).items():
        add_metadata(writer, key, value)

    to_gguf = hf_to_gguf_names(config.num_hidden_layers)
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = to_gguf(hf_name)
        values = tensor.detach().to(torch.float32)
        if is_norm(gguf_name):
            values = values + 1.0
        # 1-D tensors (norms) stay F32, as llama.cpp's converter keeps them
        out_type = gguf.GGMLQuantizationType.F32 if values.ndim == 1 else _GGML_TYPES[dtype]
        if out_type == gguf.GGMLQuantizationType.F16:
            array = values.numpy().astype(np.float16)
        elif out_type == gguf.GGMLQuantizationType.BF16:
            array = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        else:
            array = values.numpy()
        writer.add_tensor(gguf_name, np.ascontiguousarray(array), raw_dtype=out_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_metadata(writer: gguf.GGUFWriter, key: str, value) -> None:
    """One metadata value, typed as llama.cpp reads it (whole numbers uint32/int32, floats float32, arrays)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, np.ndarray):
        writer.add_array(key, value.tolist())
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write metadata {key!r} of type {type(value).__name__}")


def count_parameters(g: GGUFFile) -> int:
    return sum(math.prod(t.shape) for t in g.tensors)
