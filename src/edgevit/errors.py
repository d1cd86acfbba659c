"""The package's error types.

`UserError` and its subclasses are bad input: a missing or unreadable file, an option out of range, a
checkpoint of another model, an output that already exists. The command line prints them as one line
(exit 2) because their message already names the file or option and what was expected. Anything else
that escapes is a bug and keeps its traceback. They subclass `ValueError` so that code catching the
standard type keeps working."""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "OutputError", "MissingDependencyError", "MissingFileError"]


class UserError(ValueError):
    """Bad input from the user; the message names the file or option and what was expected."""


class ConfigError(UserError):
    """An option (command line or config file) with a value that makes no sense."""


class DataError(UserError):
    """A data set, image, annotation, trace or results file that cannot be used as it is."""


class OutputError(UserError):
    """An output that exists (and would be replaced) or cannot be written."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist, or is the wrong kind (a file for a directory)."""
