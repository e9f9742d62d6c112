"""The command line's own errors: one exception for a value a command cannot use, and one printer.

Every command (``gatedrnn train``, ``gates``, ``sample``, ...) reports bad input as one
``error: <message>`` line on stderr and exit code 2, as argparse does, never a traceback.
"""

from __future__ import annotations

import sys

USAGE_EXIT_CODE = 2
"""The exit code of a command given input it cannot use (argparse's own)."""


class UsageError(ValueError):
    """A command-line value that cannot be used; printed by :func:`print_error`."""


def print_error(message: str) -> int:
    """Print ``error: <message>`` on stderr and return :data:`USAGE_EXIT_CODE`."""
    print(f"error: {message}", file=sys.stderr)
    return USAGE_EXIT_CODE
