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
and closes that connection; a command over the request limit likewise.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis

from mesh.core import wire
from mesh.roles import resp_commands
from mesh.roles.resp_codec import (
    EMPTY_ARRAY,
    NIL,
    NOAUTH,
    OK,
    WRONGPASS,
    RespError,
    array,
    bulk,
    bulks,
    error,
    integer,
    simple,
    text,
    to_int,
    unknown_command,
    wire_error,
    wrong_arity,
)

log = logging.getLogger(__name__)

#: The Redis version whose semantics the front follows (INFO, HELLO).
REDIS_VERSION = "7.2.0"
#: Commands read but not yet answered before a connection stops reading.
MAX_PENDING = 4096
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
        self.busy = self.closing = self.paused = self.writes_blocked = False
        self.authed = not server.tokens
        self.name: bytes | None = None
        self.pin: list = [None]
        self.unparsed = 0
        self.last_words = b""

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
        """Count it out."""
        self.server.connections.pop(self.id, None)
        self.closing = True

    def data_received(self, data: bytes) -> None:
        """Parse every complete command; start a pipeline turn unless one runs."""
        if self.closing:
            return
        self.reader.feed(data)
        self.unparsed += len(data)
        try:
            while (command := self.reader.gets()) is not False:
                self.unparsed = 0
                if (
                    type(command) is not list
                    or not command
                    or not all(type(a) is bytes for a in command)
                ):
                    raise hiredis.ProtocolError("expected an array of bulk strings")
                self.pending.append(command)
        except hiredis.ProtocolError as exc:
            return self._abort(f"ERR Protocol error: {exc}")
        except MemoryError:  # hiredis allocates a huge array's header at once
            return self._abort("ERR Protocol error: invalid multibulk length")
        if self.unparsed > self.server.max_request_bytes:
            return self._abort("ERR Protocol error: a command over the request limit")
        if self.pending and not self.busy:
            self.busy = True
            self._turns()
        if len(self.pending) > MAX_PENDING and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _abort(self, line: str) -> None:
        """Answer ``-line`` after the replies due, and close (a bad or huge command)."""
        self.pending.clear()
        self.closing = True
        if self.transport is None:
            return
        if self.busy:  # the turn under way writes it, after its replies
            self.last_words = error(line)
        else:
            self.transport.write(error(line))
            self.transport.close()

    def _turns(self) -> None:
        """Answer what is pending, a pipeline at a time: connection commands at
        once, node requests through the backend (:meth:`_answered` goes on)."""
        try:
            while self.pending and not self.closing:
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


