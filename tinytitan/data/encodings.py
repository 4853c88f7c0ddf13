"""Text encodings of dataset files: check an encoding's name, decode a line or a whole file, and say
which byte of which line is not valid text. UTF-8 unless `DataSpec.encoding` says otherwise; "cesu-8"
(UTF-8 with surrogate pairs) is written here because Python has no codec for it."""

from __future__ import annotations

import codecs

from tinytitan.errors import TinyTitanError

ENCODING_HINT = "say the file's encoding with --encoding (a recipe: encoding = \"...\"), e.g. latin-1, cp1252, cesu-8"


def check_encoding(encoding: str) -> None:
    if encoding != "cesu-8":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise TinyTitanError(f"encoding {encoding!r} is not one Python knows (e.g. utf-8, latin-1, cp1252, "
                                 f"utf-16, or cesu-8)") from None


def decode_line(raw: bytes, encoding: str = "utf-8") -> str:
    """Bytes as text in `encoding`. "cesu-8" is UTF-8 whose characters beyond U+FFFF are written as two
    3-byte surrogates (Java's modified UTF-8, old MySQL exports; the Snips NLU data holds a few):
    read as UTF-8 with the surrogate pairs joined. Raises UnicodeDecodeError on bytes it cannot read."""
    if encoding != "cesu-8":
        return raw.decode(encoding)
    text = raw.decode("utf-8", "surrogatepass")
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    lone = next((i for i, ch in enumerate(joined) if "\ud800" <= ch <= "\udfff"), None)
    if lone is not None:
        start = len(joined[:lone].encode("utf-8", "surrogatepass"))
        raise UnicodeDecodeError("cesu-8", raw, start, start + 3, "a lone surrogate")
    return joined


def decode(raw: bytes, path, encoding: str = "utf-8") -> str:
    """A whole file's bytes as text, or a one-line error naming the file, the line and the byte."""
    check_encoding(encoding)
    try:
        return decode_line(raw, encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1)
        offset = UnicodeDecodeError(error.encoding, error.object, column, column + 1, error.reason)
        raise TinyTitanError(f"{path}:{line}: {undecodable(offset, encoding, raw[error.start])}") from None


def undecodable(error: UnicodeDecodeError, encoding: str, byte: int | None = None) -> str:
    """Why a line was refused: the bad byte, where it sits in the line, and how to name the encoding."""
    byte = error.object[error.start] if byte is None else byte
    return f"not valid {encoding_name(encoding)} (byte 0x{byte:02X} at byte {error.start + 1} of the line); " \
           f"{ENCODING_HINT}"


def encoding_name(encoding: str) -> str:
    """The encoding as a message names it: "UTF-8" for any spelling of it, else as given."""
    return "UTF-8" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding


def is_wide(encoding: str) -> bool:
    """UTF-16/32: a file's lines are not byte lines, so the whole file is decoded first."""
    return encoding != "cesu-8" and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
