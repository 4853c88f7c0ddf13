"""A tiny random Gemma 3 (2 layers, hidden 64, ~400-piece vocabulary), written as a real GGUF.

Tests use it to exercise every path the 270M takes, in milliseconds: GGUF validation, conversion
to torch, the llama.cpp engine, the chat format, tokenizer agreement. The vocabulary is built
here (no downloads): Gemma's control tokens, its user-defined newline token, 256 byte-fallback
tokens, and sentencepiece-style pieces whose merges are implied by their order, scored so that
llama.cpp's tokenizer and the Hugging Face one derived from the file cut text the same way.
Layer 0 uses sliding-window attention (window 8) and layer 1 global attention, so both kinds
of layer are covered by 2 layers.
"""

from __future__ import annotations

import string
from pathlib import Path

SPACE = "\u2581"  # sentencepiece's visible space
CONTROL_PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
USER_DEFINED_PIECES = ["\n", "\n\n"]
WORDS = ["the", "and", "of", "to", "in", "is", "was", "it", "he", "she", "cat", "dog", "sat", "on", "mat",
         "user", "model", "hello", "world", "red", "blue", "one", "two", "cup", "salt", "sugar"]
TOKEN_TYPE = {"normal": 1, "unknown": 2, "control": 3, "user_defined": 4, "byte": 6}


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """`(tokens, scores, token_types)` in GGUF's `tokenizer.ggml.*` form."""
    tokens, types = [], []
    for piece in CONTROL_PIECES:
        tokens.append(piece)
        types.append(TOKEN_TYPE["unknown" if piece == "<unk>" else "control"])
    for piece in USER_DEFINED_PIECES:
        tokens.append(piece)
        types.append(TOKEN_TYPE["user_defined"])
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TOKEN_TYPE["byte"])
    chars = [SPACE] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces = list(chars)
    for word in WORDS:  # every prefix of "▁word" and of "word", so each piece is a merge of two
        for text in (SPACE + word, word):
            for end in range(2, len(text) + 1):
                if text[:end] not in pieces:
                    pieces.append(text[:end])
    tokens += pieces
    types += [TOKEN_TYPE["normal"]] * len(pieces)
    # earlier pieces merge first; llama.cpp reads that from the scores, transformers from the order
    scores = [0.0 if t != TOKEN_TYPE["normal"] else -float(i) for i, t in enumerate(types)]
    return tokens, scores, types


def tiny_tokenizer_fields() -> dict[str, object]:
    tokens, scores, types = tiny_vocab()
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }


def tiny_config(vocab_size: int | None = None):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size or len(tiny_vocab()[0]),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        query_pre_attn_scalar=16,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )


def tiny_model(seed: int = 0):
    """A `Gemma3ForCausalLM` with random weights large enough to give peaked, distinct logits."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.3 if "norm" in name else 0.15
            param.normal_(0.0, std)
    return model


def write_tiny_gguf(path: Path, seed: int = 0, dtype: str = "f32"):
    """Write the tiny model as a GGUF; returns the torch model it was written from."""
    from tinytitan.model.convert import write_gemma3_gguf

    model = tiny_model(seed)
    write_gemma3_gguf(Path(path), model.config, model.state_dict(), tiny_tokenizer_fields(),
                      dtype=dtype, name="tinytitan tiny random Gemma 3")
    return model
