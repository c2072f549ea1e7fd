"""deploy/kubernetes/, checked offline: no cluster, no Docker engine.

- Every manifest is a valid Kubernetes object (``kubernetes-validate``, strict:
  no unknown field) for the oldest and the newest Kubernetes it bundles
  schemas of; a broken copy fails, so the validator is known to be live. The
  Secret ``make-secret.sh`` makes is validated too (built here from a real
  ``pycache keygen``), and kustomization.yaml lists every manifest.
- Every container's command is parsed by the real click command: each
  ``--flag`` exists on it (``$(VAR)`` expanded as the kubelet does), and the
  configuration it makes validates (protected mode included: 0.0.0.0 binds
  with credentials) against the keys folder the pod sees, as the Secret's
  ``items`` lay it out; the node loads its peer keys from it.
- The StatefulSet: a headless Service for stable names, the peers and the
  balancer's nodes given by those names, a PVC on the data folder, readiness
  on /api/ready/ and liveness on /api/live/ (routes the HTTP app serves with
  no token), a grace period for the SIGTERM fsync, --max-memory-mib derived
  from the memory limit by the documented rule, and a PodDisruptionBudget.
"""

from __future__ import annotations

import base64
import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from mesh.cli import main
from mesh.roles.edge import make_app
from mesh.roles.protected import is_open_path
from mesh.roles.trust import load_peer_keys

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
MAKE_SECRET = KUBE / "make-secret.sh"
SECRET_NAME = "pycache-keys"
#: The rule of nodes.yaml: RSS <= 60 MiB + 2.5 x --max-memory-mib within 90% of the limit.
RSS_BASE_MIB, RSS_PER_MIB, LIMIT_SHARE = 60, 2.5, 0.9
#: The pod a container's $(VAR) references are expanded for.
POD_ENV = {"POD_NAME": "pycache-node-1", "POD_IP": "10.1.2.3"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in YAML(typ="safe", pure=True).load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_all(path)]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]


def the_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def argv(container: dict[str, Any]) -> list[str]:
    """The container's command line, ``$(VAR)`` expanded as the kubelet expands it."""
    words = [*container.get("command", []), *container.get("args", [])]
    return [re.sub(r"\$\((\w+)\)", lambda m: POD_ENV[m[1]], w) for w in words]


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


# ---------------------------------------------------------------------- the credentials


