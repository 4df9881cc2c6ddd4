"""The public HBONE engine: sans-I/O HTTP/2 (RFC 9113) for CONNECT tunnels, client or server role.

conn = Http2Engine(client_side=True)
conn.initiate_connection()
sid = conn.send_connect("10.0.0.2:8080")
transport.write(conn.data_to_send())
for event in conn.receive_data(chunk): ...
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh.h2 import frames as fr
from mesh.h2._inbound import Inbound
from mesh.h2._stream import CLOSED_LOCAL_RESET, Stream
from mesh.h2.config import DEFAULT_WINDOW, H2Config
from mesh.h2.errors import (
    ErrorCode,
    H2StreamClosedError,
    H2StreamLimitError,
    H2UsageError,
)
from mesh.h2.headers import encode_fields

__all__ = ["Http2Engine"]

_DEFAULT_CONFIG = H2Config()
_MAX_STREAM_ID = 2**31 - 1
_DEFAULT_HEADER_TABLE = 4096
_pack_header = fr.FRAME_HEADER.pack


class Http2Engine(Inbound):
    """One HTTP/2 connection; no I/O: feed ``receive_data``, write out ``data_to_send``."""

    def __init__(self, *, client_side: bool, config: H2Config = _DEFAULT_CONFIG) -> None:
        super().__init__(client_side=client_side, config=config)

    # --- state -----------------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams not yet closed (open or half-closed), both directions of initiation."""
        return len(self._streams)

    @property
    def goaway_received(self) -> bool:
        """The peer sent GOAWAY: open no new streams here."""
        return self._goaway_received

    @property
    def goaway_sent(self) -> bool:
        """We sent GOAWAY (``close`` or a connection error)."""
        return self._goaway_sent_last is not None

    @property
    def terminated(self) -> bool:
        """A connection error ended the connection (ours or via ``close`` with an error code)."""
        return self._dead

    @property
    def remote_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (2^31-1 until it says otherwise)."""
        return self._peer_max_streams

    @property
    def can_open_stream(self) -> bool:
        """Whether ``send_connect`` would succeed now."""
        return (
            not self._dead
            and not self._goaway_received
            and self._goaway_sent_last is None
            and self._local_open < self._peer_max_streams
            and self._next_stream_id <= _MAX_STREAM_ID
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queues the preface: client magic (client only), our SETTINGS, the connection WINDOW_UPDATE."""
        if self._initiated:
            return
        self._initiated = True
        cfg = self.config
        if self.client_side:
            self._queue(fr.CONNECTION_PREFACE)
        settings = [
            (fr.SETTINGS_ENABLE_PUSH, 0),
            (fr.SETTINGS_MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
            (fr.SETTINGS_INITIAL_WINDOW_SIZE, cfg.initial_window_size),
            (fr.SETTINGS_MAX_FRAME_SIZE, cfg.max_frame_size),
            (fr.SETTINGS_MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
        ]
        if cfg.header_table_size != _DEFAULT_HEADER_TABLE:
            settings.append((fr.SETTINGS_HEADER_TABLE_SIZE, cfg.header_table_size))
        self._queue(fr.settings_frame(settings))
        self._settings_unacked += 1
        if cfg.connection_window_size > DEFAULT_WINDOW:
            self._queue(fr.window_update_frame(0, cfg.connection_window_size - DEFAULT_WINDOW))
            self._recv_conn_window = cfg.connection_window_size

    def _start(self) -> None:
        self.initiate_connection()

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, and empties the queue."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self._out_bytes = self._ctl_frames = self._ctl_bytes = 0
        return data

    def data_to_send_pieces(self) -> list[bytes | memoryview]:
        """Like ``data_to_send`` but without joining: frame headers and payload views, in order, for
        ``transport.writelines`` (saves copying every payload byte once more)."""
        out = self._out
        self._out = []
        self._out_bytes = self._ctl_frames = self._ctl_bytes = 0
        return out

    def bytes_to_send_pending(self) -> int:
        """How many bytes ``data_to_send`` would return."""
        return self._out_bytes

    def ping(self, opaque: bytes) -> None:
        """Queues a PING; the peer's answer arrives as PingAcked(opaque)."""
        if len(opaque) != 8:
            raise H2UsageError(f"PING data must be 8 bytes, got {len(opaque)}")
        if not self._dead:
            self._queue(fr.ping_frame(bytes(opaque)))

    def close(self, error_code: int = ErrorCode.NO_ERROR, *, last_stream_id: int | None = None) -> None:
        """Sends GOAWAY. NO_ERROR is graceful: streams up to ``last_stream_id`` (default: the highest the
        peer opened) may finish, newer ones are refused. Any other code ends the connection now."""
        if self._dead:
            return
        self.initiate_connection()
        last = self._highest_peer_stream if last_stream_id is None else last_stream_id
        if self._goaway_sent_last is not None:
            last = min(last, self._goaway_sent_last)
        self._queue(fr.goaway_frame(last, int(error_code)))
        self._goaway_sent_last = last
        if error_code != ErrorCode.NO_ERROR:
            self._dead = True

    # --- streams ---------------------------------------------------------------------------------

    def send_connect(self, authority: str, headers: Sequence[tuple[str, str]] = ()) -> int:
        """Client: opens a CONNECT stream to ``authority`` (``ip:port``) and returns its id."""
        pseudo = [(b":method", b"CONNECT"), (b":authority", _authority(authority))]
        return self._open_stream(pseudo, headers, end_stream=False)

    def send_request(
        self,
        method: str,
        *,
        scheme: str,
        authority: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        end_stream: bool = False,
    ) -> int:
        """Client: opens a stream with an ordinary request (e.g. a gRPC ``POST``) and returns its id."""
        if method == "CONNECT" or not path.startswith("/") or scheme not in ("http", "https"):
            raise H2UsageError(
                f"{method} {scheme}://{authority}{path} is not an ordinary request",
                hint="use send_connect for CONNECT; the path starts with / and the scheme is http or https",
            )
        pseudo = [
            (b":method", _ascii_token(method)),
            (b":scheme", scheme.encode("ascii")),
            (b":authority", _authority(authority)),
            (b":path", _pseudo_value(path, what="path", example="/package.Service/Method")),
        ]
        return self._open_stream(pseudo, headers, end_stream=end_stream)

    def _open_stream(
        self, pseudo: list[tuple[bytes, bytes]], headers: Sequence[tuple[str, str]], *, end_stream: bool
    ) -> int:
        if not self.client_side:
            raise H2UsageError("only a client opens streams", hint="use send_response on a server")
        if not self.can_open_stream:
            raise H2StreamLimitError(
                f"cannot open a stream: {self._local_open} open of {self._peer_max_streams} allowed, "
                f"goaway received={self._goaway_received}, sent={self.goaway_sent}, terminated={self._dead}"
            )
        self.initiate_connection()
        fields = encode_fields(pseudo, headers)
        sid = self._next_stream_id
        self._queue_headers(sid, fields, end_stream=end_stream)
        self._next_stream_id += 2
        stream = self._new_stream(sid, local=True)
        if end_stream:
            self._end_local(stream)
        return sid

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        *,
        end_stream: bool = False,
    ) -> None:
        """Server: answers a request (200 opens the tunnel; 400/401/503 refuse it)."""
        if self.client_side:
            raise H2UsageError("send_response is for the server side", hint="use send_connect on a client")
        if not 200 <= status <= 599:
            raise H2UsageError(f"status {status} is not a final status (200-599)")
        stream = self._stream_for_send(stream_id)
        if stream.headers_sent:
            raise H2UsageError(f"stream {stream_id} already has its response")
        fields = encode_fields([(b":status", str(status).encode("ascii"))], headers)
        self._queue_headers(stream_id, fields, end_stream=end_stream)
        stream.headers_sent = True
        if end_stream:
            self._end_local(stream)

    def send_trailers(self, stream_id: int, headers: Sequence[tuple[str, str]]) -> None:
        """Ends our side of a stream with a trailer block (after the response headers and data),
        as a gRPC server sends ``grpc-status``."""
        stream = self._stream_for_send(stream_id)
        if not stream.headers_sent:
            raise H2UsageError(
                f"stream {stream_id} has no headers yet", hint="send the response or request first"
            )
        self._queue_headers(stream_id, encode_fields([], headers), end_stream=True)
        self._end_local(stream)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, *, end_stream: bool = False
    ) -> int:
        """Sends as much of ``data`` as both send windows allow, in frames of the peer's
        MAX_FRAME_SIZE, and returns how many bytes were taken (0 when the window is shut). Keep the
        rest and retry after a WindowUpdated event. END_STREAM goes out only with the last byte.
        Bytes objects and read-only views are referenced, not copied, until ``data_to_send``."""
        stream = self._stream_for_send(stream_id)
        if not stream.headers_sent:
            raise H2UsageError(f"stream {stream_id} has no response yet", hint="call send_response first")
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        total = len(view)
        n = min(total, stream.send_window, self._send_conn_window)
        if n <= 0:
            if total == 0 and end_stream:
                self._queue(_pack_header(0, 0, fr.DATA, fr.END_STREAM, stream_id))
                self._end_local(stream)
            return 0
        fin = end_stream and n == total
        self._queue_data(stream_id, view, n, fin=fin, copy=not view.readonly)
        stream.send_window -= n
        self._send_conn_window -= n
        if fin:
            self._end_local(stream)
        return n

    def frame_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """The shortest path for a small write: when nothing is queued for the peer and ``data`` fits
        both send windows and one frame, debits the windows and returns the DATA frame (header and
        payload) for the caller to write itself. Otherwise returns ``b""`` and takes nothing: use
        ``send_data``."""
        if self._out:
            return b""
        return self._small_frame(stream_id, data)

    def queue_small_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Queues ``data`` as one DATA frame (joined with its header) behind what is already queued,
        when it fits both send windows and one frame. False takes nothing: use ``send_data``."""
        frame = self._small_frame(stream_id, data)
        if not frame:
            return False
        self._out.append(frame)
        self._out_bytes += len(frame)
        return True

    def _small_frame(self, stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
        n = len(data)
        if self._dead or not n or n > self._send_conn_window or n > self._peer_max_frame:
            return b""
        stream = self._streams.get(stream_id)
        if stream is None or n > stream.send_window or not stream.local_open or not stream.headers_sent:
            return b""
        stream.send_window -= n
        self._send_conn_window -= n
        return _pack_header(n >> 8, n & 0xFF, fr.DATA, 0, stream_id) + data

    def end_stream(self, stream_id: int) -> None:
        """Half-closes our side of the stream (empty DATA with END_STREAM)."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """Resets a stream (RST_STREAM). A stream that is already closed is left alone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id <= 0 or self._is_idle(stream_id):
                raise H2StreamClosedError(stream_id, what="was never opened")
            return
        if not self._dead:
            self._queue(fr.rst_stream_frame(stream_id, int(error_code)))
        self._close_stream(stream, CLOSED_LOCAL_RESET)

    def acknowledge_received_data(self, stream_id: int, n: int) -> None:
        """Gives back ``n`` bytes of receive window once the consumer has taken them. Updates are
        batched: a WINDOW_UPDATE goes out when a quarter of a window is owed."""
        if n < 0 or n > self._conn_unacked:
            raise H2UsageError(
                f"acknowledged {n} bytes, but {self._conn_unacked} delivered bytes are unacknowledged",
                hint="acknowledge each DataReceived.flow_controlled_length once",
            )
        if n == 0:
            return
        self._conn_unacked -= n
        stream = self._streams.get(stream_id)
        if stream is not None:
            k = n if n <= stream.recv_unacked else stream.recv_unacked
            stream.recv_unacked -= k
            if stream.recv_owed + k >= self._stream_update_at:
                self._owe_stream(stream, k)
            else:
                stream.recv_owed += k
        if self._conn_owed + n >= self._conn_update_at:
            self._owe_connection(n)
        else:
            self._conn_owed += n

    def send_window(self, stream_id: int) -> int:
        """How many bytes ``send_data`` would take now (0 for a closed stream)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            return 0
        return max(0, min(stream.send_window, self._send_conn_window))

    # --- helpers ---------------------------------------------------------------------------------

    def _stream_for_send(self, stream_id: int) -> Stream:
        stream = self._streams.get(stream_id)
        if self._dead:
            raise H2StreamClosedError(stream_id, what="belongs to a terminated connection")
        if stream is None:
            raise H2StreamClosedError(stream_id)
        if not stream.local_open:
            raise H2StreamClosedError(stream_id, what="is already half-closed by us (END_STREAM sent)")
        return stream

    def _queue_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], *, end_stream: bool) -> None:
        block = self._codec.encode(fields)
        self._queue(
            fr.header_block_frames(
                stream_id, block, end_stream=end_stream, max_frame_size=self._peer_max_frame
            )
        )

    def _queue_data(self, stream_id: int, view: memoryview, n: int, *, fin: bool, copy: bool) -> None:
        out = self._out
        size_max = self._peer_max_frame
        pos = 0
        frames = 0
        while pos < n:
            size = n - pos if n - pos < size_max else size_max
            stop = pos + size
            flags = fr.END_STREAM if fin and stop == n else 0
            out.append(_pack_header(size >> 8, size & 0xFF, fr.DATA, flags, stream_id))
            out.append(bytes(view[pos:stop]) if copy else view[pos:stop])
            pos = stop
            frames += 1
        self._out_bytes += n + 9 * frames


def _ascii_token(method: str) -> bytes:
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise H2UsageError(f"method {method!r} is not an upper-case token", hint="e.g. POST")
    return method.encode("ascii")


def _authority(authority: str) -> bytes:
    return _pseudo_value(authority, what="authority", example="10.0.0.2:8080")


def _pseudo_value(value: str, *, what: str, example: str) -> bytes:
    """A pseudo-header value (``:authority``, ``:path``): ASCII, not empty, no spaces or controls."""
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as err:
        raise H2UsageError(f"{what} {value!r} is not ASCII", hint=f"pass e.g. {example}") from err
    if not raw or any(c <= 0x20 or c == 0x7F for c in raw):
        raise H2UsageError(
            f"{what} {value!r} is empty or has spaces/control characters", hint=f"pass e.g. {example}"
        )
    return raw
