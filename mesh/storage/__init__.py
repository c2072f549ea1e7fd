"""Storage: what a node keeps on disk.

The data folder's identity, the segmented log (segments, their index, the
record frame and its readers), snapshots and the CRC32C they are checked
with.  It builds on :mod:`mesh.core` only; nothing here opens a socket or
imports from :mod:`mesh.roles` or :mod:`mesh.cli` (``tests/test_layers.py``
checks).
"""
