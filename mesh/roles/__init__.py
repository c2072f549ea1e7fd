"""The roles: everything that runs a socket or a process.

A node (with its peering), the balancer, the HTTP edge, the supervisor behind
``pycache up``, the Python client, each role's configuration, and the thin
pyzmq helpers they share.  They build on :mod:`mesh.core` and
:mod:`mesh.storage`; only :mod:`mesh.cli` sits above them.
"""
