"""Network namespaces for partition tests: a bridge, hosts on it, faults, client agents.

Topology: one switch namespace and one namespace per host, joined by veth pairs::

    pc<pid>sw   the switch: bridge ``br0`` with one port ``p<i>`` per host
    pc<pid>h<i> host i: ``eth0`` (the other end of ``p<i>``) at 198.18.0.<i>/24, ``lo`` up

198.18.0.0/24 is a benchmarking range that exists only inside these
namespaces, and no namespace gets a default route, so nothing here can reach
or disturb any real network.  ``<pid>`` is the test run's PID, so a run's
namespaces never collide with another run's, and :func:`sweep_stale` deletes
those left behind by runs that died.

Faults: :meth:`Network.port_down` (the switch port goes down: silent drop both
ways), :meth:`Network.drop` (nftables rules inside one host: drops, one-way
or both ways, or TCP resets) and :meth:`Network.remove_host` (a power loss:
the host's kernel state vanishes; :meth:`Network.add_host` brings it back).

The test process itself never opens a socket into these namespaces: it talks
to an :class:`Agent` per host, a child started with ``ip netns exec`` that runs
:mod:`mesh.client` calls there and answers one JSON line per request on its
stdout.  Run as ``python tests/netns.py agent ENDPOINT`` it is that child.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.roles.launcher import die_with_parent

SUBNET = "198.18.0"
PREFIX = "pc"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)(sw|h\d+)$")
_FAULT_TABLE = "pcfault"
_REPO = Path(__file__).resolve().parent.parent


def ip_command() -> str | None:
    """The absolute path of iproute2's ``ip`` (often in an sbin folder off PATH)."""
    found = shutil.which("ip")
    if found:
        return found
    for candidate in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nft_command() -> str | None:
    """The absolute path of ``nft``, or None."""
    found = shutil.which("nft")
    if found:
        return found
    for candidate in ("/usr/sbin/nft", "/sbin/nft"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (not root, no iproute2), or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root (CI runs them as root via .ci/run)"
    ip = ip_command()
    if ip is None:
        return "network namespace tests need iproute2 (`ip`); .ci/run installs it"
    probe = subprocess.run([ip, "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip() or probe.returncode}"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    ip = ip_command() or "ip"
    full = [ip if argv[0] == "ip" else argv[0], *argv[1:]]
    done = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(full)} exited {done.returncode}: {done.stderr.strip() or done.stdout}"
        )
    return done


def list_namespaces() -> list[str]:
    """Names of every named network namespace (``ip netns list``)."""
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name: str) -> None:
    """Kill every process left in namespace ``name``, then delete it (idempotent)."""
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Delete ``pc<pid>...`` namespaces whose run (``<pid>``) is gone; return their names."""
    swept = []
    for name in list_namespaces():
        match = _NAME_RE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            delete_namespace(name)
            swept.append(name)
    return swept


class Network:
    """``hosts`` namespaces on one bridge, named after ``pid`` (see the module docstring)."""

    def __init__(self, hosts: int = 3, pid: int | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("1..200 hosts")
        self.hosts = hosts
        self.pid = os.getpid() if pid is None else pid
        self.switch = f"{PREFIX}{self.pid}sw"
        self.created: list[str] = []

    def host(self, i: int) -> str:
        """The namespace name of host ``i`` (1-based)."""
        return f"{PREFIX}{self.pid}h{i}"

    @staticmethod
    def address(i: int) -> str:
        """Host ``i``'s address."""
        return f"{SUBNET}.{i}"

    @staticmethod
    def port(i: int) -> str:
        """The switch port (bridge member) host ``i`` is plugged into."""
        return f"p{i}"

    @property
    def names(self) -> list[str]:
        return [self.switch, *(self.host(i) for i in range(1, self.hosts + 1))]

    def create(self) -> Network:
        """Build the switch and the hosts; on failure, delete what was made and raise."""
        existing = set(list_namespaces())
        for name in self.names:  # left over by an earlier test of this run
            if name in existing:
                delete_namespace(name)
        try:
            sw = self.switch
            _run("ip", "netns", "add", sw)
            _run("ip", "-n", sw, "link", "set", "lo", "up")
            _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
            _run("ip", "-n", sw, "link", "set", "br0", "up")
            for i in range(1, self.hosts + 1):
                self.add_host(i)
        except Exception:
            self.destroy()
            raise
        return self

    def add_host(self, i: int) -> None:
        """Create host ``i`` and plug it into the switch (also after :meth:`remove_host`)."""
        host, port, sw = self.host(i), self.port(i), self.switch
        _run("ip", "netns", "add", host)
        # both ends are created in their namespaces: no name in the root one
        peer = ["peer", "name", "eth0", "netns", host]
        _run("ip", "link", "add", port, "netns", sw, "type", "veth", *peer)
        _run("ip", "-n", sw, "link", "set", port, "master", "br0")
        _run("ip", "-n", sw, "link", "set", port, "up")
        # a fixed MAC, as a real host keeps across reboots: peers' ARP caches stay right
        _run("ip", "-n", host, "link", "set", "eth0", "address", f"02:00:c6:12:00:{i:02x}")
        _run("ip", "-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        _run("ip", "-n", host, "link", "set", "eth0", "up")
        _run("ip", "-n", host, "link", "set", "lo", "up")

    def remove_host(self, i: int) -> None:
        """Host ``i`` loses power: what runs there dies, its kernel forgets every TCP
        connection (``ss -K``), and the namespace is deleted.  Unplug it first
        (:meth:`port_down`) so that no FIN or reset gets out meanwhile."""
        host = self.host(i)
        for pid in _run("ip", "netns", "pids", host, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        # Closed sockets still sending their FIN would keep the namespace alive.
        ss = shutil.which("ss") or "/usr/bin/ss"
        _run(*self.exec_argv(i, [ss, "-K", "-tan"]))
        delete_namespace(host)
        # the kernel destroys a namespace (and so the veth) asynchronously
        deadline = time.monotonic() + 10
        while (
            _run("ip", "-n", self.switch, "link", "show", self.port(i), check=False).returncode == 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"switch port {self.port(i)} still there 10 s after its host")
            time.sleep(0.02)

    def destroy(self) -> None:
        """Kill what runs in the namespaces and delete them (the veths go with them)."""
        for name in reversed(self.names):
            delete_namespace(name)

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``i`` (``ip netns exec`` execs: same PID)."""
        return [ip_command() or "ip", "netns", "exec", self.host(i), *argv]

    # ------------------------------------------------------------------ faults

    def port_down(self, i: int) -> None:
        """Unplug host ``i``: its switch port goes down, packets both ways are dropped."""
        _run("ip", "-n", self.switch, "link", "set", self.port(i), "down")

    def port_up(self, i: int) -> None:
        """Plug host ``i`` back in."""
        _run("ip", "-n", self.switch, "link", "set", self.port(i), "up")

    def drop(
        self,
        i: int,
        *,
        inbound: Sequence[int] = (),
        outbound: Sequence[int] = (),
        reset: bool = False,
    ) -> None:
        """nftables rules inside host ``i`` that cut it off from other hosts.

        Drops what arrives from the ``inbound`` hosts and what leaves for the
        ``outbound`` hosts: a one-way cut when only one of them is given.  With
        ``reset``, TCP packets are answered with a reset instead (a firewall
        that rejects: connections break and reconnects are refused) and the
        rest is dropped.
        """
        nft = nft_command()
        if nft is None:
            raise RuntimeError("nft is not installed")
        verdicts = ["meta l4proto tcp reject with tcp reset", "drop"] if reset else ["drop"]
        rules = [f"table inet {_FAULT_TABLE} {{"]
        for hook, hosts, match in (
            ("input", inbound, 'iifname "eth0" ip saddr'),
            ("output", outbound, 'oifname "eth0" ip daddr'),
        ):
            if hosts:
                peers = ", ".join(self.address(h) for h in hosts)
                rules.append(f"  chain {hook} {{ type filter hook {hook} priority -10;")
                rules += [f"    {match} {{ {peers} }} {verdict}" for verdict in verdicts]
                rules.append("  }")
        rules.append("}")
        done = subprocess.run(
            self.exec_argv(i, [nft, "-f", "-"]),
            input="\n".join(rules) + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.host(i)} failed: {done.stderr.strip()}")

    def undrop(self, i: int) -> None:
        """Delete host ``i``'s rules from :meth:`drop` (no error when there are none)."""
        nft = nft_command() or "nft"
        _run(*self.exec_argv(i, [nft, "delete", "table", "inet", _FAULT_TABLE]), check=False)

    def sockets(self, i: int) -> str:
        """Host ``i``'s TCP sockets as ``ss -tan`` prints them (for failure messages)."""
        ss = shutil.which("ss") or "/usr/bin/ss"
        done = _run(*self.exec_argv(i, [ss, "-tan"]), check=False)
        return done.stdout or done.stderr

    def routes(self, i: int) -> str:
        """Host ``i``'s IPv4 routing table, as ``ip route`` prints it."""
        return _run("ip", "-n", self.host(i), "route", "show").stdout


class AgentError(RuntimeError):
    """The agent died, timed out or could not run a request."""


class Agent:
    """A client child inside one host's namespace; :meth:`call` runs one request there."""

    def __init__(self, net: Network, i: int, endpoint: str, log_path: Path) -> None:
        self.name = net.host(i)
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, str(Path(__file__).resolve()), "agent", endpoint]
        with open(log_path, "ab") as err:
            self.process = subprocess.Popen(
                net.exec_argv(i, argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                bufsize=0,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._buffer = b""

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Send one request, wait for its answer; raise :class:`AgentError` on failure."""
        self.send(op, **args)
        return self.receive(timeout)

    def send(self, op: str, **args: Any) -> None:
        """Send one request without waiting (agents in other hosts run meanwhile)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        except BrokenPipeError:
            raise AgentError(f"agent in {self.name} is gone: {self.stderr()}") from None

    def receive(self, timeout: float = 30.0) -> Any:
        """The answer to the oldest request not yet received."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"agent in {self.name}: no answer in {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AgentError(f"agent in {self.name} exited: {self.stderr()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise AgentError(f"agent in {self.name}: {answer['error']}")
        return answer["result"]

    def stderr(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Kill the agent's process group and reap it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------------- the agent child


def _outcome(call: Any) -> list:
    """``["ok", result]``, ``["fail", reason]`` (definitely refused) or ``["unknown", why]``."""
    from mesh.core.errors import ConnectionFailed, PyCacheError, Timeout, WriteNotAcknowledged

    try:
        return ["ok", call()]
    except (Timeout, ConnectionFailed, WriteNotAcknowledged) as exc:  # may or may not have applied
        return ["unknown", f"{type(exc).__name__}: {exc}"]
    except PyCacheError as exc:
        return ["fail", f"{type(exc).__name__}: {exc}"]


def _write(client: Any, item: list) -> list:
    if item[0] == "set":
        return _outcome(lambda: client.set(item[1], item[2]))
    if item[0] == "del":
        return _outcome(lambda: client.delete(item[1]))
    raise ValueError(f"unknown write {item!r}")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def agent_main(endpoint: str) -> None:
    """Serve JSON-line requests from stdin against the node at ``endpoint``."""
    from mesh.client import Client

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol

    with Client(endpoint, timeout=5.0) as client:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            try:
                if op == "write":  # [["set", key, value] | ["del", key], ...] in order
                    result: Any = [_write(client, item) for item in request["ops"]]
                elif op == "mget":
                    result = (
                        [_text(v) for v in client.mget(request["keys"])] if request["keys"] else []
                    )
                elif op == "stats":
                    result = client.stats()
                elif op == "ping":
                    result = client.ping()
                else:
                    raise ValueError(f"unknown op {op!r}")
                answer = {"result": result}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer, default=str) + "\n")
            out.flush()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "agent":
        sys.exit("usage: netns.py agent ENDPOINT")
    agent_main(sys.argv[2])
