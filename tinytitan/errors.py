"""The user-facing error type. The CLI prints it as one line (`error: ...`) and exits 1.

Raise `TinyTitanError` for anything the user can fix: a bad file, flag, row or value. The
message names the thing, the value and what was expected. `assert` is for internal invariants.
"""


class TinyTitanError(Exception):
    """An error caused by user input, printed as one line without a traceback."""


class ModelFileError(TinyTitanError):
    """A model file that is missing, truncated, corrupt, or of the wrong kind."""
