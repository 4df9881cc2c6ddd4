"""Micro-benchmark of the HBONE engine: MB/s of DATA through an in-process client/server pair, ours
against the `h2` library doing the same job (median of 3, CPU seconds per GB).

    .venv/bin/python -m perf.bench_hbone_engine [--mib 256] [--repeats 3]

Both pairs run in this one process, so CPU per GB is the cost of *both* ends. Wire bytes are handed
over in 64 KiB reads (as a TLS transport would), the receiver acknowledges every byte at once, and the
sender retries on window updates. h2 gets the calibration.md trap 5 and trap 6 fixes (large inbound
frames; the hyperframe repr that hexlified every payload), so the comparison is against h2 at its best."""

from __future__ import annotations

import argparse
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame

from mesh.hbone import DataReceived, H2Config, H2Connection

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
    client, server = H2Connection(client_side=True, config=cfg), H2Connection(client_side=False, config=cfg)
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


def median_of(runs: int, fn: Callable[[], Result]) -> Result:
    """The run with the median throughput."""
    results = sorted((fn() for _ in range(runs)), key=lambda r: r.mb_per_s)
    return results[len(results) // 2]


def main(argv: list[str] | None = None) -> dict[str, Result]:
    """Runs both engines for each frame size and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per run (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    hyperframe.frame._raw_data_repr = _short_repr  # trap 6
    nbytes = args.mib * MiB
    results: dict[str, Result] = {}
    print(f"{args.mib} MiB one stream, 64 KiB reads, median of {args.repeats}")
    print(f"{'engine pair':<28}{'MB/s':>10}{'CPU s/GB':>11}{'vs h2':>8}")
    for frame_size in (MiB, 16_384):
        label = "1 MiB frames" if frame_size == MiB else "16 KiB frames"
        ours = median_of(args.repeats, partial(run_ours, nbytes, frame_size=frame_size))
        theirs = median_of(args.repeats, partial(run_h2, nbytes, frame_size=frame_size))
        results[f"ours {label}"], results[f"h2 {label}"] = ours, theirs
        ratio = ours.mb_per_s / theirs.mb_per_s
        print(f"{'mesh.hbone, ' + label:<28}{ours.mb_per_s:>10.0f}{ours.cpu_s_per_gb:>11.3f}{ratio:>7.1f}x")
        print(f"{'h2 4.x, ' + label:<28}{theirs.mb_per_s:>10.0f}{theirs.cpu_s_per_gb:>11.3f}{1:>7.1f}x")
    return results


if __name__ == "__main__":
    main()
