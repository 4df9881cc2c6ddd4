"""Workload certificates: the issued value, parsing the CA's answer, and the renewal decisions.

Pure: the caller passes ``now`` (Unix seconds) and a seeded ``random.Random``. The asyncio driver in
``mesh.rt.certs`` feeds each identity's state machine with fetch results and sleeps until the time
it names, as ztunnel's secret manager does:

- a certificate is refreshed at half its lifetime (``not_before + (not_after - not_before) / 2``),
  give or take 5 % of it at random, so that renewals of many identities are spread out;
- a failed fetch is retried after a per-identity exponential backoff (x2, +/-20 % jitter, capped at 150 s);
- the old certificate is served until it expires, never after.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mesh.der import pem_blocks
from mesh.identity.spiffe import WorkloadIdentity

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FACTOR",
    "BACKOFF_INITIAL",
    "BACKOFF_JITTER",
    "MIN_REFRESH_DELAY",
    "CertPhase",
    "IssuedCertificate",
    "RenewalState",
    "Validity",
    "fetch_failed",
    "fetch_started",
    "fetch_succeeded",
    "is_usable",
    "next_backoff",
    "phase",
    "REFRESH_JITTER",
    "refresh_at",
    "split_ca_answer",
    "split_pem_certificates",
    "start",
]

REFRESH_JITTER = 0.05
"""A refresh happens between 45 % and 55 % of a certificate's lifetime (spread, not in step)."""
BACKOFF_INITIAL = 0.5
"""Seconds before the first retry of a failed fetch (before jitter)."""
BACKOFF_FACTOR = 2.0
"""Each further consecutive failure multiplies the delay by this."""
BACKOFF_CAP = 150.0
"""No retry is ever scheduled further out than this, jitter included."""
BACKOFF_JITTER = 0.2
"""Relative jitter: a delay d becomes uniform in [d * 0.8, d * 1.2] (then capped)."""
MIN_REFRESH_DELAY = 1.0
"""A fresh certificate is never refreshed sooner than this, whatever its lifetime (no busy loop)."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A workload certificate with its private key, as issued by the CA and verified by the client.

    All PEM: ``chain_pem`` is the leaf then its intermediates (what a TLS endpoint presents),
    ``roots_pem`` the trust bundle the CA sent (one or more roots), which peers' chains are checked
    against, ``key_pem`` the unencrypted PKCS#8 private key (never shown by ``repr``). ``serial`` and
    the times (Unix seconds) are the leaf's.
    """

    identity: WorkloadIdentity
    key_pem: bytes = field(repr=False)
    chain_pem: bytes
    roots_pem: bytes
    serial: int
    not_before: float
    not_after: float

    @property
    def validity(self) -> Validity:
        """The leaf's validity window."""
        return Validity(self.not_before, self.not_after)


def split_pem_certificates(pem: bytes | str, *, what: str) -> tuple[bytes, ...]:
    """Each certificate of a PEM bundle, as its own PEM block; raises ValueError naming ``what`` when
    the bundle holds another kind of PEM block or a block that is not one DER structure in base64.
    Text between blocks is ignored, as OpenSSL does."""
    return tuple(block for block, _ in pem_blocks(pem, label="CERTIFICATE", what=what))


def split_ca_answer(chain: Sequence[str]) -> tuple[bytes, bytes]:
    """Splits a CreateCertificate answer into (leaf then intermediates, root bundle), as PEM.

    The answer is the leaf first, any intermediates, and the root bundle last. Checks only the shape;
    the caller verifies the chain and the identity. Raises ValueError saying what is wrong.
    """
    if len(chain) < 2:
        raise ValueError(
            f"the answer holds {len(chain)} PEM elements; expected the leaf, then the root bundle"
        )
    leaves = split_pem_certificates(chain[0], what="the leaf (element 0)")
    if len(leaves) != 1:
        raise ValueError(f"element 0 holds {len(leaves)} certificates; expected exactly the leaf")
    intermediates = [
        c for i, pem in enumerate(chain[1:-1], 1) for c in split_pem_certificates(pem, what=f"element {i}")
    ]
    roots = split_pem_certificates(chain[-1], what="the root bundle (last element)")
    if not roots:
        raise ValueError("the root bundle (last element) holds no certificate")
    return b"".join((*leaves, *intermediates)), b"".join(roots)


