"""The soak's load, run inside the client pod: ``python -m perf._soak_load HOST PORT --seconds N``.

Redis GETs of a 1 KiB value, each answer compared byte for byte, at ``--rps`` new connections per
second: most are short (connect, one GET, close); ``--long-share`` of them stay open for 1 s to
``--long-max`` s (never past the end of the run) with a GET every second. Every ``--report-every``
seconds one JSON line of progress goes to stdout, and one summary line at the end:
``{"ok", "failed", "errors": {kind: count}, "short_p50_ms", "short_p99_ms", "window_p99_ms", ...}``
(``window_p99_ms``: the short connections since the previous line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence

import uvloop

__all__ = ["main"]

_KEY = b"soak"
_VALUE = bytes(random.Random(7).getrandbits(8) for _ in range(1024))
_SET = b"*3\r\n$3\r\nSET\r\n$4\r\n" + _KEY + b"\r\n$1024\r\n" + _VALUE + b"\r\n"
_GET = b"*2\r\n$3\r\nGET\r\n$4\r\n" + _KEY + b"\r\n"
_ANSWER = b"$1024\r\n" + _VALUE + b"\r\n"
_TIMEOUT = 10.0


class Load:
    """Counts, by outcome, of the connections the run made."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.active_long = 0
        self.short_ms: list[float] = []
        """The short connections' times since the previous report (the window)."""
        self.short_histogram: Counter[float] = Counter()
        """Every short connection's time, rounded to 0.01 ms: the whole run's percentiles come from
        these few thousand buckets. Sorting every time of an hour on this loop (576,000 of them by
        the end, 160 ms) delayed the connections started meanwhile and made the windowed p99 climb
        with the run's length (the soak of 2026-12-05 23:11: from 13 ms to 45 ms)."""

    async def _get(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_GET)
        answer = await asyncio.wait_for(reader.readexactly(len(_ANSWER)), _TIMEOUT)
        if answer != _ANSWER:
            raise ValueError("the value came back different")

    async def connection(self, hold: float) -> None:
        """One connection: a GET, then (``hold`` > 0) a GET a second for ``hold`` seconds."""
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), _TIMEOUT)
            await self._get(reader, writer)
            if hold:
                self.active_long += 1
                try:
                    end = started + hold
                    while time.monotonic() < end:
                        await asyncio.sleep(1.0)
                        await self._get(reader, writer)
                finally:
                    self.active_long -= 1
            else:
                self.short_ms.append((time.monotonic() - started) * 1000)
            self.ok += 1
        except TimeoutError:
            self.errors["timeout"] += 1
        except asyncio.IncompleteReadError:
            self.errors["closed"] += 1
        except ConnectionError:
            self.errors["reset"] += 1
        except OSError:
            self.errors["connect"] += 1
        except ValueError:
            self.errors["wrong answer"] += 1
        finally:
            if writer is not None:
                writer.close()

    def report(self, elapsed: float, **extra: object) -> str:
        """One JSON line of the counts so far, and the p99 of the short connections since the last one."""
        window = sorted(self.short_ms)
        self.short_histogram.update(round(ms, 2) for ms in window)
        self.short_ms = []
        return json.dumps(
            {
                "t": round(elapsed, 1),
                "ok": self.ok,
                "failed": sum(self.errors.values()),
                "errors": dict(self.errors),
                "active_long": self.active_long,
                "short_p50_ms": _percentile(self.short_histogram, 50),
                "short_p99_ms": _percentile(self.short_histogram, 99),
                "window_p99_ms": round(window[len(window) * 99 // 100], 2) if window else None,
                **extra,
            }
        )


def _percentile(histogram: Counter[float], percent: int) -> float | None:
    """The value below which ``percent`` % of the counted values lie (None when there are none)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = total * percent // 100, 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen > rank:
            return value
    return max(histogram)


async def _run(args: argparse.Namespace) -> None:
    load = Load(args.host, args.port)
    await _set_value(args.host, args.port)
    rng = random.Random(args.seed)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    next_report = start + args.report_every
    for i in range(int(args.seconds * args.rps)):
        due = start + i / args.rps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        remaining = args.seconds - (time.monotonic() - start)
        hold = 0.0
        if rng.random() < args.long_share and remaining > 2:
            hold = rng.uniform(1.0, min(args.long_max, remaining - 1))
        task = asyncio.create_task(load.connection(hold))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if time.monotonic() >= next_report:
            print(load.report(time.monotonic() - start), flush=True)
            next_report += args.report_every
    if tasks:
        await asyncio.wait(tasks, timeout=_TIMEOUT * 3 + args.long_max)
    print(load.report(time.monotonic() - start, done=True, started=int(args.seconds * args.rps)), flush=True)


async def _set_value(host: str, port: int, *, within: float = 30.0) -> None:
    """Stores the value the load reads, retrying while the mesh path comes up (right after the lab
    is ready, ztunnel may not have the server's workload for a few hundred milliseconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _TIMEOUT)
            writer.write(_SET)
            answer = await asyncio.wait_for(reader.readline(), _TIMEOUT)
            writer.close()
            if answer == b"+OK\r\n":
                return
            raise SystemExit(f"redis did not take the value: {answer!r}")
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the load for ``--seconds`` and prints its progress and summary as JSON lines."""
    parser = argparse.ArgumentParser(prog="soak-load", description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--long-share", type=float, default=0.2)
    parser.add_argument("--long-max", type=float, default=60.0)
    parser.add_argument("--report-every", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    uvloop.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
