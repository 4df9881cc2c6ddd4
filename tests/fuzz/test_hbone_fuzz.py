"""Fuzzing the HBONE engine's receive path: arbitrary and mutated byte streams into server and client
engines must never raise, must keep the outbound buffer bounded, and must stop after a connection error.

The committed seed corpus (tests/fuzz/corpus/hbone/, ``<role>_<name>_<expect>.bin``) is replayed on
every run; ``expect`` is ``calm`` (GOAWAY ENHANCE_YOUR_CALM), ``error`` (another connection error),
``ok`` (the connection survives) or ``any``. Add every crashing input found by a long run there.
Long runs: ``MESH_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/fuzz/test_hbone_fuzz.py``.
Regenerate the seeds: ``.venv/bin/python -m tests.fuzz.test_hbone_fuzz``."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import pytest
from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.h2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    H2Config,
    Http2Engine,
)
from mesh.h2 import events as ev
from mesh.h2 import frames as fr

CORPUS = Path(__file__).parent / "corpus" / "hbone"
EXAMPLES = int(os.environ.get("MESH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
EVENT_TYPES = tuple(getattr(ev, name) for name in ev.__all__ if name != "Event")
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
CLIENT_PREFIX = fr.CONNECTION_PREFACE + fr.settings_frame()
SERVER_PREFIX = fr.settings_frame()


def engine(role: str) -> Http2Engine:
    """A fresh engine; the client has two CONNECT streams open so responses have somewhere to go."""
    conn = Http2Engine(client_side=role == "client", config=H2Config())
    conn.initiate_connection()
    if role == "client":
        conn.send_connect("10.0.0.1:80")
        conn.send_connect("10.0.0.2:80", [("baggage", "a=b")])
    conn.data_to_send()
    return conn


def run(role: str, chunks: list[bytes], *, lone_first: bool = False) -> tuple[Http2Engine, list[Event]]:
    """Feeds the chunks without draining output, checking the invariants after each one.

    With ``lone_first`` each chunk is offered to ``receive_data_frame`` first, as the runtime does,
    and only what it declines goes to ``receive_data``."""
    conn = engine(role)
    events: list[Event] = []
    fed = delivered = 0
    bound = conn.config.max_outbound_control_bytes + 64 * 1024
    for chunk in chunks:
        was_terminated = conn.terminated
        lone = conn.receive_data_frame(memoryview(chunk)) if lone_first else 0
        if lone:
            assert not was_terminated
            got: list[Event] = [DataReceived(lone, memoryview(chunk)[9:], len(chunk) - 9)]
        else:
            got = conn.receive_data(chunk)
        fed += len(chunk)
        if was_terminated:
            assert got == []
        for event in got:
            assert isinstance(event, EVENT_TYPES)
            if isinstance(event, DataReceived):
                delivered += len(event.data)
                conn.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
        terminations = [e for e in got if isinstance(e, ConnectionTerminated) and not e.remote]
        assert len(terminations) <= 1 and (not terminations or got[-1] is terminations[0])
        assert conn.bytes_to_send_pending() <= bound
        events.extend(got)
    assert delivered <= fed
    return conn, events


def split(data: bytes, rng: random.Random) -> list[bytes]:
    """Cuts ``data`` at random places (some tiny pieces, some large)."""
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 2, 9, 10, 100, 4096, 65_536, len(data)])
        out.append(data[pos : pos + size])
        pos += size
    return out


def frame_chunks(role: str, data: bytes) -> list[bytes]:
    """Cuts ``data`` at frame boundaries (one frame per chunk, as a TLS record often carries), so that
    lone DATA frames reach ``receive_data_frame``; whatever does not parse as frames stays whole."""
    pos = len(fr.CONNECTION_PREFACE) if role == "server" and data.startswith(fr.CONNECTION_PREFACE) else 0
    out = [data[:pos]] if pos else []
    while len(data) - pos >= 9:
        end = pos + 9 + int.from_bytes(data[pos : pos + 3], "big")
        if end > len(data):
            break
        out.append(data[pos:end])
        pos = end
    if pos < len(data):
        out.append(data[pos:])
    return out


# --- replaying the committed corpus ------------------------------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus_seed_replays_cleanly(path: Path) -> None:
    role, _, expect = path.stem.split("_")
    data = path.read_bytes()
    outcomes = []
    for seed in range(3):
        for lone_first in (False, True):
            chunks = [data] if seed == 0 else split(data, random.Random(seed))
            _, events = run(role, chunks, lone_first=lone_first)
            ours = [e for e in events if isinstance(e, ConnectionTerminated) and not e.remote]
            outcomes.append(ours[0].error_code if ours else None)
    _, events = run(role, frame_chunks(role, data), lone_first=True)
    ours = [e for e in events if isinstance(e, ConnectionTerminated) and not e.remote]
    outcomes.append(ours[0].error_code if ours else None)
    assert len(set(outcomes)) == 1, f"chunking or the one-frame path changed the outcome: {outcomes}"
    if expect == "calm":
        assert outcomes[0] == ErrorCode.ENHANCE_YOUR_CALM
    elif expect == "ok":
        assert outcomes[0] is None
    elif expect == "error":
        assert outcomes[0] not in (None, ErrorCode.ENHANCE_YOUR_CALM)


def test_the_committed_corpus_has_every_seed() -> None:
    committed = {p.name for p in corpus_files()}
    assert set(build_seed_corpus()) <= committed, "run: .venv/bin/python -m tests.fuzz.test_hbone_fuzz"


# --- hypothesis --------------------------------------------------------------------------------------

frame_strategy = st.builds(
    fr.frame,
    st.one_of(st.integers(0, 9), st.integers(0, 255)),
    st.integers(0, 255),
    st.one_of(st.integers(0, 9), st.integers(0, 2**31 - 1)),
    st.binary(max_size=64),
)


@FUZZ
@given(
    role=st.sampled_from(["server", "client"]),
    data=st.binary(max_size=2048),
    seed=st.integers(0, 2**16),
    lone_first=st.booleans(),
)
def test_arbitrary_bytes_never_break_the_engine(role: str, data: bytes, seed: int, lone_first: bool) -> None:
    run(role, split(data, random.Random(seed)), lone_first=lone_first)


@FUZZ
@given(
    role=st.sampled_from(["server", "client"]),
    frames=st.lists(frame_strategy, max_size=30),
    seed=st.integers(),
    lone_first=st.booleans(),
)
def test_arbitrary_frames_after_a_valid_preface_never_break_the_engine(
    role: str, frames: list[bytes], seed: int, lone_first: bool
) -> None:
    prefix = CLIENT_PREFIX if role == "server" else SERVER_PREFIX
    run(role, split(prefix + b"".join(frames), random.Random(seed)), lone_first=lone_first)


@FUZZ
@given(data=st.data())
def test_mutated_seeds_never_break_the_engine(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(corpus_files()))
    role = path.stem.split("_")[0]
    seed = bytearray(path.read_bytes()[:20_000])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, max(0, len(seed) - 1)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        if kind == "flip" and seed:
            seed[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            seed[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del seed[pos : pos + data.draw(st.integers(1, 16))]
        else:
            seed[pos:pos] = seed[pos : pos + data.draw(st.integers(1, 64))]
    chunks = split(bytes(seed), random.Random(data.draw(st.integers())))
    run(role, chunks, lone_first=data.draw(st.booleans()))


# --- the seed corpus ---------------------------------------------------------------------------------


def _hdrs(
    enc: Encoder, sid: int, fields: list[tuple[bytes, bytes]] | None = None, flags: int = fr.END_HEADERS
) -> bytes:
    return fr.frame(fr.HEADERS, flags, sid, enc.encode(CONNECT if fields is None else fields))


def _pairs(enc: Encoder, sids: Iterator[int], build: str) -> bytes:
    out = []
    for sid in sids:
        if build == "reset":
            out.append(_hdrs(enc, sid) + fr.rst_stream_frame(sid, ErrorCode.CANCEL))
        else:
            out.append(_hdrs(enc, sid) + fr.window_update_frame(sid, 0))
    return b"".join(out)


def _h2_client_session() -> bytes:
    """What the `h2` library sends as a client: preface, a CONNECT, data, a ping, END_STREAM."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("baggage", "x=y")])
    conn.send_data(1, b"hello over h2" * 100, pad_length=7)
    conn.ping(b"12345678")
    conn.end_stream(1)
    return conn.data_to_send() + fr.settings_frame(ack=True)


