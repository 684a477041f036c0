#!/usr/bin/env bash
# The GPU checks of the fast-trial work, as one prepared run (about 5 minutes on an H100 or H200):
# the GPU-only tests, then benchmarks/bench_trials.py at the issue's reference settings (224 px,
# batch 128): throughput for its four models, the compile warm-up and gain (vit_small), data wait
# and the feature cache; then the quickstart study end to end (train on the GPU, export,
# onnxruntime parity). Each part writes a log to $OUT; a part
# that fails is reported and the others still run; the exit code says whether any failed.
#
# On a lent device machine (see benchmarks/README.md, "On a GPU"): first, here,
#     benchmarks/gpu/fetch-wheels.sh
# then run with carry [".whl"] and a timeout of about 480 s:
#     bash benchmarks/gpu/check.sh
# Anywhere else: PYTHON=.venv/bin/python bash benchmarks/gpu/check.sh (QUICK=1: tiny settings, to
# try the script itself on a CPU in a minute or two).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/tlsearch-gpu-check.XXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=()

# what the image lacks: the carried wheels, and tlsearch itself (for its entry points)
if ! "$PY" -c "import optuna, pydantic" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the wheels in .whl/ (run benchmarks/gpu/fetch-wheels.sh here first)"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import importlib.metadata as m; m.distribution('tlsearch')" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
    || { echo "could not install tlsearch"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "${QUICK:-0}" = 1 ]; then
  size=224 batch=4 steps=2 repeats=1 workers=2
else
  size=224 batch=128 steps=50 repeats=2 workers=8
fi
models="efficientnet_lite0 resnet50 convnext_tiny vit_small_patch16_224"

part() {  # part NAME COMMAND...: run, log to $OUT/NAME.log, remember a failure
  local name=$1; shift
  echo "::: $name"
  if ! "$@" 2>&1 | tee "$OUT/$name.log"; then failed+=("$name"); fi
}

part environment bash -c "nvidia-smi 2>&1 | head -15; $PY -c 'import torch, timm, optuna, onnxruntime as ort; \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \
\"timm\", timm.__version__, \"optuna\", optuna.__version__, \"onnxruntime\", ort.__version__)'"
part gpu-tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_fast.py
part throughput bash -c "for m in $models; do $PY benchmarks/bench_trials.py throughput --model \$m \
  --size $size --batch $batch --steps $steps --repeats $repeats || exit 1; done"
if [ "${QUICK:-0}" != 1 ]; then  # compiling on a CPU takes minutes and tells nothing of a GPU
  part compile "$PY" benchmarks/bench_trials.py compile --model vit_small_patch16_224 --size "$size" \
    --batch "$batch" --steps "$steps"
fi
part data-wait "$PY" benchmarks/bench_trials.py data-wait --model resnet50 --size "$size" --batch "$batch" \
  --steps "$steps" --workers "$workers"
part feature-cache "$PY" benchmarks/bench_trials.py feature-cache --model resnet50 --size "$size" \
  --batch "$batch" --steps "$steps"
work=$(mktemp -d)
part quickstart bash -c "$PY -m tlsearch demo-data $work/data/shapes && cp studies/quickstart.yaml $work/ \
  && $PY -m tlsearch run $work/quickstart.yaml --out $work/run --console plain \
  && $PY -m tlsearch status $work/run"

echo "::: logs in $OUT"
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all parts passed"
