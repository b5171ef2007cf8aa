"smith_sweep on real digits Learners: same initial weights, ranking, readings, failures as rows, bad input"
import warnings
from functools import partial
import numpy as np, pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.optimizer import SGD
from fastai_smith.data import digits_learner, digits_tensors, tensor_dls
from fastai_smith.balance import RegularizationBalance
from fastai_smith.sweep import smith_sweep, expand_grid

class InitSpy(Callback):
    "Remembers the model's weights at the start of each fit"
    inits = []
    def before_fit(self): InitSpy.inits.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})

def test_same_initial_weights_and_ranking():
    InitSpy.inits = []
    # a factory whose models would start from different weights: the sweep loads the first run's into all
    seeds = iter([1, 2, 3])
    make = lambda: digits_learner('mlp', seed=next(seeds), cbs=[InitSpy()])
    res = smith_sweep(make, {'lr': [1e-1, 1e-2, 1e-4]}, epochs=1, progress=False)
    a, b, c = InitSpy.inits
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    df = res.df
    assert list(df['rank']) == [1, 2, 3] and df.valid_loss.is_monotonic_increasing
    assert df.same_init.all() and set(df.status) == {'ok'}
    assert {'reading', 'reading_epoch', 'train_loss', 'valid_loss', 'best_valid_loss', 'accuracy', 'time_s'} <= set(df.columns)
    assert df.loc[df.lr == 1e-4, 'reading'].item() in ('underfitting', 'healthy')
    fig = res.plot(train=True)
    assert len(fig.axes[0].get_legend().get_texts()) == 3

def test_rank_by_metric_descending():
    res = smith_sweep(partial(digits_learner, 'mlp'), {'lr': [1e-4, 1e-2]}, epochs=1, rank_by='accuracy', progress=False)
    assert res.df.accuracy.is_monotonic_decreasing and res.best.lr == 1e-2
    with pytest.raises(ValueError, match='`rank_by`'):
        smith_sweep(partial(digits_learner, 'mlp'), {'lr': [1e-2]}, epochs=1, rank_by='f1', progress=False)

def test_factory_that_raises_is_a_row():
    def make(arch): return digits_learner(arch)
    res = smith_sweep(make, {'arch': ['vgg', 'mlp']}, epochs=1, lr=1e-2, progress=False)
    df = res.df.set_index('arch')
    assert df.status['mlp'] == 'ok' and df.status['vgg'] == 'failed'
    assert 'make_learner raised ValueError' in df.error['vgg'] and np.isnan(df['rank']['vgg'])
    assert res.df.run.iloc[-1] == 'arch=vgg'  # failed runs rank last
    def not_a_learner(): return 'learner'
    res = smith_sweep(not_a_learner, {'lr': [1e-2]}, epochs=1, progress=False)
    assert res.df.status[0] == 'failed' and 'must return a fastai `Learner`' in res.df.error[0]
    assert np.isnan(res.df.valid_loss[0]) and res.plot() is not None

class Boom(Callback):
    def after_epoch(self):
        if self.epoch == 1: raise RuntimeError('disk full')

def test_fit_that_raises_is_a_row_with_its_partial_curve():
    res = smith_sweep(lambda: digits_learner('mlp', cbs=[Boom()]), {'lr': [1e-2]}, epochs=3, progress=False)
    r = res.df.iloc[0]
    assert r.status == 'failed' and 'fit_one_cycle raised RuntimeError' in r.error and 'disk full' in r.error
    assert len(res.curves[r.run]) == 2 and np.isfinite(r.valid_loss)

def deep_linear_learner():
    "Three linear layers without activation or BatchNorm, SGD with momentum: goes nan on digits at lr 0.3"
    learn = digits_learner('mlp', opt_func=partial(SGD, mom=0.9))
    learn.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10))
    return learn

