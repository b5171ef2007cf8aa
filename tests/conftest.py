"Shared by the tests: `scripts/` importable, for the docs builder `scripts/build_docs.py`, developer tooling outside the package"
import sys
from pathlib import Path

_scripts = str(Path(__file__).resolve().parents[1]/'scripts')
if _scripts not in sys.path: sys.path.insert(0, _scripts)
