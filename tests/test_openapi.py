"""The OpenAPI 3 document of the HTTP API, checked and fuzzed against live doors.

- ``docs/openapi.json`` is the packaged ``mesh/roles/openapi.json`` (one file,
  kept in two places), a valid OpenAPI 3 document (openapi-spec-validator),
  with every route the Tornado application serves and every status docs/api.md
  lists.
- ``/api/openapi.json`` serves it on the edge and on a node's HTTP port.
- HEAD is answered on every GET route: the GET's status and headers, no body.
- schemathesis generates requests from the document (valid ones, then invalid
  ones) against a live node's HTTP API and a live edge: no 5xx, and every
  response (status, content type, headers, body) is one the document allows.
  Bounded: a few examples per operation, well under 60 s per door.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest

from mesh.roles.edge import make_app
from mesh.roles.http_handlers import openapi_document
from tests.conftest import Processes
from tests.test_edge import Door, EdgeProcess, http_url

ROOT = Path(__file__).resolve().parent.parent
DOCS_SPEC = ROOT / "docs" / "openapi.json"
PACKAGED_SPEC = ROOT / "mesh" / "roles" / "openapi.json"
#: Examples per operation and generation mode: enough to hit every status path
#: the document lists, few enough for well under 60 s per door.
MAX_EXAMPLES = 25
FUZZ_BUDGET_S = 60.0


@pytest.fixture(params=["node-http", "edge"])
def door(request: pytest.FixtureRequest, procs: Processes) -> Door:
    """A node's own HTTP API, or an edge in front of a node (as in tests/test_edge.py)."""
    if request.param == "node-http":
        node = procs.node("n1", extra=["--http-port", "*"])
        return Door(http_url(node), node)
    node = procs.node("n1")
    edge = EdgeProcess(procs.tmp_path / "edge", node.endpoint)
    procs.track(edge)
    return Door(edge.start().url, node)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(DOCS_SPEC.read_text())


def test_docs_copy_is_the_packaged_document():
    assert DOCS_SPEC.read_bytes() == PACKAGED_SPEC.read_bytes(), (
        "docs/openapi.json and mesh/roles/openapi.json differ: copy one onto the other"
    )
    assert openapi_document() == PACKAGED_SPEC.read_bytes()


