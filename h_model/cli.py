"""What the command-line scripts share: their exit codes for expected failures."""
from __future__ import annotations

import sys
from typing import Callable

from .data import DataNotFoundError


def run_main(body: Callable[[], int], errors: tuple[type[Exception], ...] = (DataNotFoundError,),
             interrupted: str | None = None) -> int:
    """``body()``'s exit code; 2 with ``error: ...`` on stderr for one of ``errors`` (no traceback),
    130 on Ctrl-C (after printing ``interrupted``, when given)."""
    try:
        return body()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        return 130
