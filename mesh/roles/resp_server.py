"""The RESP (Redis protocol) front of a node or a balancer: an asyncio TCP server.

Each connection feeds what it reads to a ``hiredis.Reader`` (C), which hands
back every complete command array; the commands read in one go (a pipeline)
run together: connection commands (PING, AUTH, SELECT, CLIENT, HELLO, ...)
at once, in order, and the data commands' node requests
(:mod:`mesh.roles.resp_commands`) in one call to the backend
(:mod:`mesh.roles.resp_backend`), which sends them as one bundle; the replies
are written in order in one write.  While a pipeline runs, what arrives waits
for the next turn (and reading pauses past ``MAX_PENDING`` commands).

With tokens (``token_file``), a connection must AUTH with one of them (any
user name but ``default`` is refused) before any other command: ``-NOAUTH``.
A node never dies of a client: a protocol error answers ``-ERR Protocol error``
and closes that connection, after answering the commands read before it (as
Redis does); a command over the request limit likewise.  An array header of
over :data:`MAX_ARRAY` elements, or a bulk string longer than the request
limit, is refused at its header, before hiredis sees it (:meth:`Connection.feed`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis

from mesh.core import wire
from mesh.roles import resp_commands
from mesh.roles.resp_codec import (
    NOAUTH,
    OK,
    RespError,
    bulk,
    error,
    text,
    unknown_command,
    wire_error,
    wrong_arity,
)
from mesh.roles.resp_local import ConnectionCommands

log = logging.getLogger(__name__)

#: Commands read but not yet answered before a connection stops reading.
MAX_PENDING = 4096
#: The most elements a command's array may have: over the longest command a node
#: takes (MSET of the largest --max-items, 1,000,000 pairs).  hiredis allocates an
#: array whole at its header: 2^31 slots, freed, held the loop for seconds.
MAX_ARRAY = 2 * 1024 * 1024
#: Headers with a number of 6 digits or more: an array hiredis must not allocate
#: unchecked, a bulk string too long to take or long enough to skip scanning.
_ARRAY_HEADER = re.compile(rb"\*[0-9]{6}")
_BULK_HEADER = re.compile(rb"\$[0-9]{6}")
#: The longest header line (``*`` or ``$``, a 64-bit number, CRLF) worth waiting for.
_MAX_HEADER = 24
#: A header line that a read ends in the middle of (its number may go on in the next).
_HEADER_BEGUN = re.compile(rb"[*$][0-9]*\Z")
Reply = tuple[int, Any]


class Backend(Protocol):
    """Where data commands' requests go (:mod:`mesh.roles.resp_backend`)."""

    async def run(self, requests: Sequence[tuple[str, tuple]], pin: list) -> list[Reply]: ...
    def submit(
        self, requests: Sequence[tuple[str, tuple]], pin: list, callback: Callable[[list], None]
    ) -> None: ...
    async def start(self) -> None: ...
    def describe(self, pin: list) -> str: ...
    def close(self) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: its reader, its state (AUTH, name), its pipeline."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.id = next(server.ids)
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.pending: list[list[bytes]] = []
        self.busy = self.closing = self.quitting = self.paused = self.writes_blocked = False
        self.authed = not server.tokens
        self.name: bytes | None = None
        self.pin: list = [None]
        self.unparsed = 0
        self.last_words = b""
        self.head = b""  # a header line begun at the end of the last read (Connection.feed)
        self.skip = 0  # bytes of a long bulk string still to come: not scanned for headers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection in."""
        self.transport = transport  # type: ignore[assignment]
        self.server.connections[self.id] = self
        self.server.counters["total_connections_received"] += 1

    def pause_writing(self) -> None:
        """The client does not read its replies: stop reading its commands."""
        self.writes_blocked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """Its replies drained: read again."""
        self.writes_blocked = False
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Count it out; what it sent and is not answered yet is not run."""
        self.server.connections.pop(self.id, None)
        self.closing = True
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        """Parse every complete command; start a pipeline turn unless one runs."""
        if self.closing:
            return
        self.unparsed += len(data)
        try:
            refused = self.feed(data)
        except hiredis.ProtocolError as exc:
            return self._abort(f"ERR Protocol error: {exc}")
        except MemoryError:  # an array header hiredis could not allocate
            return self._abort("ERR Protocol error: invalid multibulk length")
        if refused:
            return self._abort(refused)
        if self.unparsed > self.server.max_request_bytes:
            return self._abort("ERR Protocol error: a command over the request limit")
        if self.pending and not self.busy:
            self.busy = True
            self._turns()
        if len(self.pending) > MAX_PENDING and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def feed(self, data: bytes) -> str | None:
        """Give ``data`` to the reader and take the complete commands into ``pending``;
        return the error line of a header refused before the reader saw it.

        Only headers of 6 digits or more are looked at, each where the reader
        would take it as a header: when the reader has taken every byte before
        one, that is where its next element starts; otherwise the match is
        inside a bulk string still arriving (the reader takes a bulk string
        only whole).  The bytes of a long bulk string are not scanned.
        """
        if self.head:
            data, self.head = self.head + data, b""
        fed = pos = 0
        if self.skip:
            fed = pos = min(self.skip, len(data))
            self.skip -= pos
            self.reader.feed(data, 0, pos)
        while (match := _next_header(data, pos)) is not None:
            start = match.start()
            at_header = self._parse_up_to(data, fed, start)
            fed = start
            if not at_header:  # inside a bulk string not yet whole
                pos = start + 1
                continue
            end = data.find(b"\r\n", start, start + _MAX_HEADER)
            if end < 0:
                if len(data) - start >= _MAX_HEADER:
                    return "ERR Protocol error: invalid header"
                self.head = data[start:]  # the rest of the line comes with the next read
                return None
            number = int(data[start + 1 : end]) if data[start + 1 : end].isdigit() else -1
            if data[start] == 42:  # "*"
                if not 0 <= number <= MAX_ARRAY:
                    return "ERR Protocol error: invalid multibulk length"
                pos = end + 2
            else:
                if not 0 <= number <= self.server.max_request_bytes:
                    return "ERR Protocol error: invalid bulk length"
                pos = end + 2 + number
                if pos > len(data):
                    self.skip = pos - len(data)
        begun = None
        if not data.endswith(b"\n"):  # the read may end inside a header line
            begun = _HEADER_BEGUN.search(data, max(pos, len(data) - _MAX_HEADER))
        if begun is not None:
            start = begun.start()
            at_header = self._parse_up_to(data, fed, start)
            fed = start
            if at_header:  # keep the header until its line is whole
                self.head = data[start:]
                return None
        self._parse_up_to(data, fed, len(data))
        return None

    def _parse_up_to(self, data: bytes, start: int, end: int) -> bool:
        """Feed ``data[start:end]``, take the commands complete; whether the reader took
        every byte it has (so ``end`` is where its next element starts)."""
        self.reader.feed(data, start, end - start)
        self._take_commands()
        return not self.reader.has_data()

    def _take_commands(self) -> None:
        while (command := self.reader.gets()) is not False:
            self.unparsed = 0
            if command is None or command == []:  # *-1 or *0: Redis skips an empty command
                continue
            if type(command) is not list or not all(type(a) is bytes for a in command):
                raise hiredis.ProtocolError("expected an array of bulk strings")
            self.pending.append(command)

    def _abort(self, line: str) -> None:
        """Answer the commands read before, then ``-line``, and close (a bad or huge command)."""
        self.closing = True
        self.last_words = error(line)
        if self.transport is None:
            return
        self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            self._turns()

    def quit(self) -> None:
        """Close once the replies due are written; the commands after this one are not run."""
        self.closing = self.quitting = True
        self.pending.clear()

    def _turns(self) -> None:
        """Answer what is pending, a pipeline at a time: connection commands at
        once, node requests through the backend (:meth:`_answered` goes on)."""
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                if self.paused and self.transport is not None:
                    self.paused = False
                    if not self.writes_blocked:
                        self.transport.resume_reading()
                replies, requests, plans = self.server.prepare(self, batch)
                if requests:
                    self.busy = True
                    answered = functools.partial(self._answered, replies, plans)
                    self.server.backend.submit(requests, self.pin, answered)
                    return
                self.server.finish(replies, plans, [])  # plans that need no node (WAIT 0)
                self._write(replies)
            if self.closing and self.transport is not None:
                if not self.transport.is_closing():  # the client may be gone already
                    self.transport.write(self.last_words)
                self.transport.close()
        except Exception:  # a bug here must cost this connection only
            log.exception("resp connection %d failed", self.id)
            if self.transport is not None:
                self.transport.close()
        self.busy = False

    def _answered(self, replies: list[bytes], plans: list, got: list[Reply]) -> None:
        """The node's replies are in: write the pipeline's replies, go on with the rest."""
        try:
            self.server.finish(replies, plans, got)
            self._write(replies)
        except Exception:  # a bug here must cost this connection only
            log.exception("resp connection %d failed", self.id)
            if self.transport is not None:
                self.transport.close()
            return
        self.busy = False
        if self.pending or self.closing:
            self.busy = True  # taken again: no other turn starts meanwhile
            asyncio.get_running_loop().call_soon(self._turns)

    def _write(self, replies: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(replies))


class RespServer(ConnectionCommands):
    """The listening socket and the commands every connection shares."""

    def __init__(
        self,
        backend: Backend,
        host: str,
        port: int,
        *,
        tokens: Sequence[bytes] = (),
        role: str = "node",
        max_request_bytes: int = 8 * 1024 * 1024 + 65536,
    ) -> None:
        self.backend = backend
        self.host, self.port = host, port
        self.tokens = tuple(tokens)
        self.role = role
        self.max_request_bytes = max_request_bytes
        self.ids = itertools.count(1)
        self.connections: dict[int, Connection] = {}
        self.counters = {"total_connections_received": 0, "total_commands_processed": 0}
        self.started = time.monotonic()
        self._server: asyncio.base_events.Server | None = None
        self.local = self.local_commands()  # mesh.roles.resp_local

    @property
    def url(self) -> str:
        """``tcp://host:port`` as bound."""
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and listen (the bound port replaces 0) and start the backend."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, reuse_address=True, backlog=511
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self.backend.start()

    async def stop(self) -> None:
        """Stop listening, close every connection and the backend."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        self.backend.close()

    # -------------------------------------------------------------- dispatch

    async def execute(self, conn: Connection, batch: list[list[bytes]]) -> list[bytes]:
        """The replies to ``batch``, in order (node requests in one backend call)."""
        replies, requests, plans = self.prepare(conn, batch)
        got = await self.backend.run(requests, conn.pin) if requests else []
        self.finish(replies, plans, got)
        return replies

    def prepare(self, conn: Connection, batch: list[list[bytes]]) -> tuple[list, list, list]:
        """``(replies, requests, plans)`` of ``batch``: the connection commands answered,
        the node requests the others need, and where their replies go."""
        replies: list[bytes] = []
        requests: list[tuple[str, tuple]] = []
        plans: list[tuple[int, int, int, Callable[[list[Reply]], bytes]]] = []
        self.counters["total_commands_processed"] += len(batch)
        fast = conn.authed
        for command in batch:
            if conn.quitting:
                break
            if fast and len(command) <= 3 and command[0] in _FAST:
                simple_request = _fast_request(command)
                if simple_request is not None:
                    plans.append((len(replies), len(requests), 1, _FAST[command[0]]))
                    requests.append(simple_request)
                    replies.append(b"")
                    continue
            try:
                reply = self._dispatch(conn, command)
            except RespError as exc:
                reply = error(exc.line)
            if isinstance(reply, bytes):
                replies.append(reply)
                continue
            wanted, finish = reply
            plans.append((len(replies), len(requests), len(wanted), finish))
            requests += wanted
            replies.append(b"")
        return replies, requests, plans

    @staticmethod
    def finish(replies: list[bytes], plans: list, got: list[Reply]) -> None:
        """Fill ``replies`` from the node's replies ``got``, as ``plans`` say."""
        for index, start, count, finish in plans:
            try:
                replies[index] = finish(got[start : start + count])
            except Exception as exc:  # a result of an unexpected shape: that command fails
                replies[index] = error(f"ERR unexpected reply from the node: {exc}")

    def _dispatch(self, conn: Connection, command: list[bytes]) -> Any:
        name, args = command[0].upper(), command[1:]
        local = self.local.get(name)
        entry = local or resp_commands.COMMANDS.get(name)
        if entry is None:
            raise RespError(unknown_command(command[0], args))
        arity = entry[0]
        if (arity > 0 and len(command) != arity) or len(command) < -arity:
            raise RespError(wrong_arity(text(command[0])))
        if not conn.authed and name not in (b"AUTH", b"HELLO", b"QUIT", b"RESET"):
            raise RespError(NOAUTH)
        if local is not None:
            return local[1](conn, args)
        return resp_commands.COMMANDS[name][1](args)

    # -------------------------------------------------------------- connection commands


