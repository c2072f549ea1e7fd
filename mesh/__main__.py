"""``python -m mesh`` is the ``pycache`` command."""

from mesh.cli import main

main()
