#!/usr/bin/env bash
# Issue 14 on one GPU (H100/H200), in the order that fails cheapest first. About 5 minutes:
#   1. gpu-marked tests of the fused path: CUDA Triton kernels equal the CPU reference (values,
#      weights, gradients; fp32 and bf16; contiguous and channels-last), no host sync, a CUDA
#      graph replay equals the eager loop; plus the existing GBW no-sync test       (~1-2 min)
#   2. gbw bench overhead, fused (Triton) vs unfused vs plain CE, eager and one CUDA graph per
#      case, bf16 logits at 2x19x512x512 and 2x19x1024x1024, then fp32 at 512      (~2 min)
#   3. the Triton tile sizes (benchmarks/fused_blocks.py)                          (~1 min)
#   4. the tables for BENCHMARKS.md section 1 (benchmarks/overhead_tables.py)
# The kernels stage needs only torch, triton, numpy, tqdm and pytest(-timeout): all in the H200
# image. STAGE=recipes runs instead (about 6 minutes, a second call): DAFormer and HRDA + GBW,
# one CUDA graph per iteration, weighting.fused=off vs triton (benchmarks/recipe_steps.py); it
# needs gbw's dependencies (omegaconf, lightning-fabric, segmentation-models-pytorch, ...),
# carried as wheels if the image lacks them (/work/.library/device/README.md).
# Results go to $OUT (default benchmarks/results/round2); copy the tables into BENCHMARKS.md
# with the device and date they name. If the fused path pays, set gbw.weighting.fused.AUTO's
# "cuda" entry to "triton" (the CPU entry was chosen the same way).
set -u
OUT=${OUT:-benchmarks/results/round2}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's gbw, installed or not
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u +%F; } 2>&1 | tee "$OUT/device.txt"

if [ "${STAGE:-kernels}" = recipes ]; then
    for f in off triton; do
        timeout 330 $PY benchmarks/recipe_steps.py --out "$OUT/steps.md" --timeout 160 \
            --configs configs/daformer/gta2cs.yaml configs/hrda/gta2cs.yaml \
            --iters 15 --warmup 5 --title "Transformer-era recipes, CUDA graph, fused=$f" \
            train.cuda_graph=true weighting.fused=$f 2>&1 | grep -E "s/it|Error|error:|Traceback"
    done
    cat "$OUT/steps.md"
    exit 0
fi

timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu \
    tests/weighting/test_fused.py tests/weighting/test_signals.py 2>&1 | tail -15 \
    | tee "$OUT/gpu_tests.txt"
bench() {  # dtype size
    timeout 120 $PY -m gbw.bench.overhead --device cuda --cuda-graph --fused-impl triton \
        --dtype "$1" --size "$2" --rounds 50 --out "$OUT/overhead.md" \
        --json "$OUT/overhead_$1_$2.json" 2>&1 | grep -E "plain CE|fused|Error|Traceback"
}
bench bfloat16 512
bench bfloat16 1024
bench float32 512
timeout 90 $PY benchmarks/fused_blocks.py --size 512 --dtype bfloat16 2>&1 | tee "$OUT/blocks.md"
$PY benchmarks/overhead_tables.py "$OUT" | tee "$OUT/tables.md"
