"""Packaging for PyCache: the ``mesh`` package and the ``pycache`` console script."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="pycache-mesh",
    version="0.1.0",
    description="A brokerless ZeroMQ mesh of in-memory key-value cache nodes",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mesh", "mesh.*"]),
    # The OpenAPI document served at /api/openapi.json (docs/openapi.json is a copy);
    # py.typed (PEP 561): the package's type hints are public.
    package_data={"mesh.roles": ["openapi.json"], "mesh": ["py.typed"]},
    zip_safe=False,
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "tornado>=6.3",
        "click>=8.1",
        # CRC32C (Castagnoli) in C: zlib only has CRC32, and a pure-Python
        # CRC32C would cap log replay far below its target.
        "crc32c>=2.3",
        # XXH3 for the per-entry share of the store digest: hashed on every write.
        "xxhash>=3.0",
        # /metrics in the Prometheus text format (families built at scrape time).
        "prometheus_client>=0.17",
        # The node's and the edge's event loop in C (mesh/roles/eventloop.py): a few per cent
        # less CPU per replicated SET; the standard loop where it has no wheel.
        "uvloop>=0.18; sys_platform != 'win32' and platform_python_implementation == 'CPython'",
        # --log-format json: one JSON object per log line.
        "python-json-logger>=3.1",
        # The RESP front's parser (C): command arrays at C speed.
        "hiredis>=2.0",
    ],
    extras_require={
        "test": [
            "pytest>=8,<9.2",
            "pytest-timeout>=2.2",
            "hypothesis>=6.90",
            "ruff>=0.5",
            "mypy>=1.8",
            # tests/test_resp*.py: a real Redis client against the RESP front
            "redis>=5.0",
            # Ships the Compose Specification's JSON schema (vendor.compose-spec)
            # and ruamel.yaml: tests/test_compose.py validates docker-compose.yml
            # offline, with no Docker engine.
            "check-jsonschema>=0.32",
            # tests/test_openapi.py: the OpenAPI document is validated, then
            # fuzzed against a live edge and node (schemathesis 4 runs on pytest 9).
            "openapi-spec-validator>=0.7,<0.10",
            "schemathesis>=4.32,<5",
            # tests/test_deploy.py: Kubernetes manifests checked offline (schemas bundled).
            "kubernetes-validate>=1.30",
        ],
        "bench": [
            "matplotlib>=3.7",
            "tqdm>=4.60",
        ],
    },
    entry_points={"console_scripts": ["pycache = mesh.cli:main"]},
)
