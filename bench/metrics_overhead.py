"""Does scraping /metrics slow the node's hot path?  SET throughput with a scrape every
second against none, interleaved in one run.

    python bench/metrics_overhead.py [--seconds 4] [--runs 7] [--window 64]
        [--fsync always|interval|never] [--json PATH]

One node (``fsync=always`` unless ``--fsync`` says otherwise; its HTTP port
on, so ``/metrics`` is served in the node's own loop) and one synchronous
DEALER client keeping ``--window`` SETs of 100-byte values in flight for
``--seconds``.  Each run measures the node twice: once plain, once while a
separate process (started once, told on and off through its stdin) GETs
``/metrics`` every second, as Prometheus would at an unusually short
interval; the order alternates run by run (ABBA), so a change in the
machine's load hits both.  The table shows the medians of each, the median
time of one scrape, and the median of the per-run scraped/plain ratios; the
script writes JSON.

Target (issue 14): scraped >= 0.97x plain.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_bench  # noqa: E402
from common import cpu_seconds, print_table, write_json  # noqa: E402
from node_bench import frames_for  # noqa: E402

TARGET = 0.97


def start_node(data_dir: str, fsync: str) -> tuple[subprocess.Popen, str, str]:
    """A node with its HTTP port on; return it, its API endpoint and its /metrics URL."""
    proc, info = node_bench.start_node(data_dir, ["--http-port", "*", "--fsync", fsync])
    return proc, info["api"], info["http"] + "/metrics"


def scraper(url: str) -> None:
    """The scraper process: told ``on`` on stdin, GET ``url`` every second until told
    ``off``, then print how many and the median time of one (ms); ``quit`` ends it.

    One process for the whole run, so that no interpreter start-up lands in a
    measurement."""
    on, took, next_at = False, [], 0.0
    while True:
        wait = max(0.0, next_at - time.monotonic()) if on else None
        if select.select([sys.stdin], [], [], wait)[0]:
            command = sys.stdin.readline().strip()
            if command == "on":
                on, took, next_at = True, [], time.monotonic()
            elif command == "off":
                on = False
                print(len(took), median(took) * 1000 if took else 0.0, flush=True)
            else:
                return
            continue
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()
        took.append(time.perf_counter() - started)
        next_at += 1.0


def sets_per_s(
    endpoint: str, frames: list[bytes], window: int, seconds: float
) -> tuple[float, int]:
    """Keep ``window`` SETs in flight for ``seconds``; return completed SETs/s, and how many
    SETs were sent in all."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        count, done = len(frames), 0
        for i in range(window):
            sock.send(frames[i % count])
        started = time.perf_counter()
        stop_at = started + seconds
        sent = window
        while True:
            sock.recv()
            done += 1
            if done % 256 == 0 and time.perf_counter() >= stop_at:
                break
            sock.send(frames[sent % count])
            sent += 1
        took = time.perf_counter() - started
        for _ in range(sent - done - 1):  # drain what is still in flight
            sock.recv()
        return done / took, sent
    finally:
        sock.close()
        ctx.term()


def measured(
    node: int, api: str, frames: list[bytes], args: argparse.Namespace, scraper: Any = None
) -> tuple[float, float, int, float]:
    """One measurement, with the scraper on (``scraper``) or not: (SETs/s, the node's CPU
    microseconds per SET, scrapes, ms per scrape)."""
    if scraper is not None:
        scraper.stdin.write("on\n")
        scraper.stdin.flush()
    cpu = cpu_seconds(node)
    try:
        rate, sent = sets_per_s(api, frames, args.window, args.seconds)
    finally:
        cpu_us = (cpu_seconds(node) - cpu) / sent * 1e6
        if scraper is not None:
            scraper.stdin.write("off\n")
            scraper.stdin.flush()
    if scraper is None:
        return rate, cpu_us, 0, 0.0
    count, ms = scraper.stdout.readline().split()
    return rate, cpu_us, int(count), float(ms)


