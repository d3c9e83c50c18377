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
[ -z "${SKIP_TESTS:-}" ] && timeout "${TEST_TIMEOUT:-300}" $PY -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rf ${TESTS:-} 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -40
[ -n "${ONLY_TESTS:-}" ] && exit 0
echo "== seqlab bench --device cuda"
$PY -m seqlab bench --device cuda --repeats 10 --json | tee "$OUT/bench-cli-cuda.json"
echo "== bench_core --device cuda"
timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/bench_core.py --device cuda --names benchmarks/_peers/names.txt \
  --repeats 10 --gen-repeats 10 --uncached-repeats 2 --budget 120 --out "$OUT/core-gpu.json" 2>&1 \
  | tee "$OUT/core-gpu.log" | tail -30
echo "== seqlab train end to end on names.txt, 6x6x384, batch 64, 300 steps"
for dt in auto float32; do
  $PY -m seqlab train --data benchmarks/_peers/names.txt --out /tmp/gpu-train-$dt --model transformer --n-layer 6 \
    --n-head 6 --n-embd 384 --batch-size 64 --steps 300 --eval-interval 300 --device cuda --dtype $dt --json --quiet \
    | tee "$OUT/train-cuda-$dt.json"
  $PY -m seqlab sample /tmp/gpu-train-$dt --n 2000 --device cuda --seed 0 --json > /tmp/s.json
  /usr/bin/time -f "sample 2000 names (with load): %e s" $PY -m seqlab sample /tmp/gpu-train-$dt --n 2000 --device cuda --seed 1 --json > /dev/null
done 2>&1 | tee -a "$OUT/train-cuda.log"
