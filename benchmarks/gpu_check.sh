#!/usr/bin/env bash
# MINT on a lent GPU, unattended, within 8 minutes: install, GPU tests, step benchmarks (bf16,
# padding-free both ways), one fresh `mint run`, 4-bit loading, the paper's shapes, and 2-process
# DDP when there are 2 GPUs. Every result goes to $OUT (default ./gpu_check_out) as JSON or a log.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   MINT_GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh   # the CPU-safe parts, short settings (CI machines)
#
# Each step has its own time limit so one slow step cannot eat the others' time; a failed step is
# logged and the script goes on (the summary lists what failed).
set -u
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
CPU=${MINT_GPU_CHECK_CPU:-0}
if ! command -v nvidia-smi >/dev/null 2>&1; then CPU=1; fi
FAILED=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  if timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; then
    echo "ok    $name ($(( $(date +%s) - start )) s)" | tee -a "$OUT/summary.txt"
  else
    echo "FAIL  $name (rc $?, $(( $(date +%s) - start )) s; see $OUT/$name.err)" | tee -a "$OUT/summary.txt"
    FAILED+=("$name")
  fi
}
: > "$OUT/summary.txt"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || lscpu | grep -E "Model name|Flags"; } > "$OUT/device.txt"

if [ "$CPU" = 1 ]; then
  PY=python   # the CPU-safe check runs in the current environment
  step orpo_step 240 $PY benchmarks/orpo_step.py --steps 2 --json
  step orpo_step_padding_free 240 $PY benchmarks/orpo_step.py --steps 2 --padding-free --json
  step dpo_step 240 $PY benchmarks/dpo_step.py --steps 2 --json
  step gpu_tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests
else
  step venv 150 bash -c "python -m venv .gpu-venv && .gpu-venv/bin/pip install -q -e '.[test]' && (.gpu-venv/bin/pip install -q bitsandbytes || true)"
  PY=.gpu-venv/bin/python
  step gpu_tests 60 $PY -m pytest -q -p no:cacheprovider -m gpu tests
  step orpo_step_bf16 45 $PY benchmarks/orpo_step.py --bf16 --json
  step orpo_step_bf16_padding_free 45 $PY benchmarks/orpo_step.py --bf16 --padding-free --json
  step dpo_step_bf16 45 $PY benchmarks/dpo_step.py --bf16 --json
  step mint_run 150 bash -c "/usr/bin/time -v $PY -m mint_core.cli run --run-dir $OUT/run && cp $OUT/run/metrics.json $OUT/run_metrics.json"
  step load_4bit 40 $PY -m mint_core.cli eval --run-dir $OUT/run --roles orpo student.load_in_4bit=true eval.max_cases=10 eval.max_generation_cases=10
  step paper_shapes 60 $PY benchmarks/paper_shapes.py --layers 28 --json
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    step ddp_2gpu 120 $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m mint_core.cli run --run-dir $OUT/ddp optimizer.max_steps=20 eval.max_cases=20
  fi
fi
echo "failed: ${FAILED[*]:-none}" | tee -a "$OUT/summary.txt"
