#!/usr/bin/env bash
# Non-blocking check: does the package import and pass the fast tests (every notebook) with the newest versions
# the registry serves? Installs into .venv-newest without the lock, reports the versions that differ from
# constraints.txt, and exits with the tests' status (CI's blocking job is scripts/test.sh on the lock).
set -uo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-newest   # a fresh environment each time: the newest versions of today, not of the last run
export VENV=.venv-newest LOCK=
source scripts/setup_env.sh
set +e
echo "== versions that differ from constraints.txt"
.venv-newest/bin/python -m pip freeze --exclude-editable | grep -iv '^-e\|^fastai[-_]smith' | sort > .venv-newest/freeze.txt
grep -v '^#' constraints.txt | sort | comm -13 - .venv-newest/freeze.txt | sed 's/^/  newest: /'
python -c "import fastai_smith.all" && nbdev-test --n-workers 2
rc=$?
echo "== newest versions: $([ $rc = 0 ] && echo PASS || echo FAIL)"
exit $rc
