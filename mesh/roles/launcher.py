"""Start a ``python -m mesh <role>`` child and wait for the JSON status file it writes.

One home for what ``pycache up``, the test fixtures and the benchmarks all do
with a PyCache process: start it in its own session (a terminal Ctrl-C reaches
only the parent, which then stops its children) with ``PR_SET_PDEATHSIG`` (no
child outlives a parent that was killed), send its stderr to a log file, poll
its status file (``node.json``, the balancer's or the edge's ``--status-file``)
until a condition holds, signal it by PID and stop it with a grace period.

A wait that gives up raises :class:`~mesh.core.errors.Timeout` naming what it
last saw and the end of the child's stderr; a child that exits meanwhile
raises :class:`ChildExited` at once, with its stderr.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mesh.core.errors import PyCacheError, Timeout

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0
STDERR_TAIL_CHARS = 2000
TEE_LINES = 50
TEE_JOIN_S = 1.0


def die_with_parent() -> None:
    """``preexec_fn`` for children: the kernel SIGKILLs them when their parent dies.

    Runs in the child between fork and exec (Linux ``PR_SET_PDEATHSIG``).
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def mesh_argv(role: str, *args: str) -> list[str]:
    """The command line of ``python -m mesh <role> <args>`` with this interpreter."""
    return [sys.executable, "-m", "mesh", role, *args]


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    An exception of a ``retry_on`` type counts as "not yet" (and as what was
    last seen); any other propagates at once.  Past ``timeout`` seconds raise
    :class:`Timeout` naming ``what`` and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")
        time.sleep(interval)


class ChildExited(PyCacheError):
    """A child process exited while something waited for it."""


class ChildProcess:
    """One child process: started, waited for through its status file, signalled by PID.

    ``status_path`` is the JSON file the child writes (with its ``pid``);
    ``log_path`` receives its stderr (appended across restarts; with
    ``stdout_to_log`` its stdout too, else stdout is discarded).  Without a
    ``log_path`` the child shares this process's stdout and stderr; with
    ``tee_stderr`` too, its stderr is copied to ours line by line by a thread
    that keeps the last lines for :meth:`stderr` (so ``pycache up`` can say why
    a child exited).
    """

    def __init__(
        self,
        name: str,
        status_path: Path | None = None,
        log_path: Path | None = None,
        stdout_to_log: bool = False,
        tee_stderr: bool = False,
    ) -> None:
        self.name = name
        self.status_path = status_path
        self.log_path = log_path
        self.stdout_to_log = stdout_to_log
        self.tee_stderr = tee_stderr and log_path is None
        self._tail: deque[str] = deque(maxlen=TEE_LINES)
        self._tee: threading.Thread | None = None
        self.process: subprocess.Popen | None = None
        self.started = 0.0  # perf_counter() at the last start

    # ------------------------------------------------------------------ start

    def start(self, argv: Sequence[str]) -> ChildProcess:
        """Start ``argv`` in its own session.  A status file already there is left
        alone: :meth:`read_status` takes only this process's (by its pid), and the
        file may be a running process's, one this start fails beside (its data
        folder locked): removing it hid that process from ``pycache status``."""
        if self.log_path is None:
            self._popen(argv, None)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self._popen(argv, log)
        return self

    def _popen(self, argv: Sequence[str], log: IO[bytes] | None) -> None:
        stdout: Any = None
        if log is not None:
            stdout = log if self.stdout_to_log else subprocess.DEVNULL
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE if self.tee_stderr else log,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if self.tee_stderr:
            self._tail.clear()
            self._tee = threading.Thread(
                target=self._copy_stderr, args=(self.process.stderr,), daemon=True
            )
            self._tee.start()

    def _copy_stderr(self, pipe: IO[bytes]) -> None:
        """The tee thread: copy the child's stderr to ours, keeping the last lines."""
        with pipe:
            for line in pipe:
                self._tail.append(line.decode(errors="replace"))
                sys.stderr.buffer.write(line)
                sys.stderr.flush()

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int:
        """The PID of the running (or last) process."""
        return self._running_process().pid

    def poll(self) -> int | None:
        """The exit code if the process has exited (it is then reaped), else None."""
        return self.process.poll() if self.process is not None else None

    def alive(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        """Raise :class:`ChildExited`, with the end of its stderr, if the process exited."""
        code = self.poll()
        if code is not None:
            tail = self.stderr_tail()
            raise ChildExited(
                f"{self.name} exited with code {code}" + (f": {tail}" if tail else "")
            )

    def read_status(self) -> dict | None:
        """This process's status file, or None while it is absent, partial or a predecessor's."""
        if self.status_path is None or self.process is None:
            return None
        try:
            info = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None  # not written yet
        return info if isinstance(info, dict) and info.get("pid") == self.process.pid else None

    def wait_status(
        self,
        ready: Callable[[dict], bool] = lambda info: True,
        timeout: float = 30.0,
        interval: float = 0.02,
    ) -> dict:
        """Poll the status file until it is this process's and ``ready(info)``; return it."""
        seen: list[dict | None] = [None]

        def status() -> dict | None:
            self.check_running()
            seen[0] = info = self.read_status()
            return info if info is not None and ready(info) else None

        what = f"{self.name}'s status file {self.status_path}"
        try:
            return wait_for(status, timeout, what, interval)
        except Timeout:
            tail = self.stderr_tail()
            message = f"timed out after {timeout} s waiting for {what}; last saw {seen[0]!r}"
            raise Timeout(message + (f"; stderr ends: {tail}" if tail else "")) from None

    # ------------------------------------------------------------------ signals

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process by PID (nothing once it has been reaped)."""
        self._running_process().send_signal(sig)

    def kill(self) -> int | None:
        """SIGKILL and reap; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def terminate(self) -> None:
        """SIGTERM, then SIGCONT: a paused process cannot act on SIGTERM."""
        if self.alive():
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)

    def reap(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the exit, SIGKILL after that; the exit code."""
        process = self._running_process()
        try:
            return process.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            return process.wait()

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; the exit code."""
        self.terminate()
        return self.reap(grace)

    # ------------------------------------------------------------------ stderr

    def stderr(self) -> str:
        """Everything the process (and its earlier runs) wrote to the log file.

        With ``tee_stderr``: the last lines of this run (all of them once it exited).
        """
        if self._tee is not None:
            if self.poll() is not None:
                self._tee.join(TEE_JOIN_S)  # the last lines may still be in the pipe
            return "".join(self._tail)
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stderr_tail(self, chars: int = STDERR_TAIL_CHARS) -> str:
        """The last ``chars`` characters of :meth:`stderr`."""
        return self.stderr()[-chars:]

    def _running_process(self) -> subprocess.Popen:
        if self.process is None:
            raise PyCacheError(f"{self.name} was never started")
        return self.process
