#!/usr/bin/env bash
# The device check (a lent CUDA machine; see benchmarks/results.md "GPU"): the GPU-marked
# tests, `seqlab bench --device cuda`, and bench_core's seqlab-vs-peers rows on the GPU.
# Run from the repository root with benchmarks/_peers/ holding makemore.py and names.txt;
# writes to $OUT (default ./gpu-out). Needs torch with CUDA, pytest, transformers, peft.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$OUT/gpu.txt"
echo "== GPU tests"
timeout "${TEST_TIMEOUT:-300}" $PY -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rf ${TESTS:-} 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -40
[ -n "${ONLY_TESTS:-}" ] && exit 0
echo "== seqlab bench --device cuda"
$PY -m seqlab bench --device cuda --repeats 10 --json | tee "$OUT/bench-cli-cuda.json"
echo "== bench_core --device cuda"
timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/bench_core.py --device cuda --names benchmarks/_peers/names.txt \
  --repeats 10 --gen-repeats 10 --uncached-repeats 2 --budget 120 --out "$OUT/core-gpu.json" 2>&1 \
  | tee "$OUT/core-gpu.log" | tail -30
