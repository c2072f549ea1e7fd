"""The asyncio event loop the node and the edge run on: uvloop's where installed.

A node's CPU per replicated SET is spread thinly over Python per-request work,
and part of it is the event loop's own turn (``asyncio``'s selector loop is
Python code); uvloop's loop is libuv's, in C.  Measured on this kind of machine
(``docs/performance.md``, "The event loop"): a node's CPU per replicated SET on
uvloop was 0.93 of asyncio's (median of 14 pairs on a shared, noisy machine,
lower in 10).  ``uvloop`` is a dependency where it has wheels (Linux and macOS,
CPython); elsewhere, or with ``PYCACHE_EVENT_LOOP=asyncio`` in the environment,
the standard loop runs.  The balancer runs no asyncio loop in its main thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.core.errors import ConfigError

#: the environment variable that picks the loop: ``uvloop`` (the default) or ``asyncio``
ENV = "PYCACHE_EVENT_LOOP"


def use_uvloop() -> bool:
    """Whether to run on uvloop: installed, and not refused by :data:`ENV`."""
    choice = os.environ.get(ENV, "uvloop").strip().lower()
    if choice not in ("uvloop", "asyncio"):
        raise ConfigError(f"{ENV} must be uvloop or asyncio, not {choice!r}")
    return choice == "uvloop" and importlib.util.find_spec("uvloop") is not None


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, on uvloop's loop when :func:`use_uvloop`."""
    if use_uvloop():
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
