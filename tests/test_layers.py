"""The package's layers stay true: every import inside ``mesh`` points down.

The layers, bottom to top (docs/architecture.md draws them)::

    mesh.core      pure: data, messages, decisions; no socket, disk, loop or process
    mesh.storage   the data folder: log, segments, snapshots
    mesh.roles     sockets and processes: node, peering, balancer, edge, client, ...
    mesh.cli       the ``pycache`` command (and ``mesh.client``, the public re-export)

A module may import from its own layer and the layers below it, never above.
The two bottom layers also stay free of the libraries that do network I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mesh

PACKAGE = Path(mesh.__file__).parent
LAYERS = {"core": 0, "storage": 1, "roles": 2, "cli": 3}
TOP_LEVEL = {"mesh": 0, "mesh.client": 3, "mesh.__main__": 3}
NO_NETWORK = {"zmq", "tornado", "asyncio", "socket", "click", "subprocess"}


def module_name(path: Path) -> str:
    """``mesh/core/wire.py`` -> ``mesh.core.wire``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    """The rank of a module of ``mesh`` (0 = core, the bottom)."""
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{name} is in no layer: put it in one of {sorted(LAYERS)}")
    return LAYERS[parts[1]]


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, anywhere in it, with the line it does so on."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            base = node.module or ""
            # `from mesh.core import wire` imports the module mesh.core.wire.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def resolve(imported: str) -> str | None:
    """The module of ``mesh`` an import names, or None for another library."""
    if imported.split(".")[0] != "mesh":
        return None
    parts = imported.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()  # `from mesh.core.wire import Request` names an attribute
    return None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in MODULES:
        layer(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path):
    name = module_name(path)
    rank = layer(name)
    upward = []
    for lineno, imported in imports(path):
        target = resolve(imported)
        if target is not None and layer(target) > rank:
            upward.append(f"{path.relative_to(PACKAGE.parent)}:{lineno} imports {target}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if layer(module_name(p)) <= LAYERS["storage"]],
    ids=lambda p: module_name(p),
)
def test_core_and_storage_do_no_network_io(path: Path):
    used = {imported.split(".")[0] for _, imported in imports(path)} & NO_NETWORK
    assert not used, f"{module_name(path)} imports {sorted(used)}"


def test_the_checker_sees_an_upward_arrow(tmp_path: Path):
    """The test above would catch a core module importing a role."""
    bad = tmp_path / "bad.py"
    bad.write_text("from mesh.roles.node import Node\nfrom mesh.core import wire\n")
    targets = [resolve(imported) for _, imported in imports(bad)]
    assert targets == ["mesh.roles.node", "mesh.core.wire"]
    assert layer("mesh.roles.node") > layer("mesh.core.store")


def documented_modules() -> set[str]:
    """The modules docs/architecture.md's module map lists, as ``mesh.<layer>.<module>``."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed, layer_name = set(), ""
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        if cells[0]:
            layer_name = cells[0].split("`")[1].replace("/", ".")
        listed |= {f"{layer_name}.{name}" for name in cells[1].split("`")[1::2]}
    return listed


def test_the_architecture_page_maps_every_module():
    on_disk = {
        module_name(path)
        for path in MODULES
        if path.name != "__init__.py" and path.parent != PACKAGE
    }
    listed = documented_modules()
    assert listed == on_disk, (
        f"in the folders but not in docs/architecture.md: {sorted(on_disk - listed)}; "
        f"listed but not in the folders: {sorted(listed - on_disk)}"
    )
