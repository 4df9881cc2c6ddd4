"""The ztunnel benchmark's tools that run inside lab pods (``python -m perf._ztunnel_apps ...``).

- ``serve --ready-file F``: the echo/bulk server of :mod:`perf.hbone_endpoints`, on every address
  of the pod (port chosen by the kernel, written to F);
- ``pingpong HOST PORT --rounds N``: N 100-byte round trips; prints ``{"p50_us", "p99_us", ...}``;
- ``bulk HOST PORT --bytes N``: N byte-checked bytes one way; prints ``{"seconds", "bytes"}``.

The client commands print one JSON line, so the benchmark can run them with ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

from perf.hbone_endpoints import bulk, ping_pong, serve

__all__ = ["main", "percentile"]


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` (0..1) of an ascending list (nearest rank, clamped)."""
    if not sorted_samples:
        raise ValueError("no samples to take a percentile of")
    return sorted_samples[min(len(sorted_samples) - 1, int(len(sorted_samples) * fraction))]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pingpong(args: argparse.Namespace) -> dict[str, Any]:
    cpu = _own_cpu()
    samples = sorted(ping_pong((args.host, args.port), rounds=args.rounds))
    return {
        "rounds": len(samples),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "max_us": samples[-1],
        "client_cpu_s": _own_cpu() - cpu,
    }


def _bulk(args: argparse.Namespace) -> dict[str, Any]:
    cpu = _own_cpu()
    seconds = bulk((args.host, args.port), nbytes=args.bytes)
    return {"bytes": args.bytes, "seconds": seconds, "client_cpu_s": _own_cpu() - cpu}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perf._ztunnel_apps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="the echo/bulk server (forever)")
    srv.add_argument("--ready-file", type=Path, required=True)
    pp = sub.add_parser("pingpong", help="100-byte round trips")
    blk = sub.add_parser("bulk", help="one-way byte-checked transfer")
    for client in (pp, blk):
        client.add_argument("host")
        client.add_argument("port", type=int)
    pp.add_argument("--rounds", type=int, required=True)
    blk.add_argument("--bytes", type=int, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one tool; the client tools print one JSON line."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        serve(args.ready_file, host="0.0.0.0")  # inside the pod's own namespace
        return 0
    result = _pingpong(args) if args.command == "pingpong" else _bulk(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
