"""The one exception type users see: a clear message, a non-zero exit, no traceback."""


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
