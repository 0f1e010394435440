# Sourced by scripts/run.sh and scripts/test.sh: find or build the project's virtualenv, then activate it.
# The venv lives outside the clone, keyed by the Python version and the dependency spec in
# pyproject.toml, so every clone with the same spec shares it. A stamp written only after a
# successful install marks it usable; anything else is rebuilt from nothing.
set -euo pipefail
CCD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CCD_PYTHON="${CCD_PYTHON:-}"
if [[ -z "$CCD_PYTHON" ]]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
      CCD_PYTHON="$candidate"; break
    fi
  done
fi
[[ -n "$CCD_PYTHON" ]] || { echo "ccd-ray needs Python 3.11 or 3.12 on PATH" >&2; exit 1; }

spec_key="$("$CCD_PYTHON" - "$CCD_ROOT/pyproject.toml" <<'PY'
import hashlib, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
spec = "\n".join(project["dependencies"] + project["optional-dependencies"]["test"])
print(hashlib.sha256((sys.version + spec).encode()).hexdigest()[:16])
PY
)"
CCD_VENV="${CCD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ccd-ray/venv-$spec_key}"

if [[ ! -f "$CCD_VENV/.ccd-ray-installed" ]]; then
  echo "[ccd-ray] building the environment in $CCD_VENV (first run only, several minutes)" >&2
  rm -rf "$CCD_VENV"
  "$CCD_PYTHON" -m venv "$CCD_VENV"
  "$CCD_VENV/bin/python" -m pip install --quiet --upgrade pip
  mapfile -t requirements < <("$CCD_VENV/bin/python" - "$CCD_ROOT/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
  )
  # pip.conf on these machines names local indexes that lack some packages; silence that noise only
  "$CCD_VENV/bin/python" -m pip install --quiet "${requirements[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$CCD_VENV/.ccd-ray-installed"
fi

# shellcheck disable=SC1091
source "$CCD_VENV/bin/activate"
# The package is installed editable from this clone. The venv is shared by every clone with
# the same spec, so re-point it when it was last installed from another clone (a few seconds).
# The check runs from / so that it sees what the venv has installed, not a ccd_ray/ folder in
# the current directory (a new venv sourced from the clone's root would otherwise never get it,
# and `python jobs/run_ccd.py`, whose sys.path starts at jobs/, would not find the package).
if [[ "$(cd / && python -c 'import ccd_ray, os; print(os.path.dirname(os.path.dirname(ccd_ray.__file__)))' 2>/dev/null)" != "$CCD_ROOT" ]]; then
  python -m pip install --quiet --no-deps --no-build-isolation -e "$CCD_ROOT" 2> >(grep -v "is ignored: it is neither" >&2)
fi
