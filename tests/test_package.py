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
    from fastai_smith.docs import readme_text
    assert (ROOT/'README.md').read_text() == readme_text(ROOT/'nbs'/'index.ipynb'), \
        "README.md is out of step with nbs/index.ipynb: run `python -m fastai_smith.docs --readme`"

def test_cli_bad_option_exits_2():
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--epochs', '0'], capture_output=True, text=True)
    assert r.returncode == 2 and '--epochs' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--lr', 'abc'], capture_output=True, text=True)
    assert r.returncode == 2 and '--lr' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'fastai_smith', 'demo', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--adam-steps' in r.stdout
