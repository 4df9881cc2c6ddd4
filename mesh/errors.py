"""The root of the mesh's typed errors. Every error says what is wrong and what to do next."""

from __future__ import annotations

__all__ = ["ConfigError", "MeshError"]


class MeshError(Exception):
    """Root of every error the mesh raises on purpose.

    ``hint`` tells the reader what to do next; it is appended to the message.
    """

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(MeshError):
    """A configuration value (file, flag, resource) is invalid."""
