"""What every ``pycache`` command shares: exit codes and how errors end a command.

Exit codes: 0 success; 1 ``get`` of a missing key; 2 a bad argument or an
error reply; 3 a timeout or no reachable endpoint.  Errors print one line on
stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn

import click

from mesh.core.errors import ConnectionFailed, PyCacheError, Timeout

EXIT_MISSING = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def split_csv(csv: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated option."""
    return tuple(item.strip() for item in csv.split(",") if item.strip())


def errors_to_exit_codes(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one stderr line and an exit code >= 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (Timeout, ConnectionFailed) as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except (PyCacheError, OSError) as exc:
            fail(str(exc), EXIT_ERROR)

    return wrapper
