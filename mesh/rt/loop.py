"""Event loop set-up: every binary runs under uvloop."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

__all__ = ["run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` to completion on a uvloop event loop."""
    return uvloop.run(main)
