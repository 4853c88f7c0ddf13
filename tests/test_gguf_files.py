"""GGUF validation: every malformed file is a one-line error naming the path and the problem."""

from __future__ import annotations

import struct

import pytest

from tinytitan.errors import ModelFileError
from tinytitan.model.gguf import read_gguf
from tests.conftest import run_cli


def test_reads_the_tiny_model(tiny):
    g = read_gguf(tiny[0])
    assert g.architecture == "gemma3"
    assert g.arch_key("block_count") == 2
    tokens = g.array("tokenizer.ggml.tokens")
    assert tokens[:3] == ["<pad>", "<eos>", "<bos>"]
    assert len(tokens) == next(t for t in g.tensors if t.name == "token_embd.weight").shape[1]
    names = {t.name for t in g.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(bytes(range(256)) * 40), "not a GGUF file"),
    (lambda p: p.write_bytes(b"GGUF"), "too short"),
    (lambda p: p.write_bytes(b"GGUF" + struct.pack("<IQQ", 99, 0, 0)), "unsupported GGUF version 99"),
    (lambda p: p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0)), "more than a"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_bad_files_are_named_errors(tmp_path, make, message):
    path = tmp_path / "model.gguf"
    make(path)
    with pytest.raises(ModelFileError, match=message) as caught:
        read_gguf(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fraction", [0.001, 0.02, 0.3, 0.9, 0.999])
def test_truncated_gguf_is_an_error(tiny, tmp_path, fraction):
    data = tiny[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="truncated"):
        read_gguf(cut)


def test_corrupt_string_length_is_an_error(tiny, tmp_path):
    data = bytearray(tiny[0].read_bytes())
    # the first metadata key's length field sits right after the 24-byte header
    data[24:32] = struct.pack("<Q", 2**40)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="runs past the end"):
        read_gguf(bad)


def test_misaligned_tensor_offset_is_an_error(tiny, tmp_path):
    g = read_gguf(tiny[0])
    data = bytearray(tiny[0].read_bytes())
    # find the tensor table entry of the second tensor and nudge its offset by one byte
    name = g.tensors[1].name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    n_dims = struct.unpack_from("<I", data, at + 8 + len(name))[0]
    offset_at = at + 8 + len(name) + 4 + 8 * n_dims + 4
    old = struct.unpack_from("<Q", data, offset_at)[0]
    struct.pack_into("<Q", data, offset_at, old + 1)
    bad = tmp_path / "misaligned.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="not aligned"):
        read_gguf(bad)


@pytest.mark.parametrize("content", [None, b"", b"\x00garbage" * 1000])
def test_cli_bad_model_is_one_line_exit_1(tmp_path, content):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    for verb in (["info", str(path)], ["generate", "hi", "--model", str(path)],
                 ["generate", "hi", "--engine", "torch", "--model", str(path)]):
        result = run_cli(*verb)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_cli_truncated_model_is_one_line(tiny, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny[0].read_bytes()[:5000])
    result = run_cli("generate", "hi", "--model", str(cut))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "truncated" in result.stderr


def test_unknown_model_name_is_an_error():
    result = run_cli("info", "gemma-9-huge")
    assert result.returncode == 1
    assert "unknown model" in result.stderr and "gemma-3-270m" in result.stderr


