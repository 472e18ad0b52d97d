"""Typed errors and the exit codes they map to.

Errors about one file are data (recorded in the report, the run continues);
errors about the run (usage, configuration, missing weights) are exceptions
that stop it before any output is written.

Example:
    >>> from anonymize.errors import UsageError, EXIT_USAGE
    >>> UsageError("bad option").exit_code == EXIT_USAGE
    True
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for a run stopped by Ctrl-C (or SIGTERM here)


class AnonymizeError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = EXIT_USAGE


class UsageError(AnonymizeError):
    """Bad options or configuration; the run does not start (exit 2)."""

    exit_code = EXIT_USAGE


class MethodUnavailable(UsageError):
    """A method, detector or recognizer that cannot run here (exit 2)."""


class WeightsMissing(UsageError):
    """Pretrained weights are absent; the message names the fetch command (exit 2)."""

    def __init__(self, names: list[str] | tuple[str, ...], purpose: str = "") -> None:
        self.names = list(names)
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"missing pretrained weights{what}: {', '.join(self.names)}. "
            f"Run: anonymize fetch-weights {' '.join(self.names)}"
            " (or point ANONYMIZE_WEIGHTS at a folder that holds them)"
        )


class OutputError(AnonymizeError):
    """The output or report location cannot be written: not writable, or the disk (or a
    quota, or the file-size limit) filled up mid-run. The run stops; finished outputs and
    their records are kept, no partial file is left (exit 2)."""

    exit_code = EXIT_USAGE


class ImageError(AnonymizeError):
    """A problem with one input file. Recorded per file; the run continues.

    ``code`` is a short stable token for scripts (e.g. ``empty-file``,
    ``not-an-image``, ``truncated``, ``too-large``, ``unreadable``).
    """

    exit_code = EXIT_SOME_FAILED

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
