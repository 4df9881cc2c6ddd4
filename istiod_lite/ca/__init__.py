"""istiod_lite.ca: the certificate authority.

Pure parts: ``authority`` (signing key material, new roots), ``csr`` (request validation),
``signing`` (leaves, TTL cap), ``authz`` (who may have which identity). I/O shells: ``store``
(state directory, Istio cacerts), ``auth``/``kube_auth`` (callers), ``pods`` (where
service accounts run), ``service`` (one CreateCertificate call) and ``server`` (gRPC over TLS).
The composition root is ``istiod_lite.app``.
"""
