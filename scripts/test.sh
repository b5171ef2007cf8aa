#!/usr/bin/env bash
# All tests: set up .venv, check the module is what the notebooks export, run every notebook (nbdev-test) and pytest.
source "$(dirname "$0")/setup_env.sh"
# headless Chromium for the docs test (Debian's package); needs root or sudo, else that test says it is skipped
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: the docs browser test will be skipped"
fi
nbdev-export
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- fastai_smith; then
  echo "nbdev-export changed fastai_smith/: the module is not what the notebooks export"; git diff --stat -- fastai_smith; exit 1
fi
nbdev-test --n-workers 2 --timing
pytest -q tests "$@"