def node_ms_per_scrape(node: int, url: str, scrapes: int = 50) -> float:
    """The node's CPU milliseconds per scrape, measured with no other load on it."""
    time.sleep(0.5)  # the last SETs' replies and fsyncs are done
    cpu = cpu_seconds(node)
    for _ in range(scrapes):
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()
    return (cpu_seconds(node) - cpu) / scrapes * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--fsync", default="always", choices=("always", "interval", "never"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--scrape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scrape:
        scraper(args.scrape)
        return
    frames = frames_for("SET", 50_000, seed=7)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pycache-bench-") as data_dir:
        node, api, url = start_node(data_dir, args.fsync)
        scraping = subprocess.Popen(
            [sys.executable, __file__, "--scrape", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            sets_per_s(api, frames, args.window, 1.0)  # warm up: the log's first segment
            for run in range(args.runs):
                order = (False, True) if run % 2 == 0 else (True, False)
                got = {
                    s: measured(node.pid, api, frames, args, scraping if s else None) for s in order
                }
                (plain, plain_cpu, _, _), (scraped, scraped_cpu, count, ms) = got[False], got[True]
                runs.append(
                    {
                        "plain_sets_s": plain,
                        "scraped_sets_s": scraped,
                        "ratio": scraped / plain,
                        "plain_cpu_us_per_set": plain_cpu,
                        "scraped_cpu_us_per_set": scraped_cpu,
                        "cpu_ratio": scraped_cpu / plain_cpu if plain_cpu else 0.0,
                        "scrapes": count,
                        "ms_per_scrape": ms,
                    }
                )
                print(
                    f"run {run + 1}: plain {plain:,.0f}/s ({plain_cpu:.1f} us CPU/SET), "
                    f"scraped {scraped:,.0f}/s ({scraped_cpu:.1f} us CPU/SET, {count} scrapes "
                    f"of {ms:.1f} ms), ratio {scraped / plain:.3f}",
                    flush=True,
                )
            idle_ms = node_ms_per_scrape(node.pid, url)
        finally:
            scraping.communicate("quit\n", timeout=15)
            node.send_signal(signal.SIGTERM)
            node.wait(15)

    def mid(key: str) -> float:
        return median(r[key] for r in runs)

    ratio = mid("ratio")
    target = f">= {TARGET}x " + ("ok" if ratio >= TARGET else "BELOW")
    scrapes = f"{mid('scrapes'):g}, {mid('ms_per_scrape'):.1f}"
    print_table(
        f"node SET throughput, /metrics scraped every second vs not: medians of {args.runs} "
        f"interleaved runs of {args.seconds:g} s, {args.window} in flight, fsync={args.fsync}, "
        f"{os.cpu_count()} CPUs",
        ["", "plain", "scraped", "ratio", "target"],
        [
            (
                "SETs/s",
                mid("plain_sets_s"),
                mid("scraped_sets_s"),
                ratio,
                target,
            ),
            (
                "node CPU us/SET",
                mid("plain_cpu_us_per_set"),
                mid("scraped_cpu_us_per_set"),
                mid("cpu_ratio"),
                "-",
            ),
            (
                "node CPU ms/scrape (idle; ratio: 1 - ms/1000)",
                "-",
                idle_ms,
                1 - idle_ms / 1000,
                "-",
            ),
            (
                "scrapes/run, ms each",
                "-",
                scrapes,
                "-",
                "-",
            ),
        ],
    )
    write_json(
        "metrics_overhead",
        {
            "runs": args.runs,
            "seconds": args.seconds,
            "window": args.window,
            "fsync": args.fsync,
            "ratio": ratio,
            "cpu_ratio": mid("cpu_ratio"),
            "node_cpu_ms_per_scrape": idle_ms,
            "target": TARGET,
            "runs_detail": runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
