"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

- The compose file is validated against the Compose Specification's JSON schema,
  as vendored by ``check-jsonschema`` (``--builtin-schema vendor.compose-spec``);
  a broken copy must fail, so the validator is known to be live.
- What ``docker compose config`` would also reject: undefined services in
  ``depends_on``, ``service_healthy`` on a service without a healthcheck,
  undeclared named volumes, a host port published twice.
- The topology of ``pycache up``: nodes n1..n3 on HTTP ports 8001-8003, each
  with its own volume on /data and naming the other two as peers; a balancer
  in front of every node; the edge on port 5000, started once every node is
  healthy.  No Kafka, no Zookeeper.
- Every service's ``command`` is parsed by the real click command, so a renamed
  or missing flag fails here and not at ``docker compose up``.
- Both Compose implementations: ``docker compose`` (v2) and ``docker-compose``
  (v1.29+, the Python one): no ``version`` (v2 calls it obsolete) and only
  keys, healthcheck fields and ``depends_on`` conditions v1.29 knows too.
- The Dockerfile: FROM python (a base image pinnable by digest, how being
  documented), installs the dependencies in a layer of their own before
  copying the code, declares a HEALTHCHECK on a route that exists, runs as a
  non-root user, exposes the ports the compose file uses; its COPY sources
  survive .dockerignore, and setup.py finds the package in that build context.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
from ruamel.yaml import YAML

from mesh.cli import main
from mesh.roles.config import check_endpoint

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

NODES = {"n1": 8001, "n2": 8002, "n3": 8003}  # service -> published HTTP port (the seed's)
EDGE_PORT = 5000
KEYGEN = "keygen"  # the one-shot service that makes the credentials


@pytest.fixture(autouse=True)
def no_pycache_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands are parsed as the containers see them: no PYCACHE_* from this shell."""
    for name in list(os.environ):
        if name.startswith("PYCACHE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return YAML(typ="safe", pure=True).load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def parse_command(service: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(subcommand, params)`` as ``pycache`` itself would parse the service's command."""
    argv = service["command"]
    if isinstance(argv, str):
        argv = shlex.split(argv)
    assert argv[0] == "pycache", f"{argv}: run the console script"
    name, args = argv[1], list(argv[2:])
    command = main.commands.get(name)
    assert command is not None, f"pycache has no {name!r} command"
    try:
        ctx = command.make_context(name, args)
    except click.ClickException as exc:
        pytest.fail(f"pycache {shlex.join(argv[1:])}: {exc.format_message()}")
    return name, ctx.params


