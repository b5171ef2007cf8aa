# Sourced by scripts/demo.sh and scripts/test.sh: a virtual environment with the package and its dev tools,
# installed from the locked versions in constraints.txt so every machine and CI test the same stack.
#   VENV=dir   where the environment lives (default .venv)
#   LOCK=file  constraints file (default constraints.txt); LOCK= (empty) installs the newest versions the registry serves
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=${LOCK-constraints.txt}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.installed-$(cat setup.cfg ${LOCK:+"$LOCK"} | cksum | cut -d' ' -f1)"
if [ ! -e "$stamp" ] || ! "$VENV/bin/python" -c "import fastai_smith, fastai, nbdev, pytest" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q ${LOCK:+-c "$LOCK"} -e ".[dev]"
  rm -f "$VENV"/.installed-*; touch "$stamp"
fi
VENV=$(cd "$VENV" && pwd)
export PATH="$VENV/bin:$PATH"
