"""mesh.storage.checksum: the crc32c extension loaded without the package's import cost."""

from __future__ import annotations

import crc32c as package

from mesh.storage import checksum


def test_crc32c_matches_the_standard_check_value_and_the_package():
    assert checksum.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert checksum.crc32c(b"6789", checksum.crc32c(b"12345")) == 0xE3069283
    for data in (b"", b"\x00" * 1000, bytes(range(256)) * 17):
        assert checksum.crc32c(data) == package.crc32c(data)


def test_falls_back_to_the_package_when_the_extension_cannot_be_loaded(monkeypatch):
    def broken() -> None:
        raise ImportError("no such file")

    monkeypatch.setattr(checksum, "_load_extension", broken)
    fallback = checksum._crc32c_function()
    assert fallback is package.crc32c
    assert fallback(b"123456789") == 0xE3069283
