#!/usr/bin/env bash
# xds-protos (Envoy's API, which the mesh speaks) ships an old copy of OpenTelemetry's protos
# (before 1.0: InstrumentationLibrarySpans, no ScopeSpans) under the same import path as the
# opentelemetry-proto package the waypoint exports traces with, and whichever pip installed last
# wins. This puts opentelemetry-proto's own files back when the old copy is the one on disk.
# Idempotent. Usage: scripts/otlp-protos.sh PYTHON
set -euo pipefail
python=${1:?usage: scripts/otlp-protos.sh PYTHON}
if ! "$python" -c 'from opentelemetry.proto.trace.v1 import trace_pb2; trace_pb2.ScopeSpans' 2>/dev/null; then
  version=$("$python" -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
  echo "setup: reinstalling opentelemetry-proto $version over the older copy of its modules from xds-protos"
  "$python" -m pip install -q --disable-pip-version-check --no-cache-dir --no-deps --force-reinstall \
    "opentelemetry-proto==$version"
  "$python" -c 'from opentelemetry.proto.trace.v1 import trace_pb2; trace_pb2.ScopeSpans'
fi
