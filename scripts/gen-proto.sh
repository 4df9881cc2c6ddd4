#!/usr/bin/env bash
# Regenerates the Python code for mesh/api/**/*.proto into OUT (default: the source tree).
# The generated modules are committed; tests/unit/test_api_generated.py fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-.}
WKT=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mapfile -t PROTOS < <(find mesh/api -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I . -I "$WKT" \
  --python_out="$OUT" --mypy_out="$OUT" --grpc_python_out="$OUT" --mypy_grpc_out="$OUT" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  "${PROTOS[@]}"
# grpc_tools writes an empty _grpc module for protos without services; drop them.
find "$OUT/mesh/api" -name '*_pb2_grpc.py*' -print0 | xargs -0 grep -L 'Stub' | xargs -r rm -f
# The one real stub (the CA service) imports grpc, which the pure mesh/ must not: only the tests use
# it, as their gRPC client, so it goes to the test kit.
mkdir -p "$OUT/mesh/testing"
for f in "$OUT"/mesh/api/istio/v1/auth/ca_pb2_grpc.py*; do mv "$f" "$OUT/mesh/testing/"; done
