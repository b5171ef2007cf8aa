"Packaging checks across processes: metadata in one place, the wheel, the README's commands and CI agree"
import configparser, subprocess, sys, tomllib, zipfile, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_metadata_in_one_place():
    pp = tomllib.loads((ROOT/'pyproject.toml').read_text())
    assert set(pp) == {'build-system', 'tool'} and set(pp['tool']) == {'nbdev'}, "pyproject.toml holds only [build-system] and [tool.nbdev]"
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'setup.cfg')
    assert cfg['metadata']['name'] == 'fastai-smith'
    assert 'fastai' in cfg['options']['install_requires']
    assert pp['tool']['nbdev']['lib_path'] == 'fastai_smith'

def test_wheel_has_modules_and_entry_points(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(ROOT)],
                   check=True, cwd=tmp_path)
    whl, = tmp_path.glob('fastai_smith-*.whl')
    names = zipfile.ZipFile(whl).namelist()
    mods = {Path(n).name for n in names if n.startswith('fastai_smith/')}
    assert {p.name for p in (ROOT/'fastai_smith').glob('*.py')} <= mods
    ep = next(n for n in names if n.endswith('entry_points.txt'))
    text = zipfile.ZipFile(whl).read(ep).decode()
    assert 'fastai-smith = fastai_smith.cli:main' in text and 'fastai_smith._modidx:d' in text

def test_readme_commands_match_ci():
    readme = (ROOT/'README.md').read_text()
    assert 'bash scripts/demo.sh' in readme and 'bash scripts/test.sh' in readme
    assert 'bash scripts/test.sh' in (ROOT/'.ci'/'run').read_text()

def test_readme_is_index_notebook():
    from build_docs import readme_text # scripts/build_docs.py (tests/conftest.py puts scripts/ on the path)
    assert (ROOT/'README.md').read_text() == readme_text(ROOT/'nbs'/'index.ipynb'), \
        "README.md is out of step with nbs/index.ipynb: run `bash scripts/docs.sh --readme`"

_DEV_ONLY = ('nbdev', 'execnb', 'nbclient', 'nbconvert', 'latex2mathml', 'pytest', 'ipykernel')

def test_modules_import_without_dev_tools():
    "A plain `pip install` (no `dev` extra) imports every module: none needs nbdev or the other docs and test tools"
    code = f"""
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {_DEV_ONLY!r}: raise ModuleNotFoundError(f"No module named {{name!r}} (dev-only)", name=name)
sys.meta_path.insert(0, Block())
import fastai_smith
for m in pkgutil.iter_modules(fastai_smith.__path__):
    if not m.name.startswith('__'): importlib.import_module('fastai_smith.' + m.name) # not __main__: it runs the CLI
import fastai_smith.all
print('imported', sorted(m.name for m in pkgutil.iter_modules(fastai_smith.__path__)))
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'docs'" not in r.stdout and "'all'" in r.stdout, r.stdout

def test_cli_bad_option_exits_2():
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--epochs', '0'], capture_output=True, text=True)
    assert r.returncode == 2 and '--epochs' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--lr', 'abc'], capture_output=True, text=True)
    assert r.returncode == 2 and '--lr' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--adam-steps' in r.stdout

def test_no_private_cross_imports():
    "Modules share only public names: no module imports an underscore name from another module of the package"
    import ast
    from pathlib import Path
    pkg = Path(__file__).resolve().parents[1]/'fastai_smith'
    bad = [(f.name, n.module, a.name) for f in pkg.glob('*.py') for n in ast.walk(ast.parse(f.read_text()))
           if isinstance(n, ast.ImportFrom) and (n.level or (n.module or '').startswith('fastai_smith'))
           for a in n.names if a.name.startswith('_') and a.name != '__version__']
    assert bad == []
