"""The RESP front's connection commands, answered by the front itself: PING, ECHO,
AUTH, HELLO, SELECT, CLIENT, COMMAND, CONFIG GET, INFO, QUIT, RESET.

A mixin of :class:`mesh.roles.resp_server.RespServer` (it holds the state they
read: the tokens, the connections, the counters); INFO's figures come from the
node's STATS and DBSIZE, with Redis's field names.
"""

from __future__ import annotations

import hmac
import os
import platform
import time
from typing import TYPE_CHECKING, Any

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
    integer,
    simple,
    text,
    to_int,
    wire_error,
    wrong_arity,
)

if TYPE_CHECKING:
    from mesh.roles.resp_server import Connection

#: The Redis version whose semantics the front follows (INFO, HELLO).
REDIS_VERSION = "7.2.0"
Reply = tuple[int, Any]


class ConnectionCommands:
    """The connection commands, as methods ``(conn, args) -> reply`` (or a plan: INFO)."""

    tokens: tuple[bytes, ...]
    connections: dict[int, Connection]
    counters: dict[str, int]
    local: dict[bytes, tuple[int, Any]]
    role: str
    port: int
    started: float
    backend: Any

    def local_commands(self) -> dict[bytes, tuple[int, Any]]:
        """Name -> (Redis arity, method) of every connection command."""
        return {
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
        conn.quit()
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
