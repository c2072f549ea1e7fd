"""Side-by-side anchors for the issue-15 benches: a redis-server and a PyCache node, loaded alike.

Both are driven the same way: batches of pipelined SETs (send a batch, read
its replies), raw RESP on one TCP connection for Redis, raw request frames on
one DEALER for the node, so neither client library's costs enter the ratio.
Processes are started through :mod:`common` (they die with the script and are
ended by pid).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
from common import ANY, NodeProc, end, spawn

from mesh.core import envelope, wire


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dir_bytes(folder: Path) -> int:
    """Total size of the regular files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resp(args: Sequence[Any]) -> bytes:
    """One RESP command."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes | bytearray | memoryview) else str(a).encode()
        out.append(b"$%d\r\n" % len(b))
        out.append(bytes(b))
        out.append(b"\r\n")
    return b"".join(out)


def read_reply(reader: Any) -> Any:
    """One RESP reply from a binary file: simple strings and bulks as bytes,
    integers as int, arrays as lists; an error reply raises RuntimeError."""
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2]
    if kind == b"*":
        return [read_reply(reader) for _ in range(int(rest))]
    raise OSError(f"bad RESP reply {line!r}")


class Redis:
    """A redis-server child on a free loopback port, spoken to in raw RESP."""

    def __init__(self, folder: Path, extra: Sequence[str] = ()) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.dir = folder
        self.port = free_port()
        self.argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.argv += ["--dir", str(folder), "--save", "", "--appendonly", "no", *extra]
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.reader: Any = None

    def start(self) -> Redis:
        self.proc = spawn(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
                self.reader = self.sock.makefile("rb")
                if self.call("PING") == b"PONG":
                    return self
            except OSError:
                time.sleep(0.01)
        raise SystemExit("redis-server did not start within 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def call(self, *args: Any) -> Any:
        """One command; its reply (simple strings and bulks as bytes)."""
        assert self.sock is not None
        self.sock.sendall(resp(args))
        return read_reply(self.reader)

    def set_batch(self, keys: Sequence[str], value: bytes | Sequence[bytes]) -> None:
        """Pipelined SETs of ``value`` (or one value per key) under ``keys``:
        all sent, then all replies read."""
        assert self.sock is not None
        values = [value] * len(keys) if isinstance(value, bytes) else value
        parts: list[bytes] = []
        for key, v in zip(keys, values, strict=True):
            k = key.encode()
            head = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(k), k, len(v))
            parts += [head, v, b"\r\n"]
        self.sock.sendall(b"".join(parts))
        for _ in keys:
            if self.reader.readline() != b"+OK\r\n":
                raise SystemExit("redis SET failed")

    def stop(self, save: bool = False) -> None:
        """SHUTDOWN (SAVE or NOSAVE) and wait; SIGTERM after 60 s."""
        if self.proc is None:
            return
        try:
            self.call("SHUTDOWN", "SAVE" if save else "NOSAVE")
        except (OSError, RuntimeError):
            pass  # the connection closes as it shuts down
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        end(self.proc)
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
        self.proc = self.sock = None


class Node:
    """A PyCache node child (no peers) driven with raw request frames on one DEALER."""

    def __init__(self, root: Path, extra: Sequence[str] = ()) -> None:
        self.node = NodeProc("n1", root, ["--log-level", "WARNING", *extra])
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.rid = 0

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    def start(self) -> Node:
        self.node.start()
        self.node.wait_ready()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 120_000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(self.node.api)
        self.sock.send(wire.encode_request(0, "PING"))
        self.sock.recv()
        return self

    @property
    def pid(self) -> int:
        assert self.node.proc is not None
        return self.node.proc.pid

    def set_batch(self, keys: Sequence[str], value: bytes | Sequence[bytes]) -> None:
        """Pipelined SETs of ``value`` (or one value per key) under ``keys``:
        all sent, then all replies read."""
        assert self.sock is not None
        values = [value] * len(keys) if isinstance(value, bytes) else value
        send = self.sock.send
        for key, v in zip(keys, values, strict=True):
            self.rid += 1
            send(wire.encode_request(self.rid, "SET", key, v), copy=len(v) < 65536)
        for _ in keys:
            code = envelope.peek_head(self.sock.recv(copy=True))[1]
            if code != wire.OK:
                raise SystemExit(f"node SET failed (code {code})")

    def stop(self) -> None:
        """Close the socket and SIGTERM the node (it fsyncs and exits 0)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.node.proc is not None:
            end(self.node.proc)
        self.ctx.term()


__all__ = ["ANY", "Node", "Redis", "dir_bytes", "free_port", "resp", "rss"]
