"""The waypoint's side towards clients: how one response goes back, head first, then its body piece
by piece as the upstream sends it (never held whole), then its trailers; or a reset when it
cannot complete (a timeout or an upstream failure after the head left: Envoy resets the HTTP/2
stream or closes the HTTP/1.1 connection, since a status can no longer be changed).

:class:`Responder` is what the proxy writes to; ``waypoint.h1`` and ``waypoint.h2`` have one for
each protocol.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Responder", "send_whole"]


class Responder(Protocol):
    """One response on its way to the client."""

    head_sent: bool
    sent: int
    """Body bytes sent so far."""

    async def head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None, end: bool
    ) -> None:
        """Sends the head (``length``: the body's, when known); ``end``: there is no body or
        trailer. Raises DownstreamGoneError when the client left."""
        ...

    async def data(self, piece: bytes) -> None:
        """Sends a body piece once the client can take it (backpressure); raises DownstreamGoneError."""
        ...

    async def finish(self, trailers: list[tuple[str, str]]) -> None:
        """Ends the response (with a trailer block where the protocol carries one)."""
        ...

    def reset(self) -> None:
        """The response cannot complete: the client must not take it for whole."""
        ...


async def send_whole(
    responder: Responder, status: int, headers: list[tuple[str, str]], body: bytes,
    trailers: list[tuple[str, str]] | None = None,
) -> None:  # fmt: skip
    """Sends a response the waypoint made itself (a fault, a redirect, a 503...)."""
    end = not body and not trailers
    await responder.head(status, headers, length=len(body), end=end)
    if end:
        return
    if body:
        await responder.data(body)
    await responder.finish(trailers or [])