def _ours_server_replies() -> bytes:
    """What our server sends back to a client with streams 1 and 3 open."""
    server = Http2Engine(client_side=False)
    server.initiate_connection()
    enc = Encoder()
    server.receive_data(CLIENT_PREFIX + _hdrs(enc, 1) + _hdrs(enc, 3))
    server.send_response(1, 200, [("baggage", "k8s.pod.name=p")])
    server.send_data(1, b"reply" * 1000, end_stream=True)
    server.send_response(3, 503, end_stream=True)
    server.ping(b"pingpong")
    return server.data_to_send() + fr.settings_frame(ack=True)


def build_seed_corpus() -> dict[str, bytes]:
    """Interesting inputs: valid sessions and one of each attack."""
    enc = Encoder
    pad = fr.frame(fr.DATA, fr.PADDED, 1, b"\x03abc\x00\x00\x00")
    return {
        "server_h2-client-session_ok.bin": _h2_client_session(),
        "client_our-server-replies_ok.bin": _ours_server_replies(),
        "server_padded-data-and-trailers_ok.bin": CLIENT_PREFIX
        + _hdrs(e := enc(), 1)
        + pad
        + _hdrs(e, 1, [(b"x-trailer", b"1")], fr.END_HEADERS | fr.END_STREAM),
        "server_rapid-reset_calm.bin": CLIENT_PREFIX + _pairs(enc(), iter(range(1, 2001, 2)), "reset"),
        "server_made-you-reset_calm.bin": CLIENT_PREFIX + _pairs(enc(), iter(range(1, 2001, 2)), "wu0"),
        "server_continuation-flood_calm.bin": CLIENT_PREFIX
        + _hdrs(enc(), 1, flags=0)
        + fr.frame(fr.CONTINUATION, 0, 1, b"\x00") * 100,
        "server_hpack-bomb_calm.bin": CLIENT_PREFIX
        + _hdrs(e := enc(), 1, [*CONNECT, (b"x-bomb", b"b" * 4050)])
        + fr.frame(fr.HEADERS, fr.END_HEADERS, 3, b"\xbe" * 16_384),
        "server_empty-headers_calm.bin": CLIENT_PREFIX
        + fr.frame(fr.HEADERS, fr.END_HEADERS, 1, enc().encode(CONNECT) + b"\x00\x00\x00" * 10_000),
        "server_ping-flood_calm.bin": CLIENT_PREFIX + fr.ping_frame(b"flooding") * 10_500,
        "server_stream-limit_ok.bin": CLIENT_PREFIX
        + b"".join(_hdrs(e := enc(), s) for s in range(1, 601, 2)),
        "server_bad-preface_error.bin": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "server_push-promise_error.bin": CLIENT_PREFIX
        + fr.frame(fr.PUSH_PROMISE, fr.END_HEADERS, 1, b"\x00\x00\x00\x02"),
        "client_window-overflow_error.bin": SERVER_PREFIX + fr.window_update_frame(0, 2**31 - 1),
        "server_plain-data-frames_ok.bin": CLIENT_PREFIX
        + _hdrs(enc(), 1)
        + b"".join(fr.frame(fr.DATA, 0, 1, bytes([i]) * (1 + i * 37)) for i in range(40))
        + fr.frame(fr.DATA, 0, 1, b"x" * 70_000)
        + fr.frame(fr.DATA, fr.END_STREAM, 1, b"end"),
        "client_plain-data-frames_ok.bin": SERVER_PREFIX
        + fr.frame(fr.HEADERS, fr.END_HEADERS, 1, enc().encode([(b":status", b"200")]))
        + b"".join(fr.frame(fr.DATA, 0, 1, bytes([i]) * (1 + i * 37)) for i in range(40))
        + fr.frame(fr.DATA, 0, 3, b"not yet answered")
        + fr.frame(fr.DATA, 0, 1, b"after a stream error"),
        "client_goaway-then-data_any.bin": SERVER_PREFIX
        + fr.frame(fr.HEADERS, fr.END_HEADERS, 1, enc().encode([(b":status", b"200")]))
        + fr.goaway_frame(1, 0, b"draining")
        + fr.frame(fr.DATA, fr.END_STREAM, 1, b"last"),
    }


def main() -> None:
    """Writes the seed corpus next to this file (crash inputs found later are added by hand)."""
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in build_seed_corpus().items():
        (CORPUS / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
