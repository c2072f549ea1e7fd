"""Benchmark mesh.storage.log against plain-file loops doing the same I/O.

Appends: for each fsync policy, records/s of ``Log.append`` + ``Log.flush``
per batch (plus ``Log.tick`` every 100 ms under ``interval``, as the node's
timer does), beside a plain loop that writes the same encoded records
(frame + payload) to a file with one buffered ``write`` per record, hands
each batch to the OS, and fsyncs with the same pattern: once per batch for
``always``, every 100 ms for ``interval``, never for ``never``.

Replay: records/s of ``Log.replay`` over a 1,000,000-record log (CRC checked,
decoded to Mutation), beside a plain loop that reads a file of the same
msgpack payloads (no framing) and unpacks them with ``msgpack.Unpacker``.

Every figure is the median of ``--runs`` runs; log and plain runs alternate.
Records are ~150 bytes (100-byte values).  Scratch files go to ``--dir``
(default: a temporary folder under the results folder, so it is on a real
disk rather than a tmpfs where fsync costs nothing).

    python bench/log_bench.py [--records N] [--batch B] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
from crc32c import crc32c

from mesh.core.mutation import Mutation
from mesh.storage.log import Log
from mesh.storage.records import FRAME

RESULTS = Path(__file__).resolve().parent / "results"
INTERVAL_S = 0.1


def make_records(count: int) -> list[Mutation]:
    """``count`` mutations of ~150 bytes encoded (100-byte values), three origins."""
    value = b"v" * 100
    return [
        Mutation(
            f"node-{i % 3}/5f3a9c1e",
            i // 3 + 1,
            (1_700_000_000_000 << 16) + i,
            f"key:{i:08d}",
            value,
            0,
        )
        for i in range(count)
    ]


def encode(records: list[Mutation]) -> list[bytes]:
    """The framed bytes the log writes for each record."""
    out = []
    for m in records:
        payload = msgpack.packb(m.to_record())
        out.append(FRAME.pack(len(payload), crc32c(payload)) + payload)
    return out


def log_append(folder: Path, policy: str, records: list[Mutation], batch: int) -> float:
    """Records/s of append + flush per batch (closing, and its fsync, not timed)."""
    with Log(folder, fsync=policy, fsync_interval_ms=int(INTERVAL_S * 1000)) as log:
        started = time.perf_counter()
        next_tick = time.monotonic() + INTERVAL_S
        for i in range(0, len(records), batch):
            log.append(records[i : i + batch])
            log.flush()
            if policy == "interval" and time.monotonic() >= next_tick:
                log.tick()
                next_tick = time.monotonic() + INTERVAL_S
        return len(records) / (time.perf_counter() - started)


def plain_append(path: Path, policy: str, frames: list[bytes], batch: int) -> float:
    """Records/s of one buffered write per record, a flush per batch, the same fsyncs."""
    with open(path, "ab") as f:
        fd = f.fileno()
        started = last_sync = time.perf_counter()
        for i in range(0, len(frames), batch):
            for frame in frames[i : i + batch]:
                f.write(frame)
            f.flush()
            if policy == "always" or (
                policy == "interval" and time.perf_counter() - last_sync >= INTERVAL_S
            ):
                os.fdatasync(fd)
                last_sync = time.perf_counter()
        return len(frames) / (time.perf_counter() - started)


def log_replay(folder: Path) -> float:
    """Records/s of Log.replay over the whole log (opening it not timed)."""
    with Log(folder, fsync="never") as log:
        started = time.perf_counter()
        count = 0
        for _mutation in log.replay():
            count += 1
        return count / (time.perf_counter() - started)


def plain_replay(path: Path) -> float:
    """Records/s of msgpack.Unpacker over a file of the same payloads."""
    with open(path, "rb") as f:
        started = time.perf_counter()
        count = 0
        for _record in msgpack.Unpacker(f, read_size=1 << 20):
            count += 1
        return count / (time.perf_counter() - started)


def median_pair(runs: int, log_run: Callable[[], float], plain_run: Callable[[], float]) -> dict:
    logs, plains = [], []
    for _ in range(runs):
        logs.append(log_run())
        plains.append(plain_run())
    log_m, plain_m = statistics.median(logs), statistics.median(plains)
    return {
        "log": log_m,
        "plain": plain_m,
        "ratio": log_m / plain_m,
        "log_runs": logs,
        "plain_runs": plains,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per append run")
    parser.add_argument("--batch", type=int, default=64, help="records per append+flush")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--replay-records", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=RESULTS / "log_bench.json")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (real disk)")
    args = parser.parse_args()
    if args.runs < 1 or args.records < 1 or args.batch < 1:
        parser.error("--records, --batch and --runs must be positive")

    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="log-bench-", dir=args.dir or RESULTS))
    records = make_records(args.records)
    frames = encode(records)
    counter = iter(range(10**9))

    def fresh() -> Path:
        return scratch / f"run{next(counter)}"

    def once(run: Callable[..., float], *args: object) -> float:
        """One run in a fresh path, deleted afterwards so dirty pages do not pile up."""
        path = fresh()
        try:
            return run(path, *args)
        finally:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    results: dict[str, dict] = {}
    try:
        for policy in ("always", "interval", "never"):
            results[f"append {policy}"] = median_pair(
                args.runs,
                lambda p=policy: once(log_append, p, records, args.batch),
                lambda p=policy: once(plain_append, p, frames, args.batch),
            )
        replay_dir = fresh()
        replay_records = make_records(args.replay_records)
        with Log(replay_dir, fsync="never") as log:
            for i in range(0, len(replay_records), 1000):
                log.append(replay_records[i : i + 1000])
        plain_file = fresh()
        with open(plain_file, "wb") as f:
            for i in range(0, len(replay_records), 10_000):
                f.write(b"".join(msgpack.packb(m) for m in replay_records[i : i + 10_000]))
        del replay_records
        started = time.perf_counter()
        Log(replay_dir).close()
        open_s = time.perf_counter() - started
        results["replay"] = median_pair(
            args.runs,
            lambda: log_replay(replay_dir),
            lambda: plain_replay(plain_file),
        )
        results["replay"]["open_seconds"] = open_s
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    record_bytes = statistics.mean(len(f) for f in frames)
    print(
        f"mesh.storage.log benchmark: {args.records:,} records/run of {record_bytes:.0f} bytes "
        "framed, "
        f"batches of {args.batch}, replay of {args.replay_records:,}; "
        f"median of {args.runs} runs"
    )
    print(f"{'what':<18}{'log (records/s)':>18}{'plain (records/s)':>20}{'log/plain':>11}")
    for name, row in results.items():
        print(f"{name:<18}{row['log']:>18,.0f}{row['plain']:>20,.0f}{row['ratio']:>10.2f}x")
    print(f"(opening the {args.replay_records:,}-record log took {open_s * 1000:.0f} ms)")
    document = {
        "benchmark": "log_bench",
        "unit": "records/s",
        "config": {
            "records": args.records,
            "batch": args.batch,
            "runs": args.runs,
            "replay_records": args.replay_records,
            "record_bytes": record_bytes,
            "interval_ms": INTERVAL_S * 1000,
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
