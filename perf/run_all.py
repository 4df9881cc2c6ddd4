"""``make perf``: every benchmark in turn, each printing its own report (see perf/README.md).

python -m perf.run_all [--quick] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = (
    "bench_ca",
    "bench_hbone_engine",
    "bench_hbone",
    "bench_xds",
    "bench_lab_up",
    "bench_ztunnel",
    "bench_ztunnel_sustained",
)
_QUICK = {
    "bench_hbone": ["--quick"],
    "bench_xds": ["--quick"],
    "bench_ztunnel": ["--quick"],
    "bench_ztunnel_sustained": ["--quick"],
}


def main(argv: list[str] | None = None) -> int:
    """Runs the named benchmarks (all by default) as separate processes; returns non-zero if one failed."""
    parser = argparse.ArgumentParser(prog="perf.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke runs where a benchmark offers one")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or BENCHMARKS:
        extra = _QUICK.get(name, []) if args.quick else []
        print(f"\n===== perf.{name} {' '.join(extra)}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"perf.{name}", *extra])
        print(f"===== perf.{name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
