"""Progress reporting from inside assets to whoever runs them in-process (the CLI's progress bar).

Assets call `report(stage, done, total)`; it does nothing unless a listener is installed,
so runs launched from the UI are unaffected.
"""

from __future__ import annotations

from typing import Callable

_listener: Callable[[str, int, int], None] | None = None


def set_listener(fn: Callable[[str, int, int], None] | None) -> None:
    global _listener
    _listener = fn


def report(stage: str, done: int, total: int) -> None:
    if _listener is not None:
        _listener(stage, done, total)
