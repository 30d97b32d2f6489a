"""rcic's errors: one base class, importable without torch or any other heavy library.

Every error rcic raises on purpose derives from :class:`RcicError`; the command line reports those
as one line (with the traceback under ``-v``). Each also derives from the built-in class that fits
it, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class RcicError(Exception):
    """Base class of the errors rcic raises about its input, configuration or state."""


class TrainingError(RcicError, RuntimeError):
    """Training cannot go on (no samples, a non-finite loss, a bad resume)."""


class StoreError(RcicError, RuntimeError):
    """A packed store is missing, incomplete or does not match the metadata."""


class ImageReadError(RcicError, OSError):
    """A PNG that cannot be read as one channel of a site."""


class InputError(RcicError, ValueError):
    """An argument, option or input value rcic cannot use; the message names it."""


class MissingFileError(RcicError, FileNotFoundError):
    """A file or folder rcic needs is not there; the message names it."""


class SubmissionError(RcicError, ValueError):
    """The inputs cannot make a valid submission; the message says which file and wells."""


class ConfigError(RcicError, ValueError):
    """A configuration key or value is wrong; the message names it."""


class OutputError(RcicError, OSError):
    """An output location rcic cannot write to; the message names it and why."""


class LogitsError(RcicError, ValueError):
    """A logits file breaks the format; the message names the file and the fault."""


class MetadataError(RcicError, ValueError):
    """A metadata table breaks a rule; the message names the file and rows."""