def test_document_is_valid_openapi_3(spec):
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_a_broken_document_is_caught(spec):
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    broken = json.loads(json.dumps(spec))
    del broken["paths"]["/api/ready/"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def _routes() -> list[str]:
    """The Tornado application's route patterns."""
    app = make_app("tcp://127.0.0.1:1", timeout=1, max_body_bytes=1)
    return [rule.matcher.regex.pattern for rule in app.wildcard_router.rules]


def test_every_route_is_documented_and_every_path_is_served(spec):
    paths = spec["paths"]
    for pattern in _routes():
        matched = [p for p in paths if re.fullmatch(pattern, p.replace("{key}", "k"))]
        assert matched, f"route {pattern} is not in the document"
    routes = [re.compile(p) for p in _routes()]
    for path in paths:
        assert any(r.fullmatch(path.replace("{key}", "k")) for r in routes), path


def test_every_get_route_documents_head_and_the_statuses_of_docs_api(spec):
    paths = spec["paths"]
    for path, item in paths.items():
        if "get" in item:
            assert "head" in item, f"{path}: no HEAD"
            assert set(item["head"]["responses"]) == set(item["get"]["responses"]), path
    cache = paths["/api/cache/{key}/"]
    assert set(cache["post"]["responses"]) >= {"201", "400", "401", "413", "503", "507"}
    assert set(cache["get"]["responses"]) >= {"200", "400", "401", "404", "503"}
    assert set(cache["delete"]["responses"]) >= {"200", "400", "401", "503"}
    assert set(paths["/api/ready/"]["get"]["responses"]) >= {"200", "503"}
    assert [p["name"] for p in cache["post"]["parameters"]] == ["ttl"]
    for probe in ("/api/health/", "/api/live/", "/api/ready/"):
        assert paths[probe]["get"]["security"] == [{}], f"{probe} needs no token"


#: docs/api.md's sections with a status table -> the operation they describe.
API_DOC_SECTIONS = {
    "SET a key": ("/api/cache/{key}/", "post"),
    "GET a key": ("/api/cache/{key}/", "get"),
    "EXPIRE a key": ("/api/cache/{key}/", "delete"),
    "Liveness": ("/api/health/", "get"),
    "Readiness": ("/api/ready/", "get"),
    "Cluster": ("/api/cluster/", "get"),
    "OpenAPI document": ("/api/openapi.json", "get"),
}


def api_doc_statuses() -> dict[str, set[str]]:
    """Each docs/api.md section's ``| status | when |`` table: the statuses it lists."""
    statuses: dict[str, set[str]] = {}
    section = ""
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif re.match(r"\| \d{3} \|", line):
            statuses.setdefault(section, set()).add(line.split("|")[1].strip())
    return statuses


def test_the_document_has_every_status_docs_api_md_lists(spec):
    documented = api_doc_statuses()
    for section, (path, method) in API_DOC_SECTIONS.items():
        assert section in documented, f"docs/api.md has no status table under {section!r}"
        responses = set(spec["paths"][path][method]["responses"])
        assert documented[section] <= responses, (section, documented[section] - responses)
    errors = documented["Errors"] - {"405"}  # 405: a method the document does not list
    every = {
        code
        for item in spec["paths"].values()
        for op in item.values()
        if "responses" in op
        for code in op["responses"]
    }
    assert errors <= every, errors - every


# ---------------------------------------------------------------------- live doors


def fetch(method: str, url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.mark.processes
def test_doors_serve_the_document_and_answer_head(door: Door):
    status, headers, body = fetch("GET", door.url + "/api/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body == PACKAGED_SPEC.read_bytes()
    assert fetch("POST", door.url + "/api/cache/k/", b'"v"')[0] == 201
    for path, expected in (
        ("/api/cache/k/", 200),
        ("/api/cache/nope/", 404),
        ("/api/health/", 200),
        ("/api/live/", 200),
        ("/api/ready/", 200),
        ("/api/cluster/", 200),
        ("/api/openapi.json", 200),
        ("/api/nothing/", 404),
    ):
        got, get_headers, _ = fetch("GET", door.url + path)
        status, headers, body = fetch("HEAD", door.url + path)
        assert (status, body) == (got, b""), f"HEAD {path}"
        assert status == expected, f"HEAD {path}"
        assert headers["Content-Type"] == get_headers["Content-Type"], path


# ---------------------------------------------------------------------- schemathesis


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]


def fuzz(url: str) -> dict[str, int]:
    """Run every operation's valid and invalid cases against ``url``; calls per operation."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_path(DOCS_SPEC)
    calls: dict[str, int] = {}
    deadline = time.monotonic() + FUZZ_BUDGET_S
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            name = f"{operation.label} ({mode.value})"
            strategy = operation.as_strategy(generation_mode=mode)
            try:
                calls[name] = run_operation(strategy, url, deadline)
            except Unsatisfiable:
                # nothing to get wrong: no parameter and no body
                assert mode == GenerationMode.NEGATIVE, name
    return calls


def run_operation(strategy: Any, url: str, deadline: float) -> int:
    """Call and validate ``MAX_EXAMPLES`` cases drawn from ``strategy``; how many ran."""
    from hypothesis import HealthCheck, given, settings

    checks = _checks()
    count = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal count
        assert time.monotonic() < deadline, "fuzzing is over its time budget"
        count += 1
        case.call_and_validate(base_url=url, checks=checks, timeout=10)

    run()
    return count


@pytest.mark.processes
@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_response_off_the_document(door: Door, spec):
    started = time.monotonic()
    with warnings.catch_warnings():
        # schemathesis and its dependencies warn about their own internals
        # (deprecations, unclosed connections): not this project's code.
        warnings.simplefilter("ignore")
        calls = fuzz(door.url)
    assert time.monotonic() - started < FUZZ_BUDGET_S
    positive = [name for name, count in calls.items() if name.endswith("(positive)") and count]
    operations = sum(len(set(item) - {"parameters"}) for item in spec["paths"].values())
    assert len(positive) == operations, calls  # every operation ran
    negative = [name for name, count in calls.items() if name.endswith("(negative)") and count]
    assert {"POST /api/cache/{key}/ (negative)", "GET /api/cache/{key}/ (negative)"} <= set(
        negative
    ), calls
    assert "Cannot" not in door.node.child.stderr()


@pytest.fixture(params=["node-http", "edge"])
def token_door(request: pytest.FixtureRequest, procs: Processes, tmp_path: Path) -> Door:
    """A door that needs ``Authorization: Bearer s3cret`` on all but the probes."""
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    if request.param == "node-http":
        node = procs.node("n1", extra=["--http-port", "*", "--token-file", str(tokens)])
        return Door(http_url(node), node)
    node = procs.node("n1")
    edge = EdgeProcess(procs.tmp_path / "edge", node.endpoint, ["--token-file", str(tokens)])
    procs.track(edge)
    return Door(edge.start().url, node)


def fetch_as(
    method: str, url: str, token: str | None, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.mark.processes
def test_with_tokens_every_method_gets_the_documented_401_or_its_answer(token_door: Door, spec):
    """401 (with WWW-Authenticate, no body on HEAD) without a token, on every path and
    method the document lists but the probes; the probes answer without one."""
    url = token_door.url
    for path, item in spec["paths"].items():
        concrete = path.replace("{key}", "k")
        for method in [m for m in ("post", "get", "head", "delete") if m in item]:
            data = b'"v"' if method == "post" else None
            status, headers, body = fetch_as(method.upper(), url + concrete, None, data)
            if item[method].get("security") == [{}]:
                assert status == 200, (method, path)
                continue
            assert status == 401, (method, path, status, body)
            assert "401" in item[method]["responses"], (method, path)
            assert {k.lower(): v for k, v in headers.items()}["www-authenticate"].startswith(
                "Bearer"
            ), (method, path)
            assert (body == b"") == (method == "head"), (method, path, body)
            status, _, _ = fetch_as(method.upper(), url + concrete, "s3cret", data)
            assert status in (200, 201), (method, path, status)
    assert "Traceback" not in token_door.node.child.stderr()
