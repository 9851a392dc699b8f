"""Errors raised by ravel-bench.

Every error names what was expected, what was found and how to fix it. The ones about user input
also subclass :class:`ValueError` so callers that only know builtins can still catch them.
"""


class RavelBenchError(Exception):
    """Base class of every error raised on purpose by ravel-bench."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(RavelBenchError, ValueError):
    """An argument or configuration field has a value outside its allowed range."""


class DataFormatError(RavelBenchError, ValueError):
    """A data file (release JSON, parquet, instance) does not have the documented format."""


class IncompatibleModelError(RavelBenchError, ValueError):
    """A model does not match what a featurizer, instance or hook expects."""


class SourceUnavailableError(RavelBenchError, OSError):
    """A release source (path or URL) cannot be read or downloaded."""

    hint = "download the release by hand and pass its path with --source"