def read_gguf_from_bytes(data: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.gguf"
        path.write_bytes(data)
        return read_gguf(path)


def malformed_corpus(good: bytes) -> dict[str, bytes]:
    """>= 15 broken variants of a valid GGUF: truncations at every section, and corrupt fields."""
    g = read_gguf_from_bytes(good)
    data_start = min(t.offset for t in g.tensors)
    first_key_len = struct.unpack_from("<Q", good, 24)[0]
    first_value_type_at = 24 + 8 + first_key_len
    name = g.tensors[0].name.encode()
    info_at = good.index(struct.pack("<Q", len(name)) + name)
    n_dims_at = info_at + 8 + len(name)
    n_dims = struct.unpack_from("<I", good, n_dims_at)[0]
    dims_at, type_at = n_dims_at + 4, n_dims_at + 4 + 8 * n_dims
    offset_at = type_at + 4

    def patch(at: int, fmt: str, value) -> bytes:
        out = bytearray(good)
        struct.pack_into(fmt, out, at, value)
        return bytes(out)

    return {
        "magic only": good[:4],
        "truncated in header": good[:16],
        "truncated in first key": good[:30],
        "truncated in metadata": good[:info_at - 100],
        "truncated in tensor infos": good[:info_at + 10],
        "truncated before data": good[:data_start],
        "truncated in data": good[:data_start + (len(good) - data_start) // 2],
        "bad magic": b"GGUX" + good[4:],
        "bad version": patch(4, "<I", 7),
        "huge tensor count": patch(8, "<Q", 2**62),
        "huge metadata count": patch(16, "<Q", 2**62),
        "string length 2^63": patch(24, "<Q", 2**63),
        "unknown value type": patch(first_value_type_at, "<I", 99),
        "zero dimensions": patch(n_dims_at, "<I", 0),
        "five dimensions": patch(n_dims_at, "<I", 5),
        "dims that overflow": _every_dim(good, dims_at, n_dims, 2**40),
        "unknown ggml type": patch(type_at, "<I", 12345),
        "offset past end of file": patch(offset_at, "<Q", len(good) * 4 // 32 * 32),
        "misaligned offset": patch(offset_at, "<Q", struct.unpack_from("<Q", good, offset_at)[0] + 1),
    }


def _every_dim(good: bytes, dims_at: int, n_dims: int, value: int) -> bytes:
    out = bytearray(good)
    for d in range(n_dims):
        struct.pack_into("<Q", out, dims_at + 8 * d, value)
    return bytes(out)


def test_malformed_gguf_corpus(tiny, tmp_path):
    """Every broken file is a one-line ModelFileError in well under 2 s; the process survives."""
    import time

    corpus = malformed_corpus(tiny[0].read_bytes())
    assert len(corpus) >= 15
    for label, data in corpus.items():
        path = tmp_path / f"{label.replace(' ', '_')}.gguf"
        path.write_bytes(data)
        start = time.perf_counter()
        with pytest.raises(ModelFileError) as caught:
            read_gguf(path)
        assert time.perf_counter() - start < 2.0, label
        message = str(caught.value)
        assert message.startswith(str(path)) and "\n" not in message, (label, message)


def test_malformed_corpus_never_reaches_llama_cpp(tiny, tmp_path):
    corpus = malformed_corpus(tiny[0].read_bytes())
    for label in ("dims that overflow", "offset past end of file", "unknown ggml type", "string length 2^63"):
        path = tmp_path / f"{label.replace(' ', '_')}.gguf"
        path.write_bytes(corpus[label])
        result = run_cli("generate", "hi", "--model", str(path))
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, label


def _mutate(good: bytes, header_end: int, rng) -> bytes:
    """One of four mutations, mostly of the header (where the reader's decisions are): random bytes
    overwritten, an 8-byte field set to an extreme, a cut, or bytes inserted or removed."""
    data = bytearray(good)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(header_end)] = rng.randrange(256)
    elif kind == 1:
        at = rng.randrange(0, header_end - 8)
        value = rng.choice([0, 1, 2**31, 2**32 + 5, 2**63, 2**64 - 1, rng.getrandbits(64)])
        struct.pack_into("<Q", data, at, value)
    elif kind == 2:
        del data[rng.randrange(len(data)):]
    else:
        at = rng.randrange(header_end)
        if rng.random() < 0.5:
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            del data[at:at + rng.randint(1, 16)]
    return bytes(data)


def test_ten_thousand_mutated_ggufs_each_load_or_fail_in_one_line(tiny, tmp_path):
    """A seeded mutation fuzzer over what reads a model file (the reader, `tinytitan info`'s description,
    the tokenizer check): every mutant of the tiny model loads, or is one ModelFileError / TinyTitanError
    line naming the file; none takes 2 s or raises anything else."""
    import json
    import random
    import time

    from tinytitan.errors import TinyTitanError
    from tinytitan.model.info import describe
    from tinytitan.model.registry import resolve
    from tinytitan.shrink.vocabulary import Vocab

    good = tiny[0].read_bytes()
    header_end = min(t.offset for t in read_gguf(tiny[0]).tensors)
    rng = random.Random(20261130)
    path = tmp_path / "mutant.gguf"
    outcomes = {"loaded": 0, "refused": 0}
    slowest = 0.0
    for case in range(10_000):
        path.write_bytes(_mutate(good, header_end, rng))
        start = time.perf_counter()
        try:
            ref = resolve(str(path))
            json.dumps(describe(ref))
            for key in ref.gguf.metadata:
                ref.gguf.get(key)  # the arrays left in the file are read too
            Vocab.from_gguf(ref.gguf)
            outcomes["loaded"] += 1
        except TinyTitanError as error:  # ModelFileError is one
            message = str(error)
            assert message.startswith(str(path)) and "\n" not in message, (case, message)
            outcomes["refused"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 2.0
    assert outcomes["loaded"] > 500 and outcomes["refused"] > 5000, outcomes  # both ways were exercised (~12% load)
