"""The pure core: what PyCache's data and messages are, with no socket, disk or loop.

Everything here is plain classes and functions that the layers above call
into, unit-tested without processes: the client and peer wire formats, the
hybrid logical clock, the mutation, the store, the replication core, what
each command does, write acknowledgement, and the exception tree.  Nothing in
this package imports from :mod:`mesh.storage`, :mod:`mesh.roles` or
:mod:`mesh.cli` (``tests/test_layers.py`` checks).
"""