def endpoint(value: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``, checked as the roles check it."""
    check_endpoint("endpoint", value)
    host, _, port = value.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port of the service's short-syntax port mappings."""
    ports = {}
    for mapping in service.get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        ports[int(container)] = int(host)
    return ports


def healthcheck_code(service: dict[str, Any]) -> str:
    """The Python source of a ``CMD python -c ...`` healthcheck."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"{test}: use python, the image has no curl"
    compile(test[3], "<healthcheck>", "exec")  # raises SyntaxError if it is not Python
    return test[3]


def ready_url_port(service: dict[str, Any]) -> int:
    """The port of the ``http://127.0.0.1:PORT/api/ready/`` URL the healthcheck fetches."""
    urls = re.findall(r"""['"](http://[^'"]+)['"]""", healthcheck_code(service))
    assert len(urls) == 1, urls
    url = urlsplit(urls[0])
    assert (url.hostname, url.path) == ("127.0.0.1", "/api/ready/"), urls[0]
    assert url.port is not None
    return url.port


# ---------------------------------------------------------------------- the specification


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_follows_the_compose_specification():
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_specification_check_rejects_a_broken_file(tmp_path: Path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("condition: service_healthy", "condition: service_ready", 1)
    )
    result = check_jsonschema(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "service_ready" in result.stdout


# ---------------------------------------------------------------------- what compose would reject


def test_dependencies_exist_and_healthy_ones_have_healthchecks(services):
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_no_host_port_is_published_twice(services):
    ports = [port for service in services.values() for port in published(service).values()]
    assert len(ports) == len(set(ports)), ports


# ---------------------------------------------------------------------- the topology


def test_services_are_the_local_topology_without_a_broker(services):
    assert set(services) == {*NODES, "balancer", "edge", KEYGEN}
    for name, service in services.items():
        for word in ("kafka", "zookeeper"):
            assert word not in repr(service).lower(), name


def test_every_service_restarts_and_has_a_readiness_healthcheck(services):
    for name, service in long_running(services).items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("build") == ".", name
        healthcheck_code(service)


def test_nodes(services):
    balancer = parse_command(services["balancer"])[1]
    node_apis = {endpoint(e) for e in balancer["nodes"].split(",")}
    repl_of = {}
    for name, http_port in NODES.items():
        service = services[name]
        command, params = parse_command(service)
        assert command == "node"
        assert params["node_id"] == name
        assert params["data_dir"] == "/data"
        assert service["volumes"][0] == f"{name}-data:/data", "a volume of its own on /data"
        # HELLO tells peers the endpoints a node bound: bind them on a name the
        # peers resolve to this container, never on 0.0.0.0.
        for socket in ("repl", "pub"):
            assert endpoint(params[socket])[0] == name, f"{name} --{socket}"
        repl_of[name] = params["repl"]
        assert (params["http_host"], params["http_port"]) == ("0.0.0.0", http_port)
        assert published(service) == {http_port: http_port}
        assert ready_url_port(service) == http_port
        api_host, api_port = endpoint(params["api"])
        assert api_host in ("0.0.0.0", name), "the balancer must reach the client API"
        assert (name, api_port) in node_apis, f"the balancer does not know {name}"
    assert len(node_apis) == len(NODES)
    for name in NODES:
        peers = parse_command(services[name])[1]["peers"].split(",")
        assert sorted(peers) == sorted(r for n, r in repl_of.items() if n != name), name


def test_balancer(services):
    service = services["balancer"]
    command, params = parse_command(service)
    assert command == "balancer"
    host, port = endpoint(params["front"])
    assert host == "0.0.0.0"
    assert published(service) == {port: port}
    assert set(service["depends_on"]) == {*NODES, KEYGEN}
    assert f"tcp://127.0.0.1:{port}" in healthcheck_code(service)


def test_edge_waits_for_healthy_nodes(services):
    service = services["edge"]
    command, params = parse_command(service)
    assert command == "edge"
    assert (params["host"], params["port"]) == ("0.0.0.0", EDGE_PORT)
    front = endpoint(parse_command(services["balancer"])[1]["front"])[1]
    assert [endpoint(e) for e in params["backend"].split(",")] == [("balancer", front)]
    assert published(service) == {EDGE_PORT: EDGE_PORT}
    assert ready_url_port(service) == EDGE_PORT
    conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
    assert {n: conditions.get(n) for n in NODES} == dict.fromkeys(NODES, "service_healthy")


def long_running(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every service but the one-shot that makes the credentials."""
    return {name: service for name, service in services.items() if name != KEYGEN}


def test_credentials_are_made_once_before_anything_starts(services):
    keygen = services[KEYGEN]
    assert keygen.get("restart") == "no" and keygen["volumes"] == ["keys:/keys"]
    script = " ".join(keygen["command"])
    for words in ("pycache keygen --keys /keys/peers n1 n2 n3", "pycache client-keygen"):
        assert words in " ".join(script.split()), script
    for name, service in long_running(services).items():
        assert service["depends_on"][KEYGEN] == {"condition": "service_completed_successfully"}
        assert "keys:/keys:ro" in service["volumes"], name


def test_everything_runs_with_credentials_and_publishes_on_loopback(services):
    for name, service in long_running(services).items():
        command, params = parse_command(service)
        assert not params.get("insecure"), f"{name} runs --insecure"
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"
        if command == "node":
            assert params["keys"] == "/keys/peers"
            assert params["client_keys"] == "/keys/clients"
            assert params["token_file"] == "/keys/clients/tokens"
    assert parse_command(services["balancer"])[1]["client_keys"] == "/keys/clients"
    assert parse_command(services["edge"])[1]["token_file"] == "/keys/clients/tokens"


# ---------------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    return instructions


def base_image() -> str:
    """The FROM image, ``${ARG}`` replaced by the ARG's default."""
    defaults: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], args)
    raise AssertionError("no FROM")


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """``(exclude, regex)`` per .dockerignore line, in order (the last match wins)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        patterns.append((exclude, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (a folder's match covers
    everything in it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for exclude, regex in dockerignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = exclude
    return result


def test_dockerfile_installs_the_package_as_a_non_root_user(services):
    instructions = dockerfile_instructions()
    assert {
        keyword for keyword, _ in instructions[: [k for k, _ in instructions].index("FROM")]
    } <= {"ARG"}, "only ARGs before FROM"
    assert base_image().startswith("python:3."), base_image()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any(re.search(r"pip install \.(\s|$)", run) for run in runs), runs
    assert not any("[test]" in run or "-e " in run for run in runs), "no dev deps, no -e"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert any(keyword == "CMD" for keyword, _ in instructions)
    exposed = {
        int(port.split("/")[0])
        for keyword, args in instructions
        if keyword == "EXPOSE"
        for port in args.split()
    }
    used = {port for service in services.values() for port in published(service)}
    assert used <= exposed, f"not EXPOSEd: {sorted(used - exposed)}"


def test_dockerignore_keeps_what_the_image_needs():
    for path in ("setup.py", "README.md", "mesh/__init__.py", "mesh/cli/__init__.py"):
        assert not ignored(path), path
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_compose.py",
        "mesh/__pycache__/x.pyc",
    ):
        assert ignored(path), path


def test_build_context_installs_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Copy what the Dockerfile COPYs, as .dockerignore filters it, and run setup.py there."""
    context = tmp_path / "context"
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignored(relative):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, context / relative)
    setuptools = pytest.importorskip("setuptools")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: calls.append(kwargs))
    monkeypatch.chdir(context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # setup.py's open(README).read()
        runpy.run_path("setup.py", run_name="__main__")
    (kwargs,) = calls
    assert "mesh" in kwargs["packages"]
    assert "pycache = mesh.cli:main" in kwargs["entry_points"]["console_scripts"]
    assert not list(context.rglob("__pycache__")), "byte code in the build context"


def test_dependencies_are_installed_in_a_layer_before_the_code():
    """Editing mesh/ must not reinstall the dependencies: their RUN comes before COPY mesh."""
    instructions = dockerfile_instructions()
    copies = [i for i, (k, args) in enumerate(instructions) if k == "COPY"]
    code = [i for i in copies if re.search(r"(^|\s)mesh/?(\s|$)", instructions[i][1])]
    assert len(code) == 1, [instructions[i] for i in copies]
    installs = [
        i for i, (k, args) in enumerate(instructions) if k == "RUN" and "pip install" in args
    ]
    deps = [i for i in installs if "--no-deps" not in instructions[i][1]]
    assert deps and deps[0] < code[0], "install the dependencies before COPY mesh"
    for i in copies:
        if i < deps[0]:
            assert "mesh" not in instructions[i][1].split(), instructions[i]
    after = [i for i in installs if i > code[0]]
    assert after and all("--no-deps" in instructions[i][1] for i in after), (
        "after the code is copied, install it with --no-deps (the layer above has the deps)"
    )
    assert "mesh/__init__.py" in instructions[deps[0]][1], "a stub package stands in for the code"


def test_dockerfile_declares_a_healthcheck_on_an_open_route():
    from mesh.roles.edge import make_app
    from mesh.roles.protected import is_open_path

    instructions = dockerfile_instructions()
    (check,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    argv = json.loads(command)  # the exec form: no shell needed
    assert argv[:2] == ["python", "-c"], argv
    compile(argv[2], "<healthcheck>", "exec")
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    url = re.search(r"HEALTHCHECK_URL=(\S+)", envs)
    assert url and "HEALTHCHECK_URL" in argv[2], "the checked URL is an ENV a service can change"
    parts = urlsplit(url[1])
    routes = [
        r.matcher.regex
        for r in make_app("tcp://127.0.0.1:1", timeout=1, max_body_bytes=1).wildcard_router.rules
    ]
    assert any(r.fullmatch(parts.path) for r in routes) and is_open_path(parts.path), url[1]
    edge_port = main.commands["edge"].make_context("edge", []).params["port"]
    assert parts.port == edge_port, "the default is the edge's default port"


def test_pinning_the_base_image_by_digest_is_documented():
    text = DOCKERFILE.read_text()
    (arg,) = [args for keyword, args in dockerfile_instructions() if keyword == "ARG"]
    name = arg.partition("=")[0]
    assert f"FROM ${{{name}}}" in text
    assert f"--build-arg {name}=python:" in text and "@sha256:" in text, "say how to pin"


#: What docker-compose 1.29 (Compose v1, the Python one) knows of the Compose
#: Specification; Compose v2 (``docker compose``, and the v2 ``docker-compose``
#: binary) knows all of it.  1.29 is the first v1 with
#: ``service_completed_successfully``.
V1_SERVICE_KEYS = frozenset(
    [
        "build",
        "command",
        "container_name",
        "depends_on",
        "entrypoint",
        "environment",
        "env_file",
        "expose",
        "healthcheck",
        "hostname",
        "image",
        "init",
        "labels",
        "logging",
        "networks",
        "ports",
        "restart",
        "stop_grace_period",
        "stop_signal",
        "user",
        "volumes",
        "working_dir",
        "ulimits",
    ]
)
V1_HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "disable"}
)
V1_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})


def test_compose_file_works_with_docker_compose_v1_and_v2(compose, services):
    assert "version" not in compose, "docker compose (v2) warns that version is obsolete"
    assert set(compose) - {"services", "volumes"} <= {k for k in compose if k.startswith("x-")}
    for name, service in services.items():
        assert set(service) <= V1_SERVICE_KEYS, f"{name}: {set(service) - V1_SERVICE_KEYS}"
        assert set(service.get("healthcheck", {})) <= V1_HEALTHCHECK_KEYS, name
        for spec in service.get("depends_on", {}).values():
            assert set(spec) == {"condition"} and spec["condition"] in V1_CONDITIONS, name


def test_readme_says_which_compose_command_to_use():
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up" in readme and "docker-compose up" in readme
    assert "1.29" in readme
