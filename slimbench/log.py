"""Logging set-up: quiet by default (warnings only), ``-v`` for info, ``-vv`` for debug."""

from __future__ import annotations

import logging
import os
import sys
import warnings


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is emitted, not the one it was
    made with: a caller that runs ``main()`` under a redirected stderr (pytest's capsys,
    ``contextlib.redirect_stderr``) and closes that stream afterwards leaves no handler behind
    writing to a closed file ("--- Logging error --- ValueError: I/O operation on closed file")."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)  # StreamHandler's would assign self.stream

    @property
    def stream(self):
        return sys.stderr


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True,
                        handlers=[StderrHandler()])
    logging.getLogger("slimbench").setLevel(level)
    os.environ["SLIMBENCH_VERBOSITY"] = str(verbosity)  # spawned cell processes inherit it
    if verbosity <= 0:
        # transformers and HF hub chatter (progress bars for weight loading, advisory warnings)
        # is noise for a benchmark user; -v brings it back.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a hard dependency
            pass
        warnings.filterwarnings("ignore", category=FutureWarning)


def quiet_progress(show_progress: bool) -> bool | None:
    """tqdm's ``disable``: off when not asked for, and off when stderr is not a terminal (None),
    so logs and CI output stay free of progress-bar redraws."""
    return None if show_progress else True
