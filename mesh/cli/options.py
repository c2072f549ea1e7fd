"""What the process-role commands share: config validation, logging, option helpers.

Each option's default is read from the config class that owns it (the
``defaults`` of :mod:`mesh.roles.config` and :mod:`mesh.core.limits`), never
typed again here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from mesh.cli.exits import EXIT_ERROR, fail
from mesh.core.errors import ConfigError
from mesh.roles.config import HTTP_PORT_ANY, NodeConfig
from mesh.roles.tuning import RepeatFilter
from mesh.storage.log import FSYNC_POLICIES


def valid_config(make_config: Callable[[], Any]) -> Any:
    """Build and validate a config (``validate()`` returns it); a bad value exits 2."""
    try:
        return make_config().validate()
    except ConfigError as exc:
        fail(str(exc), EXIT_ERROR)


LOG_FORMATS = ("text", "json")


#: The first keys of a JSON log line, in this order; ``extra=`` fields follow.
JSON_LOG_KEYS = ("time", "level", "pid", "process_name", "logger", "message")


def json_formatter(name: str) -> logging.Formatter:
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``pid``,
    ``process_name`` (``name``: the node id, ``balancer``, ``edge``, ``up``),
    ``logger``, ``message``, then every ``extra=`` field of the call (``peer``,
    ``entries``, ``lag_ms``, ...) and ``exc_info`` with a traceback."""
    from pythonjsonlogger.json import JsonFormatter

    class _Ordered(JsonFormatter):
        def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
            first = {key: log_data.pop(key, None) for key in JSON_LOG_KEYS}
            return {**first, **log_data}

    return _Ordered(
        "%(levelname)s %(process)d %(name)s %(message)s",
        rename_fields={"levelname": "level", "process": "pid", "name": "logger"},
        static_fields={"process_name": name},
        timestamp="time",
        json_ensure_ascii=False,
    )


def setup_logging(level: str, name: str, log_format: str = "text") -> None:
    """Log to stderr as ``<time> <name> <level> <logger>: <message>``, or as JSON lines
    (``log_format="json"``: :func:`json_formatter`).

    A warning or error repeated within 10 s is logged once, then with a count
    (:class:`mesh.roles.tuning.RepeatFilter`): a failure in a loop cannot flood
    the log.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter(name))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def port_or_any(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A port number option that also takes ``*``: a port the OS picks (``HTTP_PORT_ANY``)."""
    if value.strip() == "*":
        return HTTP_PORT_ANY
    if value.strip().isdigit() and int(value) <= 65535:
        return int(value)
    raise click.BadParameter(f"{value!r} is not a port number (0-65535) or '*'")


def seconds_in_range(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A number of seconds in (0, 3600]: not 0, negative, inf or nan."""
    if not 0 < value <= 3600:
        raise click.BadParameter(f"{value} is not a number of seconds in (0, 3600]")
    return value


def seconds_option(flag: str, default: float, envvar: str, help: str) -> Callable[[Any], Any]:
    """A number of seconds with its default shown and its environment variable."""
    return click.option(
        flag, type=float, default=default, show_default=True, envvar=envvar, help=help
    )


def int_option(flag: str, default: int, envvar: str, help: str) -> Callable[[Any], Any]:
    """An integer option with its default shown and its environment variable."""
    return click.option(
        flag, type=int, default=default, show_default=True, envvar=envvar, help=help
    )


def port_option(flag: str, default: int, envvar: str, help: str) -> Callable[[Any], Any]:
    """A port number (0..65535) with its default shown and its environment variable."""
    return click.option(
        flag,
        type=click.IntRange(0, 65535),
        default=default,
        show_default=True,
        envvar=envvar,
        help=help,
    )


fsync_option = click.option(
    "--fsync",
    type=click.Choice(FSYNC_POLICIES),
    default=NodeConfig.fsync,
    show_default=True,
    envvar="PYCACHE_FSYNC",
    help="Log fsync policy.",
)
insecure_option = click.option(
    "--insecure",
    is_flag=True,
    envvar="PYCACHE_INSECURE",
    help="No authentication or encryption where credentials are missing (tests only).",
)
resp_option = click.option(
    "--resp",
    default="",
    envvar="PYCACHE_RESP",
    help="Serve the Redis protocol (RESP) on HOST:PORT or tcp://HOST:PORT (port '*': any).",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
log_level_option = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="PYCACHE_LOG_LEVEL",
    help="Least severe log level printed on stderr.",
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    envvar="PYCACHE_LOG_FORMAT",
    help="Log lines as text, or as one JSON object per line (time, level, pid, logger, message).",
)
