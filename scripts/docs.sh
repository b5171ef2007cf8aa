#!/usr/bin/env bash
# The docs site (or, with --readme, README.md) from the notebooks, in the project's .venv: scripts/build_docs.py.
#   bash scripts/docs.sh                 # runs every notebook, writes _docs/
#   bash scripts/docs.sh --no-execute    # stored outputs; --execute '03_*,10_*' runs only some; --out DIR; --help
#   bash scripts/docs.sh --readme        # only README.md from nbs/index.ipynb
source "$(dirname "$0")/setup_env.sh"
nbdev-export
python scripts/build_docs.py "$@"
