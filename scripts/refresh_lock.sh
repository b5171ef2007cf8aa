#!/usr/bin/env bash
# Refresh constraints.txt: install the newest versions the registry serves into .venv-lock, run all tests there,
# and only if they pass, write that environment's exact versions to constraints.txt (review and commit the diff).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-lock
VENV=.venv-lock LOCK= bash scripts/test.sh "$@"
{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -iv '^-e\|^fastai[-_]smith'; } > constraints.txt.new
mv constraints.txt.new constraints.txt
git --no-pager diff --stat -- constraints.txt || true
