"""A fixed-bucket histogram of plain numbers, cheap enough for the hot path.

``observe`` is one ``bisect`` and two additions: no locks, no labels, no
objects per call.  The Prometheus exposition (:mod:`mesh.roles.metrics`)
reads the counts at scrape time, so a process that is never scraped pays
only for the additions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

#: Upper bounds (seconds) for request and fsync latencies: 50 us to 5 s.
LATENCY_BOUNDS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Histogram:
    """Counts of observed values per bucket (``value <= bound``), their sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be increasing and distinct")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` times: a batch of requests that took as long)."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def time(self, call: Callable[..., Any], *args: Any) -> Any:
        """Call ``call(*args)``, observe how long it took (when it returns), return its result."""
        started = perf_counter()
        result = call(*args)
        self.observe(perf_counter() - started)
        return result

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, values <= le)`` per bound, then ``("+Inf", count)``: Prometheus's form."""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out
