"""The key-space ops of the RESP front (mesh.core.keyspace), on an executor with a fake clock."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.keyspace import glob_regex
from tests.test_commands import make


def test_exists_counts_a_key_named_twice_twice():
    rig = make()
    rig.run("SET", "a", b"1")
    assert rig.run("EXISTS", "a", "a", "b") == 2
    assert rig.run("DBSIZE") == 1


def test_flushall_writes_one_tombstone_per_live_key():
    rig = make()
    rig.run("MSET", "a", b"1", "b", b"2")
    rig.written()
    assert rig.run("FLUSHALL") is True
    assert sorted((m.key, m.value) for m in rig.written()) == [("a", None), ("b", None)]
    assert rig.run("DBSIZE") == 0


def test_getdel_returns_and_deletes():
    rig = make()
    rig.run("SET", "a", b"1")
    assert rig.run("GETDEL", "a") == b"1"
    assert rig.run("GETDEL", "a") is None
    assert rig.run("GET", "a") is None


def test_setx_returns_the_old_value_and_honours_nx_xx_keepttl():
    rig = make()
    assert rig.run("SETX", "k", b"1", {"nx": True}) == [True, None]
    assert rig.run("SETX", "k", b"2", {"nx": True}) == [False, b"1"]
    assert rig.run("SETX", "x", b"2", {"xx": True}) == [False, None]
    assert rig.run("SETX", "k", b"3", {"ttl_ms": 5000}) == [True, b"1"]
    assert rig.run("SETX", "k", b"4", {"keepttl": True}) == [True, b"3"]
    assert rig.run("TTL", "k") == 5000
    assert rig.run("SETX", "k", b"5") == [True, b"4"]
    assert rig.run("TTL", "k") == -1


def test_setx_with_a_past_deadline_deletes():
    rig = make()
    rig.run("SET", "k", b"1")
    now = rig.now.ms
    assert rig.run("SETX", "k", b"2", {"at_ms": now - 1}) == [True, b"1"]
    assert rig.run("GET", "k") is None
    assert rig.run("SETX", "k", b"2", {"at_ms": now + 3000}) == [True, None]
    assert rig.run("TTL", "k") == 3000


def test_getex_sets_or_removes_the_ttl():
    rig = make()
    rig.run("SET", "k", b"1")
    rig.written()
    assert rig.run("GETEX", "k") == b"1" and rig.written() == []
    assert rig.run("GETEX", "k", {"ttl_ms": 2000}) == b"1"
    assert rig.run("TTL", "k") == 2000
    assert rig.run("GETEX", "k", {"persist": True}) == b"1"
    assert rig.run("TTL", "k") == -1
    assert rig.run("GETEX", "k", {"at_ms": rig.now.ms - 5}) == b"1"
    assert rig.run("GET", "k") is None
    assert rig.run("GETEX", "nope", {"ttl_ms": 5}) is None


def test_keys_and_scan_match_redis_globs():
    rig = make()
    names = [f"user:{i}" for i in range(50)] + ["other", "h?llo", "hallo", "hbllo"]
    for name in names:
        rig.run("SET", name, b"v")
    assert sorted(rig.run("KEYS", b"user:*")) == sorted(names[:50])
    assert sorted(rig.run("KEYS", b"h[ab]llo")) == ["hallo", "hbllo"]
    assert rig.run("KEYS", b"h\\?llo") == ["h?llo"]
    seen, cursor = [], 0
    while True:
        cursor, page = rig.run("SCAN", cursor, b"user:*", 7)
        seen += page
        if cursor == 0:
            break
    assert sorted(seen) == sorted(names[:50])


def test_scan_returns_each_key_present_throughout_exactly_once():
    rig = make()
    for i in range(200):
        rig.run("SET", f"k{i}", b"v")
    seen, cursor, added = [], 0, 0
    while True:
        cursor, page = rig.run("SCAN", cursor, None, 13)
        seen += page
        rig.run("SET", f"new{added}", b"v")  # churn during the iteration
        rig.run("DEL", f"new{added // 2}")
        added += 1
        if cursor == 0:
            break
    old = [k for k in seen if k.startswith("k")]
    assert sorted(old) == sorted(f"k{i}" for i in range(200))


@pytest.mark.parametrize(
    "pattern, yes, no",
    [
        ("*", ["", "abc"], []),
        ("a?c", ["abc", "axc"], ["ac", "abbc"]),
        ("[^a]x", ["bx"], ["ax"]),
        ("[a-c]x", ["bx"], ["dx"]),
        ("a\\*", ["a*"], ["ab"]),
        ("a.b", ["a.b"], ["axb"]),
    ],
)
def test_glob_regex(pattern, yes, no):
    regex = glob_regex(pattern)
    assert all(regex.fullmatch(s) for s in yes)
    assert not any(regex.fullmatch(s) for s in no)


@given(st.text(max_size=12))
def test_glob_regex_never_fails_to_compile(pattern):
    assert isinstance(glob_regex(pattern), re.Pattern)


# -- the client methods and CLI commands, against a node ---------------------------------


def _cli(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args, "--connect", node.endpoint],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_client_keyspace_methods(node):
    with node.client() as c:
        c.mset({f"user:{i}": b"x" for i in range(30)} | {"other": b"y"})
        assert c.exists("user:1", "user:1", "nope") == 2
        assert c.dbsize() == 31
        assert sorted(c.keys("user:*")) == sorted(f"user:{i}" for i in range(30))
        assert sorted(c.scan_iter(match="user:2*", count=3)) == sorted(
            ["user:2"] + [f"user:{i}" for i in range(20, 30)]
        )
        cursor, page = c.scan(0, None, 5)
        assert cursor != 0 and len(page) <= 5
        assert c.getdel("other") == b"y" and c.getdel("other") is None
        with c.pipeline() as pipe:
            pipe.exists("user:1")
            pipe.dbsize()
            assert pipe.execute() == [1, 30]
        assert c.flushall() is True
        assert c.dbsize() == 0


def test_cli_keyspace_commands(node):
    with node.client() as c:
        c.mset({"a": b"1", "b": b"2"})
    assert _cli(node, "mget", "a", "zz", "b").stdout == "1\n\n2\n"
    assert _cli(node, "exists", "a", "b", "zz").stdout == "2\n"
    assert _cli(node, "keys").stdout == "a\nb\n"
    assert sorted(_cli(node, "scan", "--count", "1").stdout.split()) == ["a", "b"]
    refused = _cli(node, "flush")
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert _cli(node, "flush", "--yes").stdout == "OK\n"
    assert _cli(node, "keys").stdout == ""
