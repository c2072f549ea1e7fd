"""Prometheus exposition: metric families made from plain counters at scrape time.

Every process keeps its numbers as plain ints and dicts (and
:class:`mesh.core.histogram.Histogram`) on its own loop; nothing calls
``prometheus_client`` per request.  A :class:`FamilyCollector` turns them into
families only when ``/metrics`` is read, in a private
:class:`~prometheus_client.CollectorRegistry` per process (no default
``process_``/``python_`` collectors from the global registry, and no state
shared between the processes a test starts in one interpreter).

Nodes and the edge serve ``/metrics`` on their HTTP port
(:class:`mesh.roles.http_handlers.MetricsHandler`); the balancer, which has no
HTTP server, on a small one of its own (:class:`MetricsServer`, ``--metrics-port``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from mesh.core.histogram import Histogram
from mesh.roles.binding import address_error
from mesh.roles.protected import bearer_ok

PREFIX = "pycache_"
#: The ``Content-Type`` of a ``/metrics`` answer (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST

Families = Iterable[Metric]


def counter(name: str, doc: str, value: float, **labels: str) -> CounterMetricFamily:
    """A counter family with one sample (``name`` without ``pycache_`` or ``_total``)."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """A gauge family with one sample."""
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    samples: Iterable[tuple[Iterable[Any], float]],
) -> Metric:
    """A counter or gauge family with a sample per label set (``(label values, value)``)."""
    family = kind(PREFIX + name, doc, labels=labels)
    for values, value in samples:
        family.add_metric([str(v) for v in values], value)
    return family


def histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    """A histogram family (seconds) from a :class:`~mesh.core.histogram.Histogram`."""
    family = HistogramMetricFamily(PREFIX + name, doc)
    family.add_metric([], hist.cumulative(), sum_value=hist.sum)
    return family


def counters(prefix: str, doc: str, values: Mapping[str, int]) -> Iterator[Metric]:
    """One counter family per entry of a counters dict: ``<prefix><key>_total``."""
    for key, value in values.items():
        yield counter(prefix + key, f"{doc}: {key.replace('_', ' ')}", value)


def count_into(values: dict[str, int], name: str) -> Callable[..., None]:
    """A callback that adds one to ``values[name]`` (a ZAP handler's ``on_refused``)."""

    def count(*_: object) -> None:
        values[name] += 1

    return count


class FamilyCollector(Collector):
    """A collector that calls ``collect`` at every scrape (on the scraping thread)."""

    def __init__(self, collect: Callable[[], Families]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        """The families, made now from the process's plain counters."""
        yield from self._collect()


def registry(*collects: Callable[[], Families]) -> CollectorRegistry:
    """A private registry of :class:`FamilyCollector` s, one per function."""
    reg = CollectorRegistry(auto_describe=False)
    for collect in collects:
        reg.register(FamilyCollector(collect))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text of a ``/metrics`` answer."""
    return generate_latest(reg)


class MetricsServer:
    """A small HTTP server answering ``/metrics`` from a thread (the balancer's);
    with ``tokens``, only to requests that carry one as a bearer token."""

    def __init__(
        self, host: str, port: int, reg: CollectorRegistry, tokens: Sequence[bytes] = ()
    ) -> None:
        app = _guarded(make_wsgi_app(reg), tokens)
        try:
            self._server = make_server(host, port, app, ThreadingWSGIServer, _QuietHandler)
        except OSError as exc:
            raise address_error("metrics", f"{host}:{port}", exc) from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        bound = self._server.server_address[1]
        self.url = f"http://{host}:{bound}/metrics"

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        closer = threading.Thread(target=self._server.shutdown, daemon=True)
        closer.start()
        closer.join(2.0)
        self._server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """No access log on stderr (a scrape a second would fill it)."""


def _guarded(app: Any, tokens: Sequence[bytes]) -> Any:
    """``app`` behind a bearer-token check (none when ``tokens`` is empty)."""

    def guarded(environ: dict, start_response: Any) -> Iterable[bytes]:
        if tokens and not bearer_ok(environ.get("HTTP_AUTHORIZATION"), tokens):
            headers = [("WWW-Authenticate", "Bearer"), ("Content-Type", "text/plain")]
            start_response("401 Unauthorized", headers)
            return [b"Unauthorized: send Authorization: Bearer <token>\n"]
        return app(environ, start_response)

    return guarded
