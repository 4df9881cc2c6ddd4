"""Typed errors of the push side."""

from __future__ import annotations

from mesh.errors import MeshError

__all__ = ["PushError", "SubscriberForbiddenError", "SubscriberRejectedError"]


class PushError(MeshError):
    """The push side cannot do what it was asked (bad snapshot input, bad request from a subscriber)."""


class SubscriberRejectedError(PushError):
    """A subscriber's stream was refused (unauthenticated caller, malformed first request)."""


class SubscriberForbiddenError(SubscriberRejectedError):
    """The caller is authenticated but may not speak for the proxy it claims to be."""
