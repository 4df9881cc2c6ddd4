"""The CA's metrics, with Istio's names (``citadel_server_*``) so existing dashboards keep working."""

from __future__ import annotations

from mesh.rt.metrics import Counter, Gauge, Registry

__all__ = ["CaMetrics"]


class CaMetrics:
    """Counters for CSRs and their outcomes, registered on the registry passed in."""

    def __init__(self, registry: Registry) -> None:
        self.csr_count = Counter(
            "citadel_server_csr", "The number of CSRs received by the CA server.", registry=registry
        )
        self.authentication_failure_count = Counter(
            "citadel_server_authentication_failure",
            "The number of authentication failures.",
            registry=registry,
        )
        self.authorization_failure_count = Counter(
            "citadel_server_authorization_failure",
            "The number of requests denied by authorization (e.g. impersonation off-node).",
            registry=registry,
        )
        self.csr_parsing_err_count = Counter(
            "citadel_server_csr_parsing_err",
            "The number of errors parsing the request or its CSR.",
            registry=registry,
        )
        self.csr_sign_err_count = Counter(
            "citadel_server_csr_sign_err",
            "The number of errors occurred when signing the CSR.",
            registry=registry,
        )
        self.success_cert_issuance_count = Counter(
            "citadel_server_success_cert_issuance",
            "The number of certificates issuance that have succeeded.",
            registry=registry,
        )
        self.root_cert_expiry_timestamp = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA's signing certificate will expire.",
            registry=registry,
        )
