"""The statistics of every process of a cluster: ``pycache stats --all``.

The processes are read from the ``cluster.json`` that ``pycache up`` writes
(:mod:`mesh.roles.supervisor`): each node answers STATS on its API endpoint
(the JSON of ``pycache stats``); the balancer and the edge, which hold no data,
are read from their ``/metrics`` (a flat ``{sample: value}`` dict, labels in
the sample's name as Prometheus writes them).  A process that cannot be read
gets ``{"error": ...}`` instead, and the others are still read.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mesh.core.errors import PyCacheError
from mesh.roles.client import Client
from mesh.roles.clientplane import Credentials


def read_layout(path: str) -> list[dict[str, Any]]:
    """The processes of a ``cluster.json``; a missing or broken file is one clear error."""
    try:
        layout = json.loads(Path(path).read_text())
        processes = layout["processes"]
        if not isinstance(processes, list):
            raise TypeError("processes is not a list")
    except FileNotFoundError:
        raise PyCacheError(
            f"{path}: no such file (pycache up writes it in its --data-dir)"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise PyCacheError(f"{path}: not a cluster.json of pycache up ({exc})") from None
    return processes


def scrape(url: str, timeout: float) -> dict[str, float]:
    """A ``/metrics`` page as ``{sample name with its labels: value}`` (``_created`` left out)."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            value = sample.value
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                int(value) if float(value).is_integer() else value
            )
    return out


def process_stats(
    process: dict[str, Any], timeout: float, credentials: Credentials | None = None
) -> dict[str, Any]:
    """One process's statistics: a node's STATS, else its ``/metrics``; or ``{"error"}``."""
    role, endpoints = process.get("role"), process.get("endpoints") or {}
    entry: dict[str, Any] = {"role": role, "pid": process.get("pid")}
    try:
        if role == "node" and endpoints.get("api"):
            with Client(endpoints["api"], timeout=timeout, credentials=credentials) as client:
                entry["stats"] = client.stats()
        elif endpoints.get("metrics"):
            entry["metrics"] = scrape(endpoints["metrics"], timeout)
        else:
            entry["error"] = "no api or metrics endpoint in cluster.json"
    except (PyCacheError, OSError, ValueError) as exc:
        entry["error"] = str(exc) or type(exc).__name__
    return entry


def cluster_stats(
    path: str, timeout: float, credentials: Credentials | None = None
) -> dict[str, dict[str, Any]]:
    """``{process id: statistics}`` for every process of the cluster.json at ``path``."""
    return {str(p.get("id")): process_stats(p, timeout, credentials) for p in read_layout(path)}
