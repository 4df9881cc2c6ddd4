"""One gRPC call on a connection: request messages out, response messages in, then a status."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mesh.h2.errors import H2ProtocolError
from mesh.h2.events import Response, TrailersReceived
from mesh.rpc import (
    MessageReader,
    RpcError,
    StatusCode,
    frame_message,
    status_for_http,
    status_of,
)

if TYPE_CHECKING:
    from mesh.rt.rpc._connection import RpcConnection

__all__ = ["RpcCall", "stream_of"]


class RpcCall:
    """One call: write request messages, read response messages; the status ends it."""

    def __init__(self, conn: RpcConnection, stream_id: int, *, max_message_bytes: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._reader = MessageReader(max_message_bytes=max_message_bytes)
        self._max_send = max_message_bytes
        self._messages: deque[bytearray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.status: RpcError | None = None
        """None while the call runs; then OK (an RpcError whose code is OK) or the error it ended with."""

    async def write(self, message: bytes) -> None:
        """Sends one message, waiting while HTTP/2 flow control holds it back."""
        if len(message) > self._max_send:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {len(message)} bytes is larger than the limit of {self._max_send}",
            )
        await self._conn.send(self, memoryview(frame_message(message)))

    async def done_writing(self) -> None:
        """Half-closes the call: the server sees the end of the requests."""
        self._conn.end(self)

    async def read(self) -> bytearray | None:
        """The next response message (the caller owns it); None once the call ended with OK.
        Raises RpcError otherwise."""
        while not self._messages:
            if self.status is not None:
                if self.status.code == StatusCode.OK:
                    return None
                raise self.status
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def cancel(self) -> None:
        """Ends the call from this side (RST_STREAM CANCEL); reads then fail with CANCELLED."""
        if self.status is None:
            self._conn.cancel(self)
            self.finish(StatusCode.CANCELLED, "the call was cancelled by this client")

    # -- fed by the connection ----------------------------------------------------------------------

    def on_headers(self, event: Response) -> None:
        """Response headers; a trailers-only answer carries the status here."""
        if event.status != 200:
            self.finish(status_for_http(event.status), f"the server answered HTTP {event.status}")
            return
        status = status_of(event.headers)
        if status is not None:
            self.finish(*status)

    def on_data(self, data: bytes | memoryview) -> None:
        """Body bytes: complete messages are queued for ``read``."""
        if self.status is not None:
            return
        try:
            self._messages.extend(self._reader.feed(data))
        except RpcError as err:
            self._conn.cancel(self)
            self.finish(err.code, err.details)
            return
        self._wake()

    def on_trailers(self, event: TrailersReceived) -> None:
        """The trailers: the call's status."""
        status = status_of(event.headers)
        if status is None:
            self.finish(StatusCode.INTERNAL, "the server ended the call without a grpc-status")
        else:
            self.finish(*status)

    def on_end(self) -> None:
        """The server's side ended without a status so far: the call failed."""
        if self._reader.pending:
            self.finish(StatusCode.INTERNAL, "the server ended the call in the middle of a message")
        else:
            self.finish(StatusCode.INTERNAL, "the server ended the call without a grpc-status")

    def finish(self, code: StatusCode, details: str) -> None:
        """Records the status (the first one counts) and wakes a waiting ``read``."""
        if self.status is None:
            self.status = RpcError(code, details)
            self._conn.forget(self)
        self._wake()

    def raise_if_ended(self) -> None:
        """Writing to an ended call fails with its status (or FAILED_PRECONDITION after OK)."""
        if self.status is not None and self.status.code != StatusCode.OK:
            raise self.status
        if self.status is not None:
            raise RpcError(StatusCode.FAILED_PRECONDITION, "the call already ended")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@contextlib.contextmanager
def stream_of(call: RpcCall) -> Iterator[None]:
    """Engine calls on a stream the server already closed end the call instead of raising H2 errors."""
    try:
        yield
    except H2ProtocolError as err:
        call.finish(StatusCode.UNAVAILABLE, f"the call's stream is closed: {err}")
        raise RpcError(StatusCode.UNAVAILABLE, f"the call's stream is closed: {err}") from err
