#!/usr/bin/env bash
# Run the whole test suite (builds the environment first if needed). Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$CCD_ROOT"
exec python -m pytest "$@"
