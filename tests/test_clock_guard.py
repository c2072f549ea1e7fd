"""The clock offset guard with a real bad clock (issue 17, point 3).

n3 runs under libfaketime an hour ahead (``FAKETIME=+1h``, preloaded; its
monotonic clock left real, as the node times everything else with it).  It
must go out of rotation within 15 s (state ``clock-offset``, data ops
NOT_READY naming the offset, the balancer routing nothing to it), and the
others' clocks and TTLs must not move.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from mesh.core.errors import NotReady
from tests.conftest import NodeProcess, Processes, stats_of, wait_for

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HOUR_MS = 3_600_000

pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists() or shutil.which("env") is None,
    reason=f"libfaketime not installed ({LIBFAKETIME}): apt-get install faketime",
)


class FakeTimeNode(NodeProcess):
    """A node whose wall clock is ``offset`` ahead (libfaketime, by ``env``: the PID
    stays the node's own, so it is signalled and killed like any other)."""

    offset = "+1h"

    @property
    def argv(self) -> list[str]:
        faked = [
            f"LD_PRELOAD={LIBFAKETIME}",
            f"FAKETIME={self.offset}",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ]
        return ["env", *faked, *super().argv]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_node_an_hour_ahead_is_out_of_rotation_and_drags_nobody(procs: Processes) -> None:
    procs.member_keys("n1", "n2", "n3")
    n1 = procs.node("n1")
    n2 = procs.node("n2", peers=[n1.repl])
    n3 = FakeTimeNode(procs.tmp_path / "n3", "n3", None, procs.keys)
    n3.peers = [n1.repl, n2.repl]
    procs.nodes.append(n3)
    started = time.monotonic()
    n3.child.start(n3.argv)
    n3.api = n3.child.wait_status(lambda info: "api" in info, 30)["api"]  # any state
    with n3.client(timeout=2) as c:
        wait_for(lambda: c.health()["state"] == "clock-offset", 15, "n3 in state clock-offset")
        assert time.monotonic() - started < 15
        with pytest.raises(NotReady, match=r"clock-offset: its wall clock is \d+ ms off"):
            c.set("k", b"v")
        with pytest.raises(NotReady):
            c.get("k")
        clock = c.stats()["clock"]
        assert abs(clock["offset_ms"] - HOUR_MS) < 60_000, clock
    assert "clock-offset" in (n3.data_dir / "node.json").read_text()
    assert "ERROR" in n3.stderr() and "ms off 2 of its 2 peers" in n3.stderr()

    # the others: ready, their clocks and TTLs where they were
    with n1.client() as c1, n2.client() as c2:
        c1.set("ttl-key", b"v", ttl=10)
        wait_for(lambda: c2.get("ttl-key") == b"v", 2, "the TTL'd key on n2")
        for c in (c1, c2):
            assert 9.0 <= c.pttl("ttl-key") / 1000 <= 10.0
            assert abs(c.stats()["clock"]["hlc_ms"] - now_ms()) < 5000
            assert c.health()["state"] == "ready"

    # through a balancer, nothing goes to n3
    balancer = procs.balancer([n1, n2, n3])
    with balancer.client() as c:
        for i in range(60):
            c.set(f"b{i}", b"x")
        served = {n.node_id: stats_of(n)["requests"] for n in (n1, n2, n3)}
    writes_on_n3 = stats_of(n3)["seq"]
    assert writes_on_n3 == 0, served
    for n in (n1, n2):
        assert abs(stats_of(n)["clock"]["hlc_ms"] - now_ms()) < 5000
