"""CRC32C (Castagnoli) for log records, snapshots and index files.

The ``crc32c`` package's ``__init__`` looks up its own version through
``importlib.metadata`` and imports its command-line tool, which together cost
about 20 ms of every process start here (a node's time to ready counts it).
So its C extension is loaded straight from the package folder; if that ever
fails (another layout, another build), the package is imported as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from pathlib import Path

_EXTENSION = "crc32c._crc32c"


def _load_extension() -> Callable[..., int]:
    spec = importlib.util.find_spec("crc32c")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"_crc32c{suffix}"
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader(_EXTENSION, str(path))
            ext_spec = importlib.util.spec_from_file_location(_EXTENSION, path, loader=loader)
            if ext_spec is None:
                continue
            module = importlib.util.module_from_spec(ext_spec)
            loader.exec_module(module)
            return module.crc32c
    raise ImportError("no crc32c extension found")


def _crc32c_function() -> Callable[..., int]:
    try:
        return _load_extension()
    except Exception:  # any surprise: the slower, documented way
        from crc32c import crc32c as packaged

        return packaged


#: ``crc32c(data, value=0) -> int``: the CRC32C of ``data``, continuing from ``value``.
crc32c = _crc32c_function()
