#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf code from protos/. CI runs this and
# fails on any diff (the generated code must match grpcio-tools==1.85.1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/cctrain/v1/enclave.proto protos/cctrain/v1/journal.proto
