#!/usr/bin/env bash
# The GPU Ray check as one command on the GPU machine, its output kept:
#   bash benchmarks/gpu_ray_check.sh [options of benchmarks/gpu_ray_check.py, e.g. --wheels DIR]
# Without Ray the Python script installs the wheels of --wheels DIR offline into DIR/site; the
# repository goes on PYTHONPATH (ccd_ray need not be installed). Writes into $OUT (else
# outputs/gpu-ray-check/):
# gpu_ray_check.json (the numbers), crop_views.md (benchmarks/crop_views.py on the GPU),
# gpu_ray_check.log (all output) and, when it fails,
# ray_logs_tail.txt (the ends of Ray's error logs).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu-ray-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="$out/gpu_ray_check.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$log" 2>&1
cat "$log"
# the view crops on the GPU first (torch only, seconds): per view on the CPU, per view on the
# GPU (the product), one roi_align call; its table goes to the log and crop_views.md
"${PYTHON:-python3}" benchmarks/crop_views.py --device cuda 2>&1 \
  | tee "$out/crop_views.md" | tee -a "$log"
"${PYTHON:-python3}" benchmarks/gpu_ray_check.py --out "$out/gpu_ray_check.json" "$@" 2>&1 \
  | tee -a "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  # the Ray instance's own log folder, as the script recorded it
  logs=$("${PYTHON:-python3}" -c 'import json, sys
print(json.load(open(sys.argv[1]))["settings"]["ray_init"]["logs_dir"])' \
    "$out/gpu_ray_check.json" 2>/dev/null)
  [ -n "$logs" ] && for f in "$logs"/raylet.err "$logs"/gcs_server.err "$logs"/worker-*.err; do
    [ -s "$f" ] && { echo "=== $f"; tail -n 40 "$f"; }
  done 2>/dev/null | head -c 4000000 >"$out/ray_logs_tail.txt"
fi
exit "$rc"