@dataclass(frozen=True, slots=True)
class Validity:
    """The validity window of a certificate, in Unix seconds."""

    not_before: float
    not_after: float


class CertPhase(enum.StrEnum):
    """What an identity's certificate is doing, as shown in the admin dump."""

    PENDING = "pending"
    """No certificate yet; the first fetch is in flight or about to start."""
    VALID = "valid"
    """A certificate is served; the next refresh is scheduled at half life."""
    REFRESHING = "refreshing"
    """A certificate is served while its replacement is being fetched."""
    RENEWAL_FAILING = "renewal-failing"
    """Refreshes failed; the old certificate is still served until it expires; retries back off."""
    UNAVAILABLE = "unavailable"
    """No certificate was ever obtained and the last fetch failed; retries back off."""
    EXPIRED = "expired"
    """The last certificate expired and no replacement came in: connections fail closed."""


@dataclass(frozen=True, slots=True)
class RenewalState:
    """One identity's renewal state machine.

    ``next_attempt`` is the Unix time at which the next fetch should start; ``failures`` counts
    consecutive failed fetches (it drives the backoff); ``validity`` is that of the certificate
    currently held, if any.
    """

    next_attempt: float
    validity: Validity | None = None
    failures: int = 0
    fetching: bool = False
    last_error: str = ""


def refresh_at(not_before: float, not_after: float) -> float:
    """The time a certificate should be refreshed: half way through its lifetime."""
    if not_after < not_before:
        raise ValueError(
            f"not_after {not_after} is before not_before {not_before}; the certificate is invalid"
        )
    return not_before + (not_after - not_before) / 2


def next_backoff(
    failures: int,
    rng: random.Random,
    *,
    initial: float = BACKOFF_INITIAL,
    factor: float = BACKOFF_FACTOR,
    cap: float = BACKOFF_CAP,
    jitter: float = BACKOFF_JITTER,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 for the first one).

    ``initial * factor**(failures - 1)`` with +/-``jitter`` relative jitter, never more than ``cap``.
    """
    if failures < 1:
        raise ValueError(f"failures must be >= 1 (got {failures}); call this only after a failed fetch")
    exponent = min(failures - 1, 64)  # 2**64 * 0.5 s is far past any cap; avoids float overflow
    base = min(cap, initial * factor**exponent)
    return min(cap, base * rng.uniform(1.0 - jitter, 1.0 + jitter))


def start(*, now: float) -> RenewalState:
    """The state of an identity seen for the first time: fetch now."""
    return RenewalState(next_attempt=now)


def fetch_started(state: RenewalState) -> RenewalState:
    """A fetch for this identity began."""
    return replace(state, fetching=True)


def fetch_succeeded(
    state: RenewalState, validity: Validity, *, now: float, rng: random.Random | None = None
) -> RenewalState:
    """A new certificate arrived: serve it, forget past failures, refresh it at half life, moved by
    up to +/- ``REFRESH_JITTER`` of its lifetime when ``rng`` is given, so that the certificates of
    many identities issued together (a node's pods starting at once) do not come back for renewal
    in one burst."""
    due = refresh_at(validity.not_before, validity.not_after)
    if rng is not None:
        due += (validity.not_after - validity.not_before) * REFRESH_JITTER * (2 * rng.random() - 1)
    return RenewalState(next_attempt=max(due, now + MIN_REFRESH_DELAY), validity=validity)


def fetch_failed(state: RenewalState, *, now: float, rng: random.Random, error: str) -> RenewalState:
    """A fetch failed: keep the old certificate (if any) and retry after the backoff."""
    failures = state.failures + 1
    delay = next_backoff(failures, rng)
    return replace(state, next_attempt=now + delay, failures=failures, fetching=False, last_error=error)


def is_usable(state: RenewalState, *, now: float) -> bool:
    """True when the held certificate may be presented: one is held and it has not expired."""
    return state.validity is not None and now < state.validity.not_after


def phase(state: RenewalState, *, now: float) -> CertPhase:
    """The phase shown to operators for this state at ``now``."""
    if state.validity is None:
        return CertPhase.UNAVAILABLE if state.failures and not state.fetching else CertPhase.PENDING
    if not is_usable(state, now=now):
        return CertPhase.EXPIRED
    if state.fetching:
        return CertPhase.REFRESHING
    if state.failures:
        return CertPhase.RENEWAL_FAILING
    return CertPhase.VALID