def flatten(folder: Path) -> dict[str, bytes]:
    """The Secret's data as make-secret.sh makes it: a file's path with "/" as "."."""
    return {
        path.relative_to(folder).as_posix().replace("/", "."): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def keys_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make-secret.sh makes, made with the same commands (for 3 nodes)."""
    folder = tmp_path_factory.mktemp("keys")
    runner = CliRunner()
    for args in (
        ["keygen", "--keys", str(folder / "peers"), *(f"pycache-node-{i}" for i in range(3))],
        ["client-keygen", "--client-keys", str(folder / "clients")]
        + ["--token-file", str(folder / "clients" / "tokens"), "balancer", "edge", "probe"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def secret(keys_folder: Path) -> dict[str, Any]:
    data = flatten(keys_folder)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME},
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def keys_view(workload: dict[str, Any], secret: dict[str, Any], root: Path) -> Path:
    """The keys volume as the pod sees it: each item of the Secret at its path."""
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys"]
    assert volume["secret"]["secretName"] == SECRET_NAME
    for item in volume["secret"]["items"]:
        assert item["key"] == item["path"].replace("/", "."), item
        assert item["key"] in secret["data"], f"the Secret has no {item['key']}"
        target = root / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(secret["data"][item["key"]]))
    return root


# ---------------------------------------------------------------------- schemas


def validator_versions() -> list[str]:
    import kubernetes_validate.utils as utils

    versions = utils.all_versions()
    return [versions[0], versions[-1]]


def validate(obj: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", validator_versions())
def test_every_manifest_is_a_valid_kubernetes_object(objects, secret, version):
    assert {o["kind"] for o in objects} >= {
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
    }
    for obj in [*objects, secret]:
        validate(obj, version)


def test_the_validator_rejects_a_broken_manifest(objects):
    import kubernetes_validate

    statefulset = find(objects, "StatefulSet", "pycache-node")
    broken = copy.deepcopy(statefulset)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, validator_versions()[-1])


def test_kustomization_lists_every_manifest_and_the_image(objects):
    kustomization = YAML(typ="safe", pure=True).load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    images = {image["name"] for image in kustomization["images"]}
    for workload in workloads(objects):
        assert the_container(workload)["image"].split(":")[0] in images


def run_make_secret(folder: Path, path: str) -> subprocess.CompletedProcess[str]:
    """make-secret.sh with this checkout's pycache and the ``kubectl`` found on ``path``."""
    import sys

    return subprocess.run(
        ["sh", str(MAKE_SECRET), str(folder)],
        env={
            "PATH": path,
            "PYCACHE": f"env PYTHONPATH={shlex.quote(str(ROOT))} {sys.executable} -m mesh",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_secret_script_names_every_file_as_the_manifests_expect(tmp_path, secret):
    """With a stand-in kubectl that prints its arguments: the keys made and their names."""
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nfor arg in "$@"; do printf \'%s\\n\' "$arg"; done\n')
    stub.chmod(0o755)
    result = run_make_secret(tmp_path / "keys", f"{stub.parent}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[:4] == ["create", "secret", "generic", SECRET_NAME], args
    files = dict(
        a.removeprefix("--from-file=").split("=", 1) for a in args if a.startswith("--from-file=")
    )
    assert "--dry-run=client" in args
    assert sorted(files) == sorted(secret["data"])  # the same names as flatten() gives
    for key, path in files.items():
        assert key == path.replace("/", ".") and (tmp_path / "keys" / path).is_file()
    again = run_make_secret(tmp_path / "keys", f"{stub.parent}:/usr/bin:/bin")
    assert again.returncode == 0 and again.stdout == result.stdout, "keys are kept"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_renders_valid_objects(objects):
    """``kubectl kustomize`` (offline) renders what kustomization.yaml says, still valid."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in YAML(typ="safe", pure=True).load_all(result.stdout) if d]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in objects
    )
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pycache"
        validate(obj, validator_versions()[-1])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_make_secret_script_makes_the_secret_the_manifests_use(tmp_path, secret):
    """Runs make-secret.sh (kubectl --dry-run=client: no cluster) with this checkout's pycache."""
    kubectl = Path(shutil.which("kubectl") or "kubectl").parent
    result = run_make_secret(tmp_path / "keys", f"{kubectl}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    made = YAML(typ="safe", pure=True).load(result.stdout)
    assert made["metadata"]["name"] == SECRET_NAME
    assert sorted(made["data"]) == sorted(secret["data"])
    validate(made, validator_versions()[-1])


# ---------------------------------------------------------------------- the CLI


def test_every_flag_exists_on_its_pycache_command(objects):
    for workload in workloads(objects):
        args = argv(the_container(workload))
        assert args[0] == "pycache", args
        command = main.commands[args[1]]
        known = {opt for param in command.params for opt in param.opts}
        for word in args[2:]:
            assert word.startswith("--"), f"{word}: give every option as --flag=value"
            name = word.split("=", 1)[0]
            assert name in known, f"pycache {args[1]} has no {name}"
        try:
            command.make_context(args[1], list(args[2:]))
        except click.ClickException as exc:
            pytest.fail(f"{shlex.join(args)}: {exc.format_message()}")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The configs the commands would run with, instead of running them."""
    import mesh.roles.balancer_main
    import mesh.roles.edge
    import mesh.roles.node_main

    configs: dict[str, Any] = {}
    monkeypatch.setattr(mesh.roles.node_main, "run_node", lambda c: configs.setdefault("node", c))
    monkeypatch.setattr(
        mesh.roles.balancer_main, "run_balancer", lambda c, *a: configs.setdefault("balancer", c)
    )
    monkeypatch.setattr(mesh.roles.edge, "run_edge", lambda c: configs.setdefault("edge", c))
    for name in ("PYCACHE_INSECURE", "PYCACHE_TOKEN_FILE", "PYCACHE_CLIENT_KEYS"):
        monkeypatch.delenv(name, raising=False)
    return configs


def test_every_process_validates_with_the_keys_its_pod_mounts(objects, secret, started, tmp_path):
    """Protected mode: 0.0.0.0 binds pass because the credentials are given and load."""
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        root = keys_view(workload, secret, tmp_path / name / "keys")
        args = [
            a.replace("=/keys/", f"={root}/").replace("=/data", f"={tmp_path / name}/data")
            for a in argv(the_container(workload))
        ]
        result = CliRunner().invoke(main, args[1:])
        assert result.exit_code == 0, f"{name}: {result.output}"
        config = started[args[1]]
        assert not getattr(config, "insecure", False), name
        if args[1] == "node":
            assert config.api == "tcp://0.0.0.0:7001" and config.http_host == "0.0.0.0"
            load_peer_keys(config.keys, config.node_id)


# ---------------------------------------------------------------------- the nodes


def test_nodes_have_stable_names_and_are_each_others_peers(objects):
    statefulset = find(objects, "StatefulSet", "pycache-node")
    service = find(objects, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "a headless Service"
    assert service["spec"]["publishNotReadyAddresses"], "catching-up nodes must find peers"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    replicas, base = statefulset["spec"]["replicas"], statefulset["metadata"]["name"]
    names = [f"{base}-{i}.{service['metadata']['name']}" for i in range(replicas)]
    args = argv(the_container(statefulset))
    assert flag(args, "id") == POD_ENV["POD_NAME"], "the node id is the pod name"
    repl_port = flag(args, "repl").rsplit(":", 1)[1]
    api_port = flag(args, "api").rsplit(":", 1)[1]
    assert flag(args, "peers").split(",") == [f"tcp://{n}:{repl_port}" for n in names]
    for socket in ("repl", "pub"):  # HELLO tells peers what was bound: not 0.0.0.0
        assert flag(args, socket).startswith(f"tcp://{POD_ENV['POD_IP']}:"), socket
    balancer = argv(the_container(find(objects, "Deployment", "pycache-balancer")))
    assert flag(balancer, "nodes").split(",") == [f"tcp://{n}:{api_port}" for n in names]
    edge = argv(the_container(find(objects, "Deployment", "pycache-edge")))
    front = find(objects, "Service", "pycache-balancer")["spec"]["ports"][0]["port"]
    assert flag(edge, "backend") == f"tcp://pycache-balancer:{front}"


def test_nodes_keep_their_data_on_a_volume_claim_each(objects):
    statefulset = find(objects, "StatefulSet", "pycache-node")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in the_container(statefulset)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == flag(argv(the_container(statefulset)), "data-dir")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def _routes() -> list[re.Pattern[str]]:
    app = make_app("tcp://127.0.0.1:1", timeout=1, max_body_bytes=1)
    return [rule.matcher.regex for rule in app.wildcard_router.rules]


def test_probes_use_routes_that_exist_and_need_no_token(objects):
    routes = _routes()
    for workload in workloads(objects):
        container = the_container(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("readinessProbe", "/api/ready/"), ("livenessProbe", "/api/live/")):
            check = container[probe]
            if "httpGet" not in check:
                continue  # the balancer has no HTTP port (its metrics port comes later)
            assert check["httpGet"]["path"] == path, (workload["metadata"]["name"], probe)
            assert any(r.fullmatch(path) for r in routes), f"no route serves {path}"
            assert is_open_path(path), f"{path} needs a token"
            port = ports[check["httpGet"]["port"]]
            args = argv(container)
            served = flag(args, "http-port" if args[1] == "node" else "port")
            assert int(served) == port, (workload["metadata"]["name"], probe)
        if "exec" in container["readinessProbe"]:
            command = container["readinessProbe"]["exec"]["command"]
            assert command[:2] == ["python", "-c"]
            compile(command[2], "<probe>", "exec")


def test_grace_period_covers_the_sigterm_fsync(objects):
    statefulset = find(objects, "StatefulSet", "pycache-node")
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 10 <= grace <= 120, grace
    assert flag(argv(the_container(statefulset)), "fsync") in ("always", "interval")


def test_max_memory_follows_the_memory_limit(objects):
    statefulset = find(objects, "StatefulSet", "pycache-node")
    container = the_container(statefulset)
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert mebibytes(container["resources"]["requests"]["memory"]) == limit
    max_memory = int(flag(argv(container), "max-memory-mib"))
    assert max_memory == int((LIMIT_SHARE * limit - RSS_BASE_MIB) / RSS_PER_MIB)
    assert RSS_BASE_MIB + RSS_PER_MIB * max_memory <= LIMIT_SHARE * limit


def test_disruption_budget_keeps_a_quorum(objects):
    statefulset = find(objects, "StatefulSet", "pycache-node")
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    replicas = statefulset["spec"]["replicas"]
    assert replicas - budget["spec"]["maxUnavailable"] > replicas // 2
