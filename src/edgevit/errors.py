"""The package's error types.

`UserError` and its subclasses are bad input: a missing or unreadable file, an option out of range, a
checkpoint of another model, an output that already exists. The command line prints them as one line
(exit 2) because their message already names the file or option and what was expected. Anything else
that escapes is a bug and keeps its traceback. They subclass `ValueError` so that code catching the
standard type keeps working."""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "OutputError", "DiskFullError", "MissingDependencyError",
           "MissingFileError"]


class UserError(ValueError):
    """Bad input from the user; the message names the file or option and what was expected.

    `option`: the parameter the message is about (e.g. "batch_size"). The library's text names it as a
    parameter ("batch_size 7: ..."); the command line shows the same message with the flag a user typed
    ("--batch-size 7: ..."), so library code never has to name a flag."""

    def __init__(self, message: str = "", option: str | None = None):
        super().__init__(message)
        self.message, self.option = message, option

    def __str__(self) -> str:
        return f"{self.option} {self.message}" if self.option else self.message

    def for_command_line(self, flags: dict | None = None) -> str:
        """The message with the flag of its option; `flags`: a command's own flag for a parameter where the two
        names differ (export's --quantize is the library's `precision`)."""
        if not self.option:
            return self.message
        return f"--{(flags or {}).get(self.option, self.option).replace('_', '-')} {self.message}"


class ConfigError(UserError):
    """An option (command line or config file) with a value that makes no sense."""


class DataError(UserError):
    """A data set, image, annotation, trace or results file that cannot be used as it is."""


class OutputError(UserError):
    """An output that exists (and would be replaced) or cannot be written."""


class DiskFullError(OutputError):
    """A file could not be written because its file system is full; what existed before is intact."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist, or is the wrong kind (a file for a directory)."""
