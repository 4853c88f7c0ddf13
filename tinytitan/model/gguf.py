"""Validate and read GGUF files, before anything hands them to llama.cpp or PyTorch.

The format's constants (magic, value types, quant block sizes, key names) come from the `gguf`
package. What is written here is one validating pass over the header, because `gguf.GGUFReader`
takes ~9 s on Gemma's 262,144-token vocabulary (it builds a field object per string) and does
not bounds-check what it reads. The pass checks: magic, version, counts, every string length and
its UTF-8, value types, tensor dimensions and types, alignment, and that every tensor's data lies
inside the file without overlapping another. Big arrays (the vocabulary) are skipped on the way
and read on demand. A problem is a `ModelFileError` naming the path and what is wrong.

Writing goes through `gguf.GGUFWriter` (see `convert.write_gemma3_gguf`).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from tinytitan.errors import ModelFileError

MAX_DIMS = 4  # GGML_MAX_DIMS
SUPPORTED_VERSIONS = (2, 3)

# scalar value type -> struct format (little-endian)
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES = {t: np.dtype(f) for t, f in _SCALAR_FORMATS.items()}
# arrays longer than this are kept as references and read on demand (the vocabulary, its scores)
_EAGER_ARRAY_LIMIT = 1024


@dataclass(frozen=True)
class ArrayRef:
    """A metadata array left in the file: where it starts, its element type and length."""

    offset: int
    element_type: GGUFValueType
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: fastest-moving dimension first, as llama.cpp prints it
    ggml_type: GGMLQuantizationType
    offset: int  # absolute, from the start of the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


@dataclass
class GGUFFile:
    """A validated GGUF header. Metadata values are Python scalars, lists, or `ArrayRef`s."""

    path: Path
    version: int
    file_size: int
    alignment: int
    metadata: dict[str, object]
    tensors: list[TensorInfo]
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_key(self, key: str, default=None):
        """`{arch}.{key}`, e.g. `arch_key("context_length")` -> `gemma3.context_length`."""
        return self.get(f"{self.architecture}.{key}", default)

    def get(self, key: str, default=None):
        value = self.metadata.get(key, default)
        if isinstance(value, ArrayRef):
            return self.array(key)
        return value

    def array(self, key: str):
        """A metadata array in full: a list of strings, or a numpy array of numbers."""
        if key in self._cache:
            return self._cache[key]
        value = self.metadata[key]
        if not isinstance(value, ArrayRef):
            return value
        with _open(self.path) as buf:
            reader = _Reader(buf, self.path)
            reader.pos = value.offset
            result = reader.array_values(value.element_type, value.count)
        self._cache[key] = result
        return result

    def tensor_data(self, info: TensorInfo) -> np.ndarray:
        """The raw bytes of a tensor (a read-only memory map), as `gguf.quants.dequantize` wants them."""
        block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.n_bytes,))
        if info.ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            dtype = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                     GGMLQuantizationType.BF16: np.uint16}[info.ggml_type]
            return raw.view(dtype).reshape(tuple(reversed(info.shape)))
        rows = tuple(reversed(info.shape[1:]))
        return raw.reshape(rows + (info.shape[0] // block_size * type_size,))


def read_gguf(path: str | Path) -> GGUFFile:
    """Validate a GGUF file's header and tensor table. Raises `ModelFileError` with the reason."""
    path = Path(path)
    check_exists(path)
    with _open(path) as buf:
        return _parse(buf, path)


def check_exists(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file (expected a GGUF model file)")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory (expected a GGUF model file)")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes), expected a GGUF model")


