"""The event loop a node and the edge run on (mesh.roles.eventloop)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from mesh.core.errors import ConfigError
from mesh.roles import eventloop
from tests.conftest import Processes

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def loop_run_on(monkeypatch: pytest.MonkeyPatch, choice: str | None) -> str:
    """The class name of the loop :func:`eventloop.run` runs a coroutine on."""
    if choice is None:
        monkeypatch.delenv(eventloop.ENV, raising=False)
    else:
        monkeypatch.setenv(eventloop.ENV, choice)
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__name__)

    eventloop.run(main)
    return seen[0]


def test_uvloop_by_default_where_installed(monkeypatch) -> None:
    expected = "Loop" if HAS_UVLOOP else "_UnixSelectorEventLoop"  # uvloop.Loop, or no wheel
    assert loop_run_on(monkeypatch, None) == expected
    assert loop_run_on(monkeypatch, " UVLoop ") == expected


def test_the_standard_loop_when_asked(monkeypatch) -> None:
    assert loop_run_on(monkeypatch, "asyncio") == "_UnixSelectorEventLoop"


def test_anything_else_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "tokio")
    with pytest.raises(ConfigError, match="uvloop or asyncio"):
        eventloop.use_uvloop()


@pytest.mark.timeout(60)
def test_a_node_serves_on_the_standard_loop(procs: Processes, monkeypatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")  # inherited by the node
    node = procs.node()
    with node.client() as client:
        assert client.set("k", b"v") is True
        assert client.get("k") == b"v"
