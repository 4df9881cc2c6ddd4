"""One request to the Kubernetes API through the ``kubernetes`` client's ``ApiClient`` (its auth, TLS
and connection pool), answered as (HTTP status, body bytes): the controllers read the status
themselves (404, 409 and 403 are answers, not exceptions). Blocking: call it from a worker thread.
"""

from __future__ import annotations

from typing import Any

__all__ = ["call_api"]

DEFAULT_TIMEOUT = (5.0, 10.0)
"""Seconds to connect, and to read the answer."""


def call_api(
    api: Any,
    method: str,
    path: str,
    body: object = None,
    *,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> tuple[int, bytes]:
    """``method path`` with ``body`` as JSON (a JSON merge patch for PATCH); the answer's status and
    body. A failure to connect raises the client's (urllib3's) exception."""
    content = "application/merge-patch+json" if method == "PATCH" else "application/json"
    headers = {"Content-Type": content} if body is not None else {}
    method, url, header_params, serialized, _ = api.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api.call_api(
        method, url, header_params=header_params, body=serialized, _request_timeout=timeout
    ).response
    return int(response.status), bytes(response.data or b"")
