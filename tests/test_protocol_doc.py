"""Keep docs/protocol.md honest: its hex dumps, its op and error lists, its script.

Hex dumps are fenced blocks tagged ``hex``.  The first line of each is a marker
``# encode_request(...)`` / ``# encode_reply(...)`` / ``# encode_error(...)``
naming the :mod:`mesh.core.wire` call that produces the bytes (literal arguments,
plus ``E_*`` names from mesh.core.wire); every other line is ``hex bytes | comment``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from mesh.core import wire
from mesh.core.errors import ProtocolError
from mesh.core.limits import Limits

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SCRIPT_HEADER = "## A complete script with pyzmq and msgpack only"
ENCODERS = {
    "encode_request": wire.encode_request,
    "encode_reply": wire.encode_reply,
    "encode_error": wire.encode_error,
}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fenced_blocks(text: str, tag: str) -> list[str]:
    return re.findall(rf"^```{tag}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def _argument(node: ast.expr) -> object:
    if isinstance(node, ast.Name) and node.id.startswith("E_"):
        return getattr(wire, node.id)
    return ast.literal_eval(node)


def evaluate_marker(marker: str) -> tuple[str, bytes]:
    """Run the mesh.core.wire call a marker names; only literals and E_* names are allowed."""
    call = ast.parse(marker, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name), marker
    assert call.func.id in ENCODERS, f"unknown encoder in marker {marker!r}"
    assert not call.keywords, marker
    args = [_argument(arg) for arg in call.args]
    return call.func.id, ENCODERS[call.func.id](*args)


def hex_dumps() -> list[tuple[str, bytes]]:
    """Every ``hex`` block of the doc as (marker, the bytes it shows)."""
    dumps = []
    for block in fenced_blocks(doc_text(), "hex"):
        first, *lines = block.splitlines()
        assert first.startswith("# "), f"hex block without a '# encode_...' marker: {first!r}"
        shown = bytearray()
        for line in lines:
            assert "|" in line, f"hex line without '|': {line!r}"
            shown += bytes.fromhex(line.split("|", 1)[0])
        dumps.append((first[2:].strip(), bytes(shown)))
    return dumps


def test_doc_has_the_promised_hex_dumps():
    kinds = [evaluate_marker(marker)[0] for marker, _ in hex_dumps()]
    assert kinds.count("encode_request") >= 2
    assert kinds.count("encode_reply") >= 2
    assert kinds.count("encode_error") >= 1


@pytest.mark.parametrize("marker, shown", hex_dumps(), ids=lambda v: str(v)[:48])
def test_hex_dump_is_exactly_what_wire_encodes(marker, shown):
    kind, encoded = evaluate_marker(marker)
    assert shown.hex(" ") == encoded.hex(" "), marker
    if kind == "encode_reply":
        assert wire.decode_reply(shown)[1] == wire.OK
    elif kind == "encode_error":
        assert wire.decode_reply(shown)[1] != wire.OK
    elif msgpack.unpackb(shown[1:])[1].upper() in wire.OPS:  # FROB is invalid on purpose
        wire.decode_request(shown, Limits())  # raises unless it is a valid request


def test_documented_error_replies_are_what_the_node_would_send():
    """The error dumps answer the documented bad requests with the node's own reason."""
    errors = {}
    for marker, shown in hex_dumps():
        if evaluate_marker(marker)[0] == "encode_error":
            errors[wire.decode_reply(shown)[1]] = shown
    bad_requests = {
        wire.E_UNKNOWN_OP: wire.encode_request(3, "FROB", "greeting"),
        wire.E_VERSION: b"\x02" + wire.encode_request(1, "PING")[1:],
    }
    for code, frame in bad_requests.items():
        with pytest.raises(ProtocolError) as info:
            wire.decode_request(frame, Limits())
        error = info.value
        assert errors[code] == wire.encode_error(error.request_id, error.code, error.reason)


def test_every_op_has_a_section():
    text = doc_text()
    missing = [op for op in sorted(wire.OPS) if not re.search(rf"^### {op}$", text, re.M)]
    assert not missing, f"ops without a '### OP' section: {missing}"
    assert all(f"| `{op}` |" in text for op in wire.OPS), "an op is missing from the summary"


def test_every_error_code_is_in_the_table():
    text = doc_text()
    missing = [
        (code, name)
        for code, name in sorted(wire.ERROR_NAMES.items())
        if f"| {code} | `{name}` |" not in text
    ]
    assert not missing, f"error codes missing from the table: {missing}"


def complete_script() -> tuple[str, str]:
    """The script under the last section header, and the output shown after it."""
    text = doc_text()
    assert SCRIPT_HEADER in text
    section = text.split(SCRIPT_HEADER, 1)[1]
    (script,) = fenced_blocks(section, "python")
    (output,) = fenced_blocks(section, "text")
    return script, output


def test_complete_script_uses_only_pyzmq_and_msgpack():
    script, _ = complete_script()
    imported = set()
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - {"zmq", "msgpack"} <= set(sys.stdlib_module_names), imported
    assert {"zmq", "msgpack"} <= imported
    assert "poll(" in script  # every receive has a timeout


def run_complete_script(endpoint: str, tmp_path) -> str:
    """Run the doc's pyzmq-only script against ``endpoint``; check it; return its stdout."""
    script, output = complete_script()
    path = tmp_path / "pycache_example.py"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(path), endpoint],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output
    return result.stdout


@pytest.mark.processes
def test_complete_script_runs_against_a_node(node, tmp_path):
    result = run_complete_script(node.endpoint, tmp_path)
    assert result.splitlines() == ["SET True", "GET b'hello'", "DEL 1", "GET None"]
