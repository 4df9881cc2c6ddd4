"""Typed errors of the push side."""

from __future__ import annotations

from mesh.errors import MeshError

__all__ = ["PushError", "SubscriberRejectedError"]


class PushError(MeshError):
    """The push side cannot do what it was asked (bad snapshot input, bad request from a subscriber)."""


class SubscriberRejectedError(PushError):
    """A subscriber's stream was refused (unauthenticated caller, malformed first request)."""