def test_diverged_run_is_a_row():
    "A run whose loss goes nan is a row that says so; the sweep goes on and ranks it last"
    res = smith_sweep(deep_linear_learner, {'lr': [0.3, 0.01]}, epochs=2, fit='fit', progress=False)
    df = res.df.set_index('lr')
    d = res.balances['lr=0.3'].df
    first_bad = int(d.epoch[~np.isfinite(d.train_loss)].iloc[0] - 1e-9)   # fastai's 0-based epoch of the first non-finite step
    assert df.status[0.3] == 'diverged' and df.reading[0.3] == 'diverged' and df.reading_epoch[0.3] <= first_bad
    assert 'nan' in df.evidence[0.3] or 'inf' in df.evidence[0.3]
    assert df.status[0.01] == 'ok' and df['rank'][0.01] == 1 and np.isnan(df['rank'][0.3])
    assert res.df.run.iloc[-1] == 'lr=0.3'
    fig = res.plot()
    assert any(l.get_marker() == 'x' for l in fig.axes[0].get_lines())

def test_learner_without_validation_data():
    xt, yt, xv, yv = digits_tensors()
    empty = lambda: digits_learner('mlp', dls=tensor_dls(xt, yt, xv[:0], yv[:0]))
    res = smith_sweep(empty, {'lr': [1e-2]}, epochs=1, progress=False)
    assert res.df.status[0] == 'no validation data' and res.df.reading[0] == 'no validation data'
    no_valid = lambda: digits_learner('mlp', dls=DataLoaders(tensor_dls(xt, yt, xv, yv).train))
    res = smith_sweep(no_valid, {'lr': [1e-2]}, epochs=1, progress=False)
    assert res.df.status[0] == 'failed' and 'no validation DataLoader' in res.df.error[0]

@pytest.mark.parametrize('grid,err,match', [
    ({}, ValueError, '`grid` is empty'), ([], ValueError, '`grid` is empty'), ({'wd': []}, ValueError, "`grid\\['wd'\\]` is empty"),
    ({'lr': [1e-2, -1e-3]}, ValueError, '`lr`'), ({'lr': ['fast']}, ValueError, '`lr`'), ({'wd': [-1e-4]}, ValueError, '`wd`'),
    ({'bs': [0]}, ValueError, '`bs`'), ({'moms': [(0.95, 1.5)]}, ValueError, '`moms`'), ({'moms': (0.95, 0.85)}, ValueError, '`moms`'),
    ({'wd': 1e-4}, TypeError, 'must be a list'), ([{'wd': 0}, 3], TypeError, 'settings dicts'), ('lr', TypeError, '`grid` must be'),
    ({'dropout': [0.5]}, ValueError, "'dropout'"),
])
def test_bad_grids(grid, err, match):
    def make(bs=64): return digits_learner('mlp', bs=bs)
    with pytest.raises(err, match=match): smith_sweep(make, grid, epochs=1, progress=False)

def test_bad_arguments():
    ok = {'lr': [1e-2]}
    with pytest.raises(TypeError, match='`make_learner`'): smith_sweep(None, ok)
    with pytest.raises(ValueError, match='`epochs`'): smith_sweep(digits_learner, ok, epochs=0)
    with pytest.raises(ValueError, match='`fit`'): smith_sweep(digits_learner, ok, fit='train')
    with pytest.raises(ValueError, match='`moms` is not a parameter'): smith_sweep(digits_learner, ok, fit='fit', moms=(0.9, 0.8))
    with pytest.raises(ValueError, match='`every`'): smith_sweep(digits_learner, ok, balance={'every': -1})

def test_interrupted_sweep_keeps_its_runs():
    calls = iter(range(10))
    def make():
        if next(calls) == 1: raise KeyboardInterrupt
        return digits_learner('mlp')
    with pytest.warns(UserWarning, match='interrupted after 1 of 3'):
        res = smith_sweep(make, {'lr': [1e-2, 1e-3, 1e-4]}, epochs=1, progress=False)
    assert len(res.df) == 1 and res.df.status[0] == 'ok'
