"""Where the command line prints: the consoles, and small helpers every verb shares."""

from __future__ import annotations

import logging
import shlex
import sys

from rich.console import Console
from rich.markup import escape

# Piped output (CI logs, files) gets wide lines rather than tables squeezed to 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)
log = logging.getLogger("cpusweep")


def resume_command() -> str:
    """This very command, to run again."""
    return "python -m runner " + shlex.join(sys.argv[1:])


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}")


def hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
