"""The engine's state and the helpers every part of it shares (private)."""

from __future__ import annotations

from mesh.h2 import frames as fr
from mesh.h2._stream import CLOSED_LOCAL_RESET, CLOSED_NORMAL, Stream
from mesh.h2.config import DEFAULT_WINDOW, MIN_FRAME_SIZE, H2Config
from mesh.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from mesh.h2.events import ConnectionTerminated, Event, StreamEnded, StreamReset
from mesh.h2.headers import HeaderCodec

__all__ = ["Core"]

_NO_LIMIT = 2**31 - 1


class Core:
    """Connection state plus queueing, stream bookkeeping, flow-control credit and budgets."""

    def __init__(self, *, client_side: bool, config: H2Config) -> None:
        self.client_side = client_side
        self.config = config
        self._codec = HeaderCodec(
            max_header_list_size=config.max_header_list_size, header_table_size=config.header_table_size
        )
        self._events: list[Event] = []
        # outbound
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._ctl_frames = 0
        self._ctl_bytes = 0
        # streams
        self._streams: dict[int, Stream] = {}
        self._closed: dict[int, int] = {}
        self._next_stream_id = 1 if client_side else 2
        self._highest_peer_stream = 0
        self._local_open = 0
        self._peer_open = 0
        # peer settings and send credit
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = MIN_FRAME_SIZE
        self._peer_max_streams = _NO_LIMIT
        self._send_conn_window = DEFAULT_WINDOW
        self._init_receive_state()
        # lifecycle
        self._initiated = False
        self._preface_left = 0 if client_side else len(fr.CONNECTION_PREFACE)
        self._expect_settings = True
        self._dead = False
        self._goaway_sent_last: int | None = None
        self._goaway_received = False
        # budgets
        self._bad = 0
        self._window_streams = 0
        self._empty_data = 0

    def _init_receive_state(self) -> None:
        # receive credit; batched WINDOW_UPDATEs go out once a quarter of a window is owed
        self._recv_initial_window = DEFAULT_WINDOW
        self._recv_conn_window = DEFAULT_WINDOW
        self._conn_unacked = 0
        self._conn_owed = 0
        self._settings_unacked = 0
        self._conn_update_at = self.config.connection_window_size // 4
        self._stream_update_at = max(1, self.config.initial_window_size // 4)
        # receive parser: a partial frame carried between calls, a DATA frame being streamed,
        # a header block being assembled from HEADERS + CONTINUATION
        self._tail = bytearray()
        self._in_data = False
        self._data_left = 0
        self._pad_left = 0
        self._data_sid = 0
        self._data_end = False
        self._data_stream: Stream | None = None
        self._hb_sid = 0
        self._hb_parts: list[bytes] = []
        self._hb_size = 0
        self._hb_count = 0
        self._hb_end_stream = False

    # --- outbound queue -------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)

    def _queue_control(self, data: bytes) -> None:
        """Queues a frame the peer provoked; too many undrained ones mean the peer does not read."""
        self._queue(data)
        self._ctl_frames += 1
        self._ctl_bytes += len(data)
        cfg = self.config
        if (
            self._ctl_frames > cfg.max_outbound_control_frames
            or self._ctl_bytes > cfg.max_outbound_control_bytes
        ):
            raise H2ConnectionError(
                f"{self._ctl_frames} control frames ({self._ctl_bytes} bytes) queued and not sent: "
                "the peer is not reading",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    # --- streams ---------------------------------------------------------------------------------

    def _is_local_id(self, stream_id: int) -> bool:
        return (stream_id & 1) == (1 if self.client_side else 0)

    def _is_idle(self, stream_id: int) -> bool:
        """True for a stream id that was never used (neither open nor closed)."""
        if self._is_local_id(stream_id):
            return stream_id >= self._next_stream_id
        return stream_id > self._highest_peer_stream

    def _new_stream(self, stream_id: int, *, local: bool) -> Stream:
        stream = Stream(
            stream_id,
            local_initiated=local,
            send_window=self._peer_initial_window,
            recv_window=self._recv_initial_window,
        )
        self._streams[stream_id] = stream
        if local:
            self._local_open += 1
        else:
            self._peer_open += 1
        return stream

    def _close_stream(self, stream: Stream, reason: int) -> None:
        del self._streams[stream.stream_id]
        if stream.local_initiated:
            self._local_open -= 1
        else:
            self._peer_open -= 1
        self._remember_closed(stream.stream_id, reason)
        self._on_stream_closed(stream)

    def _on_stream_closed(self, stream: Stream) -> None:
        """The rest of a DATA frame still arriving for a closed stream is dropped and its credit returned."""
        if self._data_stream is stream:
            self._data_stream = None
            self._owe_connection(self._data_left)

    def _remember_closed(self, stream_id: int, reason: int) -> None:
        closed = self._closed
        closed[stream_id] = reason
        if len(closed) > self.config.max_closed_streams:
            del closed[next(iter(closed))]

    def _end_local(self, stream: Stream) -> None:
        stream.local_open = False
        if not stream.remote_open:
            self._close_stream(stream, CLOSED_NORMAL)

    def _end_remote(self, stream: Stream) -> None:
        stream.remote_open = False
        self._events.append(StreamEnded(stream.stream_id))
        if not stream.local_open:
            self._close_stream(stream, CLOSED_NORMAL)

    # --- errors and budgets ----------------------------------------------------------------------

    def _stream_error(self, err: H2StreamError) -> None:
        """Resets the stream the peer broke; the transport learns it from StreamReset(remote=False)."""
        sid = err.stream_id
        self._queue_control(fr.rst_stream_frame(sid, err.error_code))
        stream = self._streams.get(sid)
        if stream is not None:
            self._close_stream(stream, CLOSED_LOCAL_RESET)
            self._events.append(StreamReset(sid, err.error_code, remote=False))
        else:
            self._remember_closed(sid, CLOSED_LOCAL_RESET)
        if err.error_code != ErrorCode.REFUSED_STREAM:
            self._charge(f"stream errors ({err.message})")

    def _charge(self, what: str) -> None:
        """One more premature reset or provoked stream error; past the budget the peer is cut off."""
        self._bad += 1
        if self._bad > self.config.max_premature_resets:
            raise H2ConnectionError(
                f"more than {self.config.max_premature_resets} premature resets and {what} "
                f"within {self.config.reset_window_streams} streams",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    def _count_peer_stream(self) -> None:
        self._window_streams += 1
        if self._window_streams >= self.config.reset_window_streams:
            self._window_streams = 0
            self._bad = 0

    def _fail(self, err: H2ConnectionError) -> None:
        """Connection error: GOAWAY out, ConnectionTerminated(remote=False) up, input ignored from now."""
        self._dead = True
        debug = err.message.encode("utf-8", "replace")[:200]
        last = self._highest_peer_stream
        self._queue(fr.goaway_frame(last, err.error_code, debug))
        self._goaway_sent_last = last if self._goaway_sent_last is None else self._goaway_sent_last
        self._events.append(ConnectionTerminated(err.error_code, last, remote=False, additional_data=debug))

    # --- receive credit (consumer-driven flow control) -------------------------------------------

    def _owe_connection(self, n: int) -> None:
        self._conn_owed += n
        if self._conn_owed >= self._conn_update_at and not self._dead:
            owed, self._conn_owed = self._conn_owed, 0
            self._recv_conn_window += owed
            self._queue(fr.window_update_frame(0, owed))

    def _owe_stream(self, stream: Stream, n: int) -> None:
        if not stream.remote_open:
            return
        stream.recv_owed += n
        if stream.recv_owed >= self._stream_update_at and not self._dead:
            owed, stream.recv_owed = stream.recv_owed, 0
            stream.recv_window += owed
            self._queue(fr.window_update_frame(stream.stream_id, owed))
