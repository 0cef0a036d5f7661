#!/usr/bin/env bash
# One GPU session's checks, in the order that fails cheapest first:
#   1. the CUDA-only tests (graph capture exactness, every method in graph mode, train+resume)
#   2. transformer-era recipes with the whole iteration captured as one CUDA graph
#   3. DeepLabV2-era recipes in graph mode, and DACS eager with/without channels-last
# Tables are appended to $OUT/steps.md (default benchmarks/results/); copy them into
# BENCHMARKS.md by hand with the date and device they name. About 5 minutes on an H200.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider -k "cuda or graph" \
    tests/engine/test_stepper.py tests/uda/test_blocks.py tests/weighting/test_signals.py 2>&1 \
    | tail -25 | tee "$OUT/cuda_tests.txt"
steps() { python3 benchmarks/recipe_steps.py --out "$OUT/steps.md" --timeout 150 "$@" 2>&1 \
    | grep -E "s/it|Error|error:|Failed|Traceback" | grep -v Warning; }
T=configs
steps --configs $T/daformer/gta2cs.yaml $T/hrda/gta2cs.yaml $T/mic/gta2cs.yaml \
    --iters 15 --warmup 5 --title "Transformer-era recipes, one CUDA graph per iteration" \
    train.cuda_graph=true
steps --configs $T/dacs/gta2cs.yaml $T/advent/gta2cs.yaml --iters 20 --warmup 5 \
    --title "DeepLabV2-era recipes, one CUDA graph per iteration" train.cuda_graph=true
steps --configs $T/dacs/gta2cs.yaml --iters 20 --warmup 5 --title "DACS eager" 
steps --configs $T/dacs/gta2cs.yaml --iters 20 --warmup 5 --title "DACS eager, channels-last" \
    train.channels_last=true
