#!/usr/bin/env bash
# The one-GPU checks, in one go, printing everything:
#
#   benchmarks/gpu_check.sh [CONFIG]        (default configs/paper.py:1gpu)
#
# Sections, run in the order given by SECTIONS (default "kernel
# kernel_tests kernel_step"):
#   kernel       benchmarks.topk_kernel --nostep on CONFIG: one AbsTopK call
#                at the paper's shapes (131072 x 1024 keep 256, x 4096 keep
#                1024) with topk_impl xla and pallas beside the memory floor
#                and lax.top_k, and the kernel under other block sizes;
#   kernel_tests tests/test_topk_pallas.py on the device (the real kernel
#                against sparsity.topk_mask);
#   kernel_step  benchmarks.topk_kernel --nocalls: CONFIG's train step with
#                each impl and with afrac 0 side by side (tokens/s,
#                activation top-k share, memory);
#   compile_check  XLA's memory per device (fails above the config's
#                distributed.device_memory_gb), tokens per step, the step
#                time at 40% of the device's peak;
#   bench        benchmarks.step on CONFIG: ms/step, tokens/s, model
#                TFLOP/s, MFU, the shares of weight top-k and activation
#                top-k (afrac on vs off) and of the input pipeline;
#   tests        the tests of microbatches, remat and bfloat16 compute;
#   variants     the step alone under other (microbatches, remat) choices,
#                with XLA's memory estimate of each;
#   compare      --mode=compare with configs/compare.py:COMPARE (default
#                h200: the paper's regime sized to minutes on one H200),
#                its workdir under $OUT/compare.
# The paper model's first check was SECTIONS="compile_check bench tests
# variants" (BUILD.md, "One GPU").
#
# Run from the repository root. Environment: PYTHON (python3), OUT (a
# folder for the logs, /tmp/gpu_check), ROUNDS (3), VARIANTS ("4,topk
# 2,topk 1,block"), BUDGET_S (380: no section starts later, and each is cut
# at it), WHEELS (a folder of .whl files installed first into /tmp/site, for
# a machine without a package index), QUICK (1: CPU-sized shapes and model,
# the kernel interpreted; default CONFIG configs/tiny.py, SECTIONS "kernel
# kernel_step"). On CPU:
#   QUICK=1 PYTHON=.venv/bin/python benchmarks/gpu_check.sh
#   PYTHON=.venv/bin/python SECTIONS=variants VARIANTS=2,topk \
#     benchmarks/gpu_check.sh configs/tiny.py
set -u -o pipefail
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  CONFIG=${1:-configs/tiny.py} SECTIONS=${SECTIONS:-kernel kernel_step}
else
  CONFIG=${1:-configs/paper.py:1gpu}
  SECTIONS=${SECTIONS:-kernel kernel_tests kernel_step}
fi
COMPARE=${COMPARE:-h200}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-4,topk 2,topk 1,block}
BUDGET_S=${BUDGET_S:-380}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
# One compile of the train step serves compile_check and the benchmark.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
START=$SECONDS

# section NAME MAX_S CMD...: runs CMD under a timeout of min(MAX_S, time
# left), its output teed to $OUT/NAME.log; skipped when no time is left.
section() {
  local name=$1 max=$2 left
  shift 2
  left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, ${left}s of the budget left"
    return 0
  fi
  [ "$max" -gt "$left" ] && max=$left
  echo "=== $name (at $((SECONDS - START)) s, up to $max s): $*"
  timeout "$max" "$@" 2>&1 | grep --line-buffered -v \
    -e "Unable to initialize backend" -e "^[WI]0000 " | tee "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - START)) s"
}

echo "=== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>/dev/null || true
"$PYTHON" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 \
  | grep -v "Unable to initialize backend"

# float32 matmuls at full precision (GPUs default to TF32): the tests
# compare float32 programs to 1e-5. `-o addopts=` runs them in this process,
# without pyproject's pytest-xdist options (the device may lack xdist).
PYTEST=(env JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q
        -o addopts= -p no:cacheprovider)
for s in $SECTIONS; do
  case $s in
    kernel|kernel_step)
      flags=(--config="$CONFIG" --out="$OUT")
      [ "$QUICK" = 1 ] && flags+=(--quick --rounds=2)
      if [ "$s" = kernel ]; then flags+=(--nostep); max=150
      else flags+=(--nocalls); max=300; fi
      section "$s" "$max" "$PYTHON" -m benchmarks.topk_kernel "${flags[@]}" ;;
    kernel_tests)
      section kernel_tests 120 "${PYTEST[@]}" tests/test_topk_pallas.py ;;
    compile_check)
      section compile_check 150 "$PYTHON" -m sparse_circuits.main \
        --config="$CONFIG" --mode=compile_check --workdir=/tmp/unused ;;
    bench)
      section bench 200 "$PYTHON" -m benchmarks.step --config="$CONFIG" \
        --noprune --rounds="$ROUNDS" ;;
    tests)
      section tests 90 "${PYTEST[@]}" tests/test_train.py tests/test_model.py \
        -k "microbatches_give or remat_gives or bfloat16" ;;
    variants)
      for v in $VARIANTS; do
        m=${v%,*} r=${v#*,}
        section "step_m${m}_${r}" 75 "$PYTHON" -m benchmarks.step \
          --config="$CONFIG" --config.train.microbatches="$m" \
          --config.model.remat="$r" --noprune --noshares --rounds=2
      done ;;
    compare)
      section compare 600 "$PYTHON" -m sparse_circuits.main \
        --config="configs/compare.py:$COMPARE" --mode=compare \
        --workdir="$OUT/compare" ;;
    *) echo "=== unknown section $s (want kernel kernel_tests kernel_step"\
         "compile_check bench tests variants compare)"; exit 2 ;;
  esac
done
echo "=== done after $((SECONDS - START)) s; logs in $OUT"
