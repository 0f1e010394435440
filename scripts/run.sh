#!/usr/bin/env bash
# Run the CCD job (builds the environment first if needed). With no args: the embedded default.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$CCD_ROOT"
exec python jobs/run_ccd.py "$@"
