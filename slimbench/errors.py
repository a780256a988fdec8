"""The one exception type users see: a clear message, a non-zero exit, no traceback."""

import errno


class SlimbenchError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``.
    """

    exit_code = 2


class UsageError(SlimbenchError):
    """Bad arguments, unknown names, malformed files (exit 2)."""


class ModelLoadError(SlimbenchError):
    """A checkpoint that cannot be loaded: missing, corrupt, pickle-only, not a causal LM."""


class CellsFailed(SlimbenchError):
    """A run finished, its report is written, but some cells failed (exit 3)."""

    exit_code = 3


class CompressionError(SlimbenchError):
    """A compression step that did not compress what it claims (exit 1)."""

    exit_code = 1


class GateFailed(SlimbenchError):
    """The candidate regressed or lacks a baseline metric (exit 1): a verdict, not an error
    in the input."""

    exit_code = 1


# errnos that only a write meets: the message can say so
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def os_error_line(e: OSError) -> str:
    """One line for an I/O error (read-only mount, full disk, no permission): the path and
    the errno, which is all the user needs to fix it; no traceback."""
    if e.errno is None:
        return str(e)
    verb = "cannot write" if e.errno in _WRITE_ERRNOS else "cannot access"
    where = f"{verb} {e.filename}" if e.filename is not None else "I/O error"
    return f"{where}: [Errno {e.errno}] {e.strerror}"
