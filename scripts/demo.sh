#!/usr/bin/env bash
# The main job: set up .venv, train the digits reference with all callbacks and write a report folder.
# Extra arguments go to `fastai-smith demo` (see `fastai-smith demo --help`).
source "$(dirname "$0")/setup_env.sh"
fastai-smith demo "$@"
