"""Micro-benchmark of the HBONE engine: MB/s of DATA through an in-process client/server pair, ours
against the `h2` library doing the same job (median of 3, CPU seconds per GB).

    .venv/bin/python -m perf.bench_hbone_engine [--mib 256] [--repeats 3]

Both pairs run in this one process, so CPU per GB is the cost of *both* ends. Wire bytes are handed
over in 64 KiB reads (as a TLS transport would), the receiver acknowledges every byte at once, and the
sender retries on window updates. h2 gets the calibration.md trap 5 and trap 6 fixes (large inbound
frames; the hyperframe repr that hexlified every payload), so the comparison is against h2 at its best.

glibc trims the top of its heap whenever more than the (dynamically raised) trim threshold is free, so
the 64 KiB-1 MiB buffers of a data path are page-faulted in again and again; on this VM that alone
moved our pair between 1,000 and 6,000 MB/s from one run to the next. The benchmark therefore sets
M_TRIM_THRESHOLD to 64 MiB (as ``MALLOC_TRIM_THRESHOLD_=67108864`` would) for both engines;
``--glibc-default`` measures without it."""

from __future__ import annotations

import argparse
import binascii
import ctypes
import ctypes.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame

from mesh.h2 import DataReceived, H2Config, Http2Engine

__all__ = ["Result", "main", "run_h2", "run_ours"]

READ = 64 * 1024
WRITE = 256 * 1024
MiB = 2**20


@dataclass(frozen=True, slots=True)
class Result:
    """One run: bytes moved, wall seconds, CPU seconds."""

    nbytes: int
    wall: float
    cpu: float

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.wall

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu / (self.nbytes / 1e9)


def _reads(wire: bytes) -> list[bytes]:
    return [wire[i : i + READ] for i in range(0, len(wire), READ)]


def run_ours(nbytes: int, *, frame_size: int = MiB) -> Result:
    """Client sends ``nbytes`` on one CONNECT stream to our server; both are our engine."""
    cfg = H2Config(max_frame_size=frame_size)
    client, server = Http2Engine(client_side=True, config=cfg), Http2Engine(client_side=False, config=cfg)
    client.initiate_connection()
    server.initiate_connection()
    sid = client.send_connect("10.0.0.1:80")
    server.receive_data(client.data_to_send())
    server.send_response(sid, 200)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    payload = bytes(range(256)) * (WRITE // 256)
    sent = received = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while received < nbytes:
        if sent < nbytes:
            sent += client.send_data(sid, payload if nbytes - sent >= WRITE else payload[: nbytes - sent])
        for piece in _reads(client.data_to_send()):
            for event in server.receive_data(piece):
                if type(event) is DataReceived:
                    received += event.flow_controlled_length
                    server.acknowledge_received_data(sid, event.flow_controlled_length)
        back = server.data_to_send()
        if back:
            client.receive_data(back)
    return Result(received, time.perf_counter() - wall, time.process_time() - cpu)


def _h2(client_side: bool, frame_size: int) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side))
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * MiB,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: frame_size,
        },
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * MiB - 65_535)
    conn.max_inbound_frame_size = conn.incoming_buffer.max_frame_size = frame_size  # trap 5
    return conn


def run_h2(nbytes: int, *, frame_size: int = MiB) -> Result:
    """The same transfer with the `h2` library at both ends."""
    client, server = _h2(True, frame_size), _h2(False, frame_size)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    payload = bytes(range(256)) * (WRITE // 256)
    sent = received = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while received < nbytes:
        if sent < nbytes:
            n = min(nbytes - sent, WRITE, client.local_flow_control_window(1))
            step = client.max_outbound_frame_size
            for i in range(0, n, step):
                client.send_data(1, payload[i : min(i + step, n)])
            sent += n
        for piece in _reads(client.data_to_send()):
            for event in server.receive_data(piece):
                if isinstance(event, h2.events.DataReceived):
                    received += event.flow_controlled_length
                    server.acknowledge_received_data(event.flow_controlled_length, 1)
        back = server.data_to_send()
        if back:
            client.receive_data(back)
    return Result(received, time.perf_counter() - wall, time.process_time() - cpu)


def _short_repr(data: bytes | None) -> str:
    return "None" if not data else "<hex:" + binascii.hexlify(data[:10]).decode("ascii") + "...>"


def keep_heap_top(nbytes: int = 64 * MiB) -> bool:
    """Stops glibc from trimming (and re-faulting) the heap top below ``nbytes``; False if not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-1, nbytes))  # M_TRIM_THRESHOLD


def median_of(runs: int, fn: Callable[[], Result]) -> Result:
    """The run with the median throughput, after one unmeasured warm-up run (steady allocator state)."""
    fn()
    results = sorted((fn() for _ in range(runs)), key=lambda r: r.mb_per_s)
    return results[len(results) // 2]


ENGINES = {"ours": run_ours, "h2": run_h2}


def measure_in_child(engine: str, *, frame_size: int, mib: int, repeats: int, tuned: bool) -> Result:
    """Runs one engine pair in a fresh interpreter so no run inherits another's heap."""
    cmd = [sys.executable, "-m", "perf.bench_hbone_engine", "--child", engine, str(frame_size), str(mib)]
    cmd += ["--repeats", str(repeats)] + ([] if tuned else ["--glibc-default"])
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600, cwd=root)
    fields = json.loads(done.stdout.splitlines()[-1])
    return Result(int(fields["nbytes"]), float(fields["wall"]), float(fields["cpu"]))


def _child(engine: str, frame_size: int, mib: int, repeats: int, tuned: bool) -> None:
    if tuned:
        keep_heap_top()
    hyperframe.frame._raw_data_repr = _short_repr  # trap 6
    result = median_of(repeats, partial(ENGINES[engine], mib * MiB, frame_size=frame_size))
    print(json.dumps({"nbytes": result.nbytes, "wall": result.wall, "cpu": result.cpu}))


def main(argv: list[str] | None = None) -> dict[str, Result]:
    """Runs both engines for each frame size, each in its own process, and prints a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per run (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's heap trimming alone")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "FRAME", "MIB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tuned = not args.glibc_default
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]), args.repeats, tuned)
        return {}
    heap = "heap top kept (M_TRIM_THRESHOLD 64 MiB)" if tuned else "glibc default heap trimming"
    print(f"{args.mib} MiB on one stream, 64 KiB reads, median of {args.repeats} after a warm-up, {heap}")
    print(f"{'engine pair':<28}{'MB/s':>10}{'CPU s/GB':>11}{'vs h2':>8}")
    results: dict[str, Result] = {}
    for frame_size, label in ((MiB, "1 MiB frames"), (16_384, "16 KiB frames")):
        for engine in ENGINES:
            results[f"{engine} {label}"] = measure_in_child(
                engine, frame_size=frame_size, mib=args.mib, repeats=args.repeats, tuned=tuned
            )
        ours, theirs = results[f"ours {label}"], results[f"h2 {label}"]
        ratio = ours.mb_per_s / theirs.mb_per_s
        print(f"{'mesh.h2, ' + label:<28}{ours.mb_per_s:>10.0f}{ours.cpu_s_per_gb:>11.3f}{ratio:>7.1f}x")
        print(f"{'h2 4.x, ' + label:<28}{theirs.mb_per_s:>10.0f}{theirs.cpu_s_per_gb:>11.3f}{1:>7.1f}x")
    return results


if __name__ == "__main__":
    main()