def _next_header(data: bytes, pos: int) -> re.Match[bytes] | None:
    """The first array or bulk header with a 6-digit number or more at or after ``pos``
    (two searches, as a regex that starts with a literal scans fast; the second
    stops where the first found one, so a long bulk string is scanned once)."""
    bulk = _BULK_HEADER.search(data, pos)
    array = _ARRAY_HEADER.search(data, pos, len(data) if bulk is None else bulk.start())
    return bulk if array is None else array


def _finish_set(replies: list[Reply]) -> bytes:
    code, result = replies[0]
    return OK if code == wire.OK else wire_error(code, result)


def _finish_get(replies: list[Reply]) -> bytes:
    code, result = replies[0]
    return bulk(result) if code == wire.OK else wire_error(code, result)


_FAST = {b"SET": _finish_set, b"set": _finish_set, b"GET": _finish_get, b"get": _finish_get}


def _fast_request(command: list[bytes]) -> tuple[str, tuple] | None:
    """``GET key`` and ``SET key value`` (most traffic) straight to their op; None for
    anything else (another arity, a key that is not UTF-8): the general path answers it."""
    try:
        key = command[1].decode("utf-8")
    except (IndexError, UnicodeDecodeError):
        return None
    if len(command) == 3 and command[0] in (b"SET", b"set"):
        return ("SET", (key, command[2]))
    if len(command) == 2 and command[0] in (b"GET", b"get"):
        return ("GET", (key,))
    return None
