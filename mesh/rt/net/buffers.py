"""Read buffers handed to uvloop, and the spares kept while a previous one is still referenced."""

from __future__ import annotations

__all__ = ["SpareBuffers", "is_free"]


def is_free(buf: bytearray) -> bool:
    """True when no view refers to ``buf`` any more (a bytearray with exports cannot be resized)."""
    try:
        buf.append(0)
        del buf[-1]
    except BufferError:
        return False
    return True


class SpareBuffers:
    """A few buffers set aside while views into them live on (in a transport's write queue, or a
    paused stream); reused once free, so a busy connection neither allocates nor zero-fills."""

    def __init__(self, *, size: int, keep: int = 4) -> None:
        self._size = size
        self._keep = keep
        self._spares: list[bytearray] = []

    @property
    def held_bytes(self) -> int:
        """The bytes of the spares set aside."""
        return sum(len(buf) for buf in self._spares)

    def clear(self) -> None:
        """Drops the spares (their memory goes once no view refers to them)."""
        self._spares.clear()

    def swap(self, busy: bytearray) -> bytearray:
        """A free buffer in exchange for ``busy`` (kept, if there is room, until it is free too)."""
        spares = self._spares
        for i, buf in enumerate(spares):
            if is_free(buf):
                spares[i] = busy
                return buf
        if len(spares) < self._keep:
            spares.append(busy)
        return bytearray(self._size)
