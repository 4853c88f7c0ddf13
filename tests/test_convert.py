"""GGUF <-> transformers for Gemma 3: our conversion must reproduce the transformers model exactly."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from tinytitan.model.convert import gemma3_config, layer_is_sliding
from tinytitan.model.gguf import read_gguf
from tinytitan.model.registry import resolve
from tinytitan.model.torch_model import load_torch_model
from tests.conftest import run_cli


def test_config_round_trips(tiny):
    path, reference = tiny
    config = gemma3_config(read_gguf(path))
    ref = reference.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "layer_types", "query_pre_attn_scalar",
                "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert getattr(config, key) == getattr(ref, key), key
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000.0


def test_torch_path_matches_transformers_logits(tiny):
    """The tiny model written to GGUF (F32) and loaded back through our path gives the same logits."""
    path, reference = tiny
    ours = load_torch_model(resolve(str(path)))
    ids = torch.tensor([[2, 300, 301, 302, 310, 320, 330, 340, 350, 360, 370, 380, 390, 300, 301, 302, 305]])
    with torch.no_grad():
        expected = reference(ids).logits
        actual = ours(ids).logits
    # 17 tokens > the sliding window of 8: both attention kinds are exercised
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert expected.std() > 1.0  # random weights large enough to make the comparison meaningful


def test_sliding_pattern_follows_llama_cpp():
    class Fake:
        def __init__(self, meta):
            self.metadata = meta

        def arch_key(self, key, default=None):
            return self.metadata.get(key, default)

    # llama.cpp: with a window and no explicit pattern, every 6th layer is global
    sliding = layer_is_sliding(Fake({"block_count": 18, "attention.sliding_window": 512}))
    assert [i for i, s in enumerate(sliding) if not s] == [5, 11, 17]
    assert layer_is_sliding(Fake({"block_count": 3, "attention.sliding_window": 0})) == [False] * 3
    explicit = Fake({"block_count": 2, "attention.sliding_window": 8, "attention.sliding_window_pattern": [True, False]})
    assert layer_is_sliding(explicit) == [True, False]


def test_conversion_is_cached(tiny):
    from tinytitan.model.torch_model import cache_dir

    ref = resolve(str(tiny[0]))
    load_torch_model(ref)
    folder = cache_dir(ref)
    assert (folder / "manifest.json").exists() and (folder / "model.safetensors").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    load_torch_model(ref)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


def test_wrong_architecture_for_torch_is_one_line(tmp_path):
    path = tmp_path / "llama-arch.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run_cli("generate", "hello", "--engine", "torch", "--model", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: architecture is 'llama', but the torch engine (training) needs a Gemma 3 model "
        f"(general.architecture = 'gemma3')"]
    # the llama engine tries it (it accepts what llama.cpp accepts) and reports the refusal in one line
    result = run_cli("generate", "hello", "--model", str(path))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {path}: llama.cpp cannot load this model (Failed to load model from file: {path})"]


@pytest.mark.real_model
def test_real_model_config_matches_gemma_3_270m():
    config = gemma3_config(resolve("gemma-3-270m").gguf)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.vocab_size) == (640, 18, 4, 1, 256, 262144)
    assert config.sliding_window == 512 and config.query_pre_attn_scalar == 256
    assert config.layer_types.count("full_attention") == 3
