"The README's main job, `fastai-smith demo`, in a separate process as a user runs it"
import shutil, subprocess, sys
from pathlib import Path
import pandas as pd

def test_demo_writes_report(tmp_path):
    exe = shutil.which('fastai-smith', path=str(Path(sys.executable).parent)) 
    cmd = [exe] if exe else [sys.executable, '-m', 'fastai_smith']
    out = tmp_path/'report'
    r = subprocess.run(cmd + ['demo', '--epochs', '3', '--points', '12', '--adam-steps', '300', '--out', str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == f"Report written to {(out/'report.html').resolve()}"
    names = {p.name for p in out.iterdir()}
    assert {'report.html', 'report.md', 'losses.png', 'interpolation.png', 'balance.png', 'adam_digits.png', 'adam_question.png',
            'training.csv', 'interpolation.csv', 'balance.csv', 'adam_question_signals.csv'} <= names, names
    assert all((out/n).stat().st_size > 1000 for n in names if n.endswith('.png'))
    assert len(pd.read_csv(out/'interpolation.csv')) == 12
    assert len(pd.read_csv(out/'training.csv')) == 3
    html = (out/'report.html').read_text()
    assert '<img src="interpolation.png"' in html and 'Regularization balance' in html and 'The StackExchange Adam question' in html
