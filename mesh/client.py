"""The public Python client: ``from mesh.client import Client``.

The implementation lives with the other roles in :mod:`mesh.roles.client`;
this module is the stable, documented import path for users' code.
"""

from mesh.core.errors import (
    ConnectionFailed,
    NotInteger,
    PyCacheError,
    ServerError,
    Timeout,
)
from mesh.roles.asyncclient import AsyncClient
from mesh.roles.client import Client, Pipeline
from mesh.roles.clientplane import Credentials

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "Credentials",
    "NotInteger",
    "Pipeline",
    "PyCacheError",
    "ServerError",
    "Timeout",
]
