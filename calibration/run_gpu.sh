#!/usr/bin/env bash
# Calibrate the GPU of this machine in one prepared run, for a lent GPU machine with no network.
#
#   OUT=/path/to/results BUDGET=420 bash calibration/run_gpu.sh
#   OUT=/tmp/dry QUICK=1 bash calibration/run_gpu.sh     # the same script on the CPU (--quick), no GPU
#
# Runs from the repository root without installing kvsim (PYTHONPATH=.); needs python3 with torch (CUDA
# build) and triton. Writes the tables and meta.json to $OUT/profile, a log to $OUT/log.txt, and, when the
# tables are more than 7 files, packs them into $OUT/profile.tar.gz (at most 8 files come back).
# The run stays within BUDGET seconds (default 420), start-up included; it exits 0 when every planned
# family completed, 1 when the tables are partial (meta.json says "complete": false), 2 on bad input.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-./calibration-out}"
BUDGET="${BUDGET:-420}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

{
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) kvsim calibrate, budget ${BUDGET} s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv 2>&1 || true
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1 || true
} | tee "$OUT/log.txt"

# The full CLI imports every subcommand's module; fall back to the calibrate module alone if that fails
# (for instance when a subcommand needs a package this machine lacks).
if python3 -c 'import kvsim.cli.main as m; m.build_parser()' >/dev/null 2>&1; then
  CMD=(python3 -m kvsim.cli.main calibrate)
else
  echo "kvsim.cli.main does not import here; running python3 -m kvsim.cli.calibrate" | tee -a "$OUT/log.txt"
  CMD=(python3 -m kvsim.cli.calibrate)
fi

EXTRA=()
if [ "${QUICK:-0}" = "1" ]; then EXTRA=(--quick); fi
"${CMD[@]}" --out "$OUT/profile" --budget-s "$BUDGET" "${EXTRA[@]}" 2>&1 | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "== exit code $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)" | tee -a "$OUT/log.txt"

if [ -d "$OUT/profile" ]; then
  count=$(find "$OUT/profile" -type f | wc -l)
  if [ "$count" -gt 7 ]; then
    cp "$OUT/profile/meta.json" "$OUT/meta.json" 2>/dev/null || true
    tar -czf "$OUT/profile.tar.gz" -C "$OUT" profile && rm -rf "$OUT/profile"
    echo "packed $count files into $OUT/profile.tar.gz" | tee -a "$OUT/log.txt"
  fi
fi
exit "$rc"
