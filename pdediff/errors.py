"""Exceptions with messages meant for the user: each names the file, key or value at fault
and what was expected.  The CLI prints them without a traceback and exits non-zero."""


class PdediffError(ValueError):
    """Base class of pdediff's user-facing errors."""


class DataError(PdediffError):
    """A dataset or file does not follow the expected layout (missing key, wrong shape,
    NaN/inf values, unreadable file)."""


class PdediffWarning(UserWarning):
    """Something pdediff can do but that is probably not what the user wants (e.g. a
    condition outside the range a model was trained on)."""
