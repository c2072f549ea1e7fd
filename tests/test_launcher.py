"""The process launcher (mesh/roles/launcher.py) and the ``procs`` Traceback check.

The children here are tiny Python scripts standing in for a PyCache process:
they write a status file with their pid, exit early, or crash.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.core.errors import Timeout
from mesh.roles.launcher import ChildExited, ChildProcess
from tests.conftest import Processes, wait_for

pytestmark = pytest.mark.processes

WRITES_STATUS = """
import json, os, sys, time
path = sys.argv[1]
for state in ("starting", "ready"):
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "state": state}, f)
    os.replace(path + ".tmp", path)
    time.sleep(0.1)
time.sleep(60)
"""


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


@pytest.fixture
def children() -> Iterator[list[ChildProcess]]:
    """ChildProcess objects appended here are killed at teardown."""
    started: list[ChildProcess] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


def launch(children: list[ChildProcess], tmp_path: Path, argv: list[str]) -> ChildProcess:
    child = ChildProcess("fake", tmp_path / "fake.json", tmp_path / "fake.stderr.log")
    children.append(child)
    return child.start(argv)


def test_a_child_that_writes_its_status_file_is_waited_for(tmp_path, children):
    (tmp_path / "fake.json").write_text('{"pid": 1, "state": "ready"}')  # a predecessor's
    child = launch(children, tmp_path, python(WRITES_STATUS, str(tmp_path / "fake.json")))
    info = child.wait_status(lambda i: i["state"] == "ready", timeout=15)
    assert info == {"pid": child.pid, "state": "ready"}
    assert child.stop(grace=10) == -signal.SIGTERM
    assert not child.alive()


def test_a_child_that_exits_early_raises_with_its_stderr(tmp_path, children):
    child = launch(children, tmp_path, python("import sys; sys.exit('no such data dir')"))
    with pytest.raises(ChildExited, match=r"fake exited with code 1: no such data dir"):
        child.wait_status(timeout=15)


def test_a_wait_that_times_out_names_what_it_saw_and_the_stderr(tmp_path, children):
    script = "import sys, time; print('still loading', file=sys.stderr, flush=True); time.sleep(60)"
    child = launch(children, tmp_path, python(script))
    wait_for(lambda: "still loading" in child.stderr(), 15, "the child's stderr")
    with pytest.raises(Timeout, match=r"(?s)last saw None; stderr ends: still loading"):
        child.wait_status(timeout=0.2)


def test_a_teed_child_shares_our_stderr_and_its_last_lines_are_kept(capfd, children):
    """``tee_stderr`` (``pycache up``): the child's stderr reaches ours, and is kept too."""
    script = "import sys; print('loading', file=sys.stderr); sys.exit('error: port taken')"
    child = ChildProcess("fake", tee_stderr=True)
    children.append(child)
    child.start(python(script))
    with pytest.raises(ChildExited, match=r"fake exited with code 1: loading\nerror: port taken"):
        child.wait_status(timeout=15)
    assert child.stderr() == "loading\nerror: port taken\n"
    assert capfd.readouterr().err == "loading\nerror: port taken\n"


def test_stop_ends_a_paused_child(tmp_path, children):
    child = launch(children, tmp_path, python("import time; time.sleep(60)"))
    child.signal(signal.SIGSTOP)
    assert child.stop(grace=10) == -signal.SIGTERM  # not SIGKILL: SIGCONT let it act


@dataclass
class Crashing:
    child: ChildProcess


def test_the_procs_check_catches_a_child_that_printed_a_traceback(tmp_path):
    tracker = Processes(tmp_path)
    crashing = Crashing(ChildProcess("crashing", None, tmp_path / "crashing.stderr.log"))
    tracker.track(crashing)
    crashing.child.start(python("raise RuntimeError('a bug')"))
    wait_for(lambda: crashing.child.poll() is not None, 15, "the child to crash")
    tracker.cleanup()
    [report] = tracker.unexpected_tracebacks()
    assert report.startswith("crashing printed a Traceback") and "RuntimeError: a bug" in report
    tracker.expect_traceback(crashing)
    assert tracker.unexpected_tracebacks() == []