class _open:
    """A read-only memory map of the whole file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> mmap.mmap:
        try:
            self.file = open(self.path, "rb")
        except OSError as error:
            raise ModelFileError(f"{self.path}: cannot read ({error.strerror})") from None
        self.buf = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        return self.buf

    def __exit__(self, *exc) -> None:
        self.buf.close()
        self.file.close()


class _Reader:
    """Bounds-checked little-endian reads from a buffer; every overrun names the path."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, problem: str):
        raise ModelFileError(f"{self.path}: {problem}")

    def member(self, kind, number: int, problem: str):
        """`kind(number)` for an enum of the `gguf` package, or `fail(problem)` when it has no such member."""
        try:
            return kind(number)
        except ValueError:
            self.fail(problem)

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes < 0 or self.pos + n_bytes > self.size:
            self.fail(f"truncated or corrupt GGUF: {what} at byte {self.pos} runs past the end "
                      f"of the file ({self.size} bytes)")

    def scalar(self, fmt: str, what: str):
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def string(self, what: str) -> str:
        length = self.scalar("<Q", f"length of {what}")
        self.need(length, f"{what} ({length} bytes)")
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"corrupt GGUF: {what} is not valid UTF-8")

    def skip_strings(self, count: int, what: str) -> None:
        for _ in range(count):
            length = self.scalar("<Q", f"string length in {what}")
            self.need(length, f"string in {what}")
            self.pos += length

    def value(self, value_type: int, key: str):
        value_type = self.member(GGUFValueType, value_type,
                                 f"corrupt GGUF: metadata {key!r} has unknown value type {value_type}")
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type], f"metadata {key!r}")
        if value_type == GGUFValueType.STRING:
            return self.string(f"metadata {key!r}")
        element_type = self.scalar("<I", f"array type of {key!r}")
        count = self.scalar("<Q", f"array length of {key!r}")
        element_type = self.member(GGUFValueType, element_type, f"corrupt GGUF: metadata array {key!r} "
                                                                f"has unknown element type {element_type}")
        if element_type == GGUFValueType.ARRAY:
            self.fail(f"unsupported GGUF: metadata {key!r} is an array of arrays")
        if count <= _EAGER_ARRAY_LIMIT:
            return self.array_values(element_type, count, key)
        ref = ArrayRef(self.pos, element_type, count)
        if element_type == GGUFValueType.STRING:
            self.skip_strings(count, f"metadata {key!r}")
        else:
            n_bytes = count * _NUMPY_DTYPES[element_type].itemsize
            self.need(n_bytes, f"metadata array {key!r}")
            self.pos += n_bytes
        return ref

    def array_values(self, element_type: GGUFValueType, count: int, key: str = "array"):
        if element_type == GGUFValueType.STRING:
            return [self.string(f"element of {key!r}") for _ in range(count)]
        dtype = _NUMPY_DTYPES[element_type]
        self.need(count * dtype.itemsize, f"metadata array {key!r}")
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return values if count > _EAGER_ARRAY_LIMIT else values.tolist()


def _parse(buf, path: Path) -> GGUFFile:
    reader = _Reader(buf, path)
    if reader.size < 24:
        reader.fail(f"too short to be a GGUF file ({reader.size} bytes)")
    magic = reader.scalar("<I", "magic")
    if magic != GGUF_MAGIC:
        reader.fail(f"not a GGUF file (starts with {bytes(buf[:4])!r}, expected b'GGUF')")
    version = reader.scalar("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        reader.fail(f"unsupported GGUF version {version} (expected one of {SUPPORTED_VERSIONS})")
    tensor_count = reader.scalar("<Q", "tensor count")
    kv_count = reader.scalar("<Q", "metadata count")
    # every tensor entry takes >= 24 bytes, every key/value pair >= 12: cheap sanity on the counts
    if tensor_count * 24 + kv_count * 12 > reader.size:
        reader.fail(f"corrupt GGUF: header claims {tensor_count} tensors and {kv_count} metadata "
                    f"entries, more than a {reader.size}-byte file can hold")

    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = reader.string("metadata key")
        if key in metadata:
            reader.fail(f"corrupt GGUF: duplicate metadata key {key!r}")
        value_type = reader.scalar("<I", f"value type of {key!r}")
        metadata[key] = reader.value(value_type, key)

    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        reader.fail(f"corrupt GGUF: general.alignment is {alignment!r}, expected a power of two")

    entries = []
    names = set()
    for index in range(tensor_count):
        name = reader.string(f"name of tensor {index}")
        if name in names:
            reader.fail(f"corrupt GGUF: duplicate tensor name {name!r}")
        names.add(name)
        n_dims = reader.scalar("<I", f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            reader.fail(f"corrupt GGUF: tensor {name!r} has {n_dims} dimensions (expected 1..{MAX_DIMS})")
        shape = tuple(reader.scalar("<Q", f"shape of {name!r}") for _ in range(n_dims))
        raw_type = reader.scalar("<I", f"type of {name!r}")
        offset = reader.scalar("<Q", f"data offset of {name!r}")
        ggml_type = reader.member(GGMLQuantizationType, raw_type,
                                  f"unsupported GGUF: tensor {name!r} has unknown ggml type {raw_type}")
        entries.append((name, shape, ggml_type, offset))

    data_start = (reader.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, shape, ggml_type, offset in entries:
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_elements = math.prod(shape)  # Python ints: a corrupt shape cannot wrap around
        if any(d == 0 for d in shape) or shape[0] % block_size:
            reader.fail(f"corrupt GGUF: tensor {name!r} has shape {list(shape)}, not whole "
                        f"{ggml_type.name} blocks of {block_size}")
        if offset % alignment:
            reader.fail(f"corrupt GGUF: tensor {name!r} data offset {offset} is not aligned to {alignment}")
        n_bytes = n_elements // block_size * type_size
        start = data_start + offset
        if start + n_bytes > reader.size:
            reader.fail(f"truncated GGUF: tensor {name!r} needs bytes {start}..{start + n_bytes}, "
                        f"but the file has {reader.size} bytes")
        tensors.append(TensorInfo(name, shape, ggml_type, start, n_bytes))

    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            reader.fail(f"corrupt GGUF: tensors {first!r} and {second!r} overlap")
    return GGUFFile(path, version, reader.size, alignment, metadata, tensors)