class RespServer:
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
        self.local: dict[bytes, tuple[int, Callable[[Connection, list[bytes]], Any]]] = {
            b"PING": (-1, self._ping),
            b"ECHO": (2, lambda c, a: bulk(a[0])),
            b"AUTH": (-2, self._auth),
            b"HELLO": (-1, self._hello),
            b"SELECT": (2, self._select),
            b"CLIENT": (-2, self._client),
            b"COMMAND": (-1, self._command),
            b"CONFIG": (-2, self._config),
            b"INFO": (-1, self._info),
            b"QUIT": (-1, self._quit),
            b"RESET": (1, self._reset),
        }

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
            if conn.closing:
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

    def _ping(self, conn: Connection, args: list[bytes]) -> bytes:
        if len(args) > 1:
            raise RespError(wrong_arity("ping"))
        return bulk(args[0]) if args else simple("PONG")

    def _auth(self, conn: Connection, args: list[bytes]) -> bytes:
        if len(args) > 2:
            raise RespError(SYNTAX_ERROR)
        if not self.tokens and len(args) == 2:  # Redis's nopass default user takes any
            if args[0] != b"default":
                raise RespError(WRONGPASS)
            conn.authed = True
            return OK
        if not self.tokens:
            raise RespError(
                "ERR AUTH <password> called without any password configured for the "
                "default user. Are you sure your configuration is correct?"
            )
        user, password = (b"default", args[0]) if len(args) == 1 else (args[0], args[1])
        ok = user == b"default" and any(hmac.compare_digest(password, t) for t in self.tokens)
        if not ok:
            raise RespError(WRONGPASS)
        conn.authed = True
        return OK

    def _hello(self, conn: Connection, args: list[bytes]) -> bytes:
        if args:
            version = to_int(args[0], "ERR Protocol version is not an integer or out of range")
            if version == 3:
                raise RespError("NOPROTO this server speaks RESP2 only (HELLO 3 is not supported)")
            if version != 2:
                raise RespError("NOPROTO unsupported protocol version")
        i = 1
        while i < len(args):
            word = args[i].upper()
            if word == b"AUTH" and i + 2 < len(args):
                self._auth(conn, args[i + 1 : i + 3])
                i += 3
            elif word == b"SETNAME" and i + 1 < len(args):
                conn.name = _client_name(args[i + 1])
                i += 2
            else:
                raise RespError(f"ERR Syntax error in HELLO option '{text(args[i])}'")
        if not conn.authed:
            raise RespError(NOAUTH)
        fields: list[Any] = ["server", "redis", "version", REDIS_VERSION, "proto", 2, "id"]
        fields += [conn.id, "mode", "standalone", "role", "master", "modules"]
        return array(
            [integer(f) if isinstance(f, int) else bulk(f) for f in fields] + [EMPTY_ARRAY]
        )

    def _select(self, conn: Connection, args: list[bytes]) -> bytes:
        if to_int(args[0]) != 0:
            raise RespError("ERR DB index is out of range")
        return OK

    def _client(self, conn: Connection, args: list[bytes]) -> bytes:
        sub = args[0].upper()
        if sub == b"SETNAME" and len(args) == 2:
            conn.name = _client_name(args[1]) or None
            return OK
        if sub == b"GETNAME" and len(args) == 1:
            return bulk(conn.name)
        if sub == b"ID" and len(args) == 1:
            return integer(conn.id)
        if sub == b"SETINFO" and len(args) == 3:
            return OK
        if sub in (b"INFO", b"LIST") and len(args) == 1:
            conns = [conn] if sub == b"INFO" else list(self.connections.values())
            lines = [f"id={c.id} name={text(c.name or b'')} db=0\n" for c in conns]
            return bulk("".join(lines))
        if sub in (b"SETNAME", b"GETNAME", b"ID", b"SETINFO", b"INFO", b"LIST"):
            raise RespError(
                f"ERR wrong number of arguments for 'client|{text(sub).lower()}' command"
            )
        raise RespError(f"ERR unknown subcommand '{text(args[0])}'. Try CLIENT HELP.")

    def _command(self, conn: Connection, args: list[bytes]) -> bytes:
        table = {**{n: e[0] for n, e in resp_commands.COMMANDS.items()}}
        table.update({n: e[0] for n, e in self.local.items()})
        sub = args[0].upper() if args else b""
        if sub == b"COUNT":
            return integer(len(table))
        if sub == b"LIST":
            return bulks([n.lower() for n in table])
        if sub == b"DOCS":
            return EMPTY_ARRAY
        if sub == b"INFO":
            names = [a.upper() for a in args[1:]]
            return array([_command_info(n, table[n]) if n in table else NIL for n in names])
        if not args:
            return array([_command_info(n, a) for n, a in table.items()])
        raise RespError(f"ERR unknown subcommand '{text(args[0])}'. Try COMMAND HELP.")

    def _config(self, conn: Connection, args: list[bytes]) -> bytes:
        if args[0].upper() != b"GET" or len(args) < 2:
            raise RespError(f"ERR unknown subcommand '{text(args[0])}'. Try CONFIG HELP.")
        known = {"save": "", "appendonly": "no", "databases": "1", "maxmemory": "0"}
        pairs = [(text(a).lower(), known.get(text(a).lower())) for a in args[1:]]
        return bulks([x for name, value in pairs if value is not None for x in (name, value)])

    def _quit(self, conn: Connection, args: list[bytes]) -> bytes:
        conn.closing = True
        return OK

    def _reset(self, conn: Connection, args: list[bytes]) -> bytes:
        conn.name, conn.authed = None, not self.tokens
        return simple("RESET")

    def _info(self, conn: Connection, args: list[bytes]) -> Any:
        wanted = {text(a).lower() for a in args} or {"default"}
        if wanted & {"all", "everything", "default"}:
            wanted = set(INFO_SECTIONS)

        def finish(replies: list[Reply]) -> bytes:
            (code, stats), (code2, keys) = replies
            if code != wire.OK:
                return wire_error(code, stats)
            return bulk(self.info_text(conn, wanted, stats, keys if code2 == wire.OK else 0))

        return [("STATS", ()), ("DBSIZE", ())], finish

    def info_text(self, conn: Connection, wanted: set[str], stats: dict, keys: int) -> str:
        """INFO's text: the sections asked for, Redis's field names."""
        fields: dict[str, dict[str, Any]] = {
            "server": {
                "redis_version": REDIS_VERSION,
                "redis_mode": "standalone",
                "pycache_role": self.role,
                "pycache_node": f"{stats.get('node_id', '')} ({self.backend.describe(conn.pin)})",
                "os": f"{platform.system()} {platform.release()} {platform.machine()}",
                "arch_bits": 64 if platform.architecture()[0] == "64bit" else 32,
                "process_id": os.getpid(),
                "tcp_port": self.port,
                "uptime_in_seconds": int(time.monotonic() - self.started),
            },
            "clients": {"connected_clients": len(self.connections), "blocked_clients": 0},
            "memory": {
                "used_memory": stats.get("bytes", 0),
                "maxmemory": stats.get("max_memory", 0),
                "maxmemory_policy": "allkeys-lru" if stats.get("max_memory") else "noeviction",
            },
            "persistence": {"loading": 0 if stats.get("state") == "ready" else 1},
            "stats": {
                **self.counters,
                "keyspace_hits": stats.get("hits", 0),
                "keyspace_misses": stats.get("misses", 0),
                "expired_keys": stats.get("expired", 0),
                "evicted_keys": stats.get("evicted", 0),
            },
            "replication": {"role": "master", "connected_slaves": 0},
            "cluster": {"cluster_enabled": 0},
            "keyspace": {"db0": f"keys={keys},expires=0,avg_ttl=0"} if keys else {},
        }
        out = []
        for section in INFO_SECTIONS:
            if section in wanted:
                out.append(f"# {section.capitalize()}\r\n")
                out += [f"{k}:{v}\r\n" for k, v in fields[section].items()]
                out.append("\r\n")
        return "".join(out)


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


INFO_SECTIONS = (
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cluster",
    "keyspace",
)
SYNTAX_ERROR = "ERR syntax error"


def _client_name(name: bytes) -> bytes:
    if any(c <= 32 or c >= 127 for c in name):
        raise RespError("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


def _command_info(name: bytes, arity: int) -> bytes:
    first = 0 if name in _NO_KEYS else 1
    last = -1 if name in _ALL_KEYS else first
    step = 2 if name == b"MSET" else (1 if first else 0)
    return array(
        [bulk(name.lower()), integer(arity), EMPTY_ARRAY]
        + [integer(first)] * 1
        + [integer(last), integer(step)]
    )


_NO_KEYS = frozenset(
    {
        b"PING",
        b"ECHO",
        b"AUTH",
        b"HELLO",
        b"SELECT",
        b"CLIENT",
        b"COMMAND",
        b"CONFIG",
        b"INFO",
        b"QUIT",
        b"RESET",
        b"DBSIZE",
        b"KEYS",
        b"SCAN",
        b"FLUSHALL",
        b"FLUSHDB",
        b"WAIT",
    }
)
_ALL_KEYS = frozenset({b"MGET", b"MSET", b"DEL", b"UNLINK", b"EXISTS"})
