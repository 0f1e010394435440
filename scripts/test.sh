#!/usr/bin/env bash
# Run the whole test suite (builds the environment first if needed). Extra args go to pytest.
# Test files run in CCD_TEST_WORKERS processes (default 2; 0: one process), whole files per
# process, since module fixtures (a `ray start --head` cluster, a sweep) are shared by a file.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$CCD_ROOT"
# --no-loadscope-reorder: files start in collection order (tests/conftest.py puts the job
# file first), not by their number of tests, which would start that two-test file last.
exec python -m pytest -n "${CCD_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
