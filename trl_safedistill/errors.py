"""User errors: mistakes in what a user gave (a file, a recipe key, a flag), reported in one line.

A :class:`UserError` is a problem the user can fix without reading code: its message names the file,
the line and the field where known, and says what to change. Every command runs under
:func:`run_command`, which prints such an error as one line (``trl-safedistill: error: ...``) and
returns :data:`EXIT_USER_ERROR`; with ``--debug`` anywhere on the command line (or
``TRL_SAFEDISTILL_DEBUG=1`` in the environment) the error propagates with its full traceback instead.
Anything that is not a :class:`UserError` is a bug and always keeps its traceback.

This module is the package's lowest layer: it imports nothing from it, so every module may raise
:class:`UserError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

#: Exit status of a command stopped by a user error (argparse's status for a bad command line).
EXIT_USER_ERROR = 2

#: The command-line flag (accepted anywhere on the command line) that keeps tracebacks of user errors.
DEBUG_FLAG = "--debug"

#: The environment variable that does the same, for entry points without ``trl-safedistill`` in front
#: (``accelerate launch -m trl_safedistill.train``).
DEBUG_ENV = "TRL_SAFEDISTILL_DEBUG"


class UserError(ValueError):
    """A mistake in the user's input, with a message that names where it is and how to fix it.

    A ``ValueError`` so that code which already handles bad values (``except ValueError``) handles it too.
    """


def one_line(error: BaseException) -> str:
    """The error's message on one line (YAML and JSON parsers put positions on lines of their own)."""
    return " ".join(str(error).split()) or type(error).__name__


def pop_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without any ``--debug``, and whether it held one or ``TRL_SAFEDISTILL_DEBUG`` is set."""
    rest = [arg for arg in argv if arg != DEBUG_FLAG]
    debug = len(rest) != len(argv) or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return rest, debug


def run_command(function: Callable[[list[str]], int | None], argv: Sequence[str], prog: str = "trl-safedistill") -> int:
    """Run ``function(argv)`` (a command's ``main``); a :class:`UserError` becomes one line on stderr and exit 2.

    ``--debug`` is taken out of ``argv`` before the command sees it; with it, a user error is re-raised
    so Python prints its traceback.
    """
    argv, debug = pop_debug_flag(argv)
    try:
        return int(function(argv) or 0)
    except UserError as error:
        if debug:
            raise
        print(f"{prog}: error: {one_line(error)} ({DEBUG_FLAG} shows the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
