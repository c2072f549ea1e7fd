"""Size limits on what a client may send, and the range check every config uses.

The defaults are the documented ones (docs/protocol.md, "Limits"); a node's
flags change them (:class:`mesh.roles.config.NodeConfig` carries a
:class:`Limits`), and :mod:`mesh.core.wire` enforces them on every request.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.errors import ConfigError

MIB = 1024 * 1024

DEFAULT_MAX_KEY_BYTES = 512
DEFAULT_MAX_VALUE_BYTES = 8 * MIB
#: Room around the largest value for the key, the op and the framing.
REQUEST_OVERHEAD_BYTES = 64 * 1024
DEFAULT_MAX_FRAMES = 16
DEFAULT_MAX_ITEMS = 10_000


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every request before and while decoding it.

    ``max_request_bytes`` bounds one whole request frame; by default it is the
    largest value plus ``REQUEST_OVERHEAD_BYTES``, so an MSET carries at most
    about one maximal value's worth of data.
    """

    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_request_bytes: int = 0  # 0: max_value_bytes + REQUEST_OVERHEAD_BYTES
    max_frames: int = DEFAULT_MAX_FRAMES
    max_items: int = DEFAULT_MAX_ITEMS  # keys in one MGET/MSET/DEL

    @property
    def request_bytes(self) -> int:
        """The effective limit on one request frame."""
        return self.max_request_bytes or self.max_value_bytes + REQUEST_OVERHEAD_BYTES

    def validate(self) -> Limits:
        """Raise ConfigError when a limit is out of range; return self."""
        check_range("max_key_bytes", self.max_key_bytes, 1, 64 * 1024)
        check_range("max_value_bytes", self.max_value_bytes, 1, 512 * MIB)
        check_range("max_request_bytes", self.max_request_bytes, 0, 1024 * MIB)
        if self.max_request_bytes and self.max_request_bytes < self.max_key_bytes + 64:
            raise ConfigError("max_request_bytes must leave room for a key")
        check_range("max_frames", self.max_frames, 2, 1024)
        check_range("max_items", self.max_items, 1, 1_000_000)
        return self


def check_range(name: str, value: int, low: int, high: int) -> None:
    """Raise ConfigError unless ``value`` is an int (not a bool) in ``low..high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, not {value!r}")
