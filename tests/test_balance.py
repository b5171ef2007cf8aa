"RegularizationBalance on real digits Learners: records, BatchNorm detection, angles, readings, side runs, export, bad input"
import math, warnings
from functools import partial
import numpy as np, pytest, torch
from torch import nn
from fastai.callback.schedule import *  # noqa: F401
from fastai.learner import load_learner
from fastai.optimizer import SGD, Adam, OptimWrapper
from fastai.callback.core import Callback
from fastai_smith.data import digits_learner, digits_tensors, tensor_dls
from fastai_smith.balance import (RegularizationBalance, ReadingRules, equilibrium_angle, optim_kind, OptimKind, smith_readings)
from fastai_smith.optim_view import OptimView

def fit(arch='resnet', epochs=1, lr=1e-2, cbs=(), fit='fit_one_cycle', **kw):
    fkw = {k: kw.pop(k) for k in ('wd', 'moms') if k in kw}
    learn = digits_learner(arch, **kw)
    with learn.no_bar(), learn.no_logging(): getattr(learn, fit)(epochs, lr, cbs=list(cbs), **fkw)
    return learn

@pytest.fixture(scope='module')
def sgd_run():
    "One epoch of SGD with momentum and L2 weight decay on the digits ResNet, sampled every step"
    bal = RegularizationBalance(every=1)
    learn = fit(cbs=[bal], opt_func=partial(SGD, mom=0.9, decouple_wd=False), wd=1e-3, lr=0.1)
    return learn, bal

def test_records_schedule_batch_size_and_noise(sgd_run):
    learn, bal = sgd_run
    d = bal.df
    assert len(d) == len(learn.dls.train) == len(learn.recorder.lrs)
    np.testing.assert_allclose(d.lr, learn.recorder.lrs)
    np.testing.assert_allclose(d.mom, learn.recorder.hps['mom'])
    assert (d.wd == 1e-3).all() and (d.bs == 64).all() and (d.n == len(learn.dls.train_ds)).all()
    np.testing.assert_allclose(d.noise_scale, d.lr*d.n/(d.bs*(1-d.mom)))
    assert np.isfinite(d.train_loss).all()

def test_bn_followed_weights_and_effective_lr(sgd_run):
    learn, bal = sgd_run
    ld = bal.layer_df
    bn = ld[ld.bn != '']
    assert set(bn.layer) == {'stem.0', 'body.0.conv1', 'body.0.conv2', 'body.1.conv1', 'body.1.conv2', 'body.1.shortcut.0',
                             'body.2.conv1', 'body.2.conv2', 'body.2.shortcut.0'}
    assert (ld[ld.layer == 'head.2'].bn == '').all() and ld[ld.layer == 'head.2'].angle.isna().all()
    lr = bal.df.lr[bn.iter].values
    np.testing.assert_allclose(bn.eff_lr, lr/bn.norm**2, rtol=1e-6)      # SGD: lr/||w||^2
    np.testing.assert_allclose(bn.predicted, np.sqrt(2*lr*1e-3/(1+bal.df.mom[bn.iter].values)), rtol=1e-6)
    # one epoch of one-cycle is far from equilibrium, and the diagnosis says why
    assert (bn.equilibrium == False).all() and bn.why.str.contains('steps of the').all()
    w = dict(learn.model.named_parameters())['body.0.conv1.weight']
    last = bn[bn.layer == 'body.0.conv1'].iloc[-1]
    assert abs(last.norm - w.norm().item()) / w.norm().item() < 0.05

class AngleSpy(Callback):
    "Measures the angle of one weight across each step with plain torch, as a reference"
    order = 100
    def __init__(self, name): self.pname, self.angles = name, []
    def before_step(self): self.w0 = dict(self.learn.model.named_parameters())[self.pname].detach().clone()
    def after_step(self):
        w1 = dict(self.learn.model.named_parameters())[self.pname].detach()
        cos = (w1.flatten() @ self.w0.flatten()) / (w1.norm()*self.w0.norm())
        self.angles.append(math.acos(min(1., cos.double().item())))

def test_measured_angle_matches_reference():
    spy, bal = AngleSpy('body.1.conv2.weight'), RegularizationBalance(every=3)
    fit(cbs=[spy, bal], opt_func=partial(SGD, mom=0.9), wd=1e-2, lr=0.1, fit='fit')
    ld = bal.layer_df.query("layer == 'body.1.conv2'")
    assert list(ld.iter) == list(range(0, len(spy.angles), 3))
    np.testing.assert_allclose(ld.angle, np.array(spy.angles)[ld.iter], rtol=2e-2, atol=1e-5)

def test_optimizer_kinds_and_predictions():
    mk = lambda opt: OptimView((lambda l: (l.create_opt(), l.opt)[1])(digits_learner('mlp', opt_func=opt)))
    assert optim_kind(mk(Adam)) == OptimKind('fastai Adam', 'adam', True, True)
    assert optim_kind(mk(partial(SGD, mom=0.9))) == OptimKind('fastai SGD', 'sgd', False, True)
    assert optim_kind(mk(partial(SGD, mom=0.9, decouple_wd=False))).decoupled is False
    assert optim_kind(mk(partial(OptimWrapper, opt=torch.optim.AdamW))) == OptimKind('torch AdamW', 'adam', True, True)
    assert optim_kind(mk(partial(OptimWrapper, opt=torch.optim.Adam))).decoupled is False
    assert optim_kind(mk(partial(OptimWrapper, opt=torch.optim.SGD))) == OptimKind('torch SGD', 'sgd', False, False)
    # torch Adam with L2: the equilibrium has no prediction, and the callback says so instead of inventing one
    bal = RegularizationBalance(every=5)
    fit(cbs=[bal], opt_func=partial(OptimWrapper, opt=torch.optim.Adam), wd=1e-2, lr=1e-3, fit='fit')
    bn = bal.layer_df.query("bn != ''")
    assert bn.predicted.isna().all() and bn.why.str.contains('no equilibrium prediction').all()
    assert bal.df.noise_scale.iloc[0] == pytest.approx(1e-3*math.sqrt(bal.df.n[0]/64))

def test_inactive_during_lr_find_and_get_preds(sgd_run):
    learn, bal = sgd_run
    learn.add_cb(bal)
    try:
        before = (len(bal.df), len(bal.readings), len(bal.layer_df))
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            learn.get_preds(); learn.validate(); learn.lr_find(num_it=10, show_plot=False)
        assert (len(bal.df), len(bal.readings), len(bal.layer_df)) == before
    finally: learn.remove_cb(bal)

def test_export_with_callback_attached(tmp_path):
    bal = RegularizationBalance(every=1)
    learn = (digits_learner('resnet', cbs=[bal], path=tmp_path))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    learn.export('with.pkl')
    learn.remove_cb(bal); learn.export('without.pkl')
    size = lambda n: (tmp_path/n).stat().st_size
    assert size('with.pkl') < size('without.pkl') + 20_000, (size('with.pkl'), size('without.pkl'))
    assert len(bal.df) == 22  # export does not wipe the results of the live callback
    loaded = load_learner(tmp_path/'with.pkl')
    cb = next(c for c in loaded.cbs if isinstance(c, RegularizationBalance))
    assert len(cb.df) == 0 and cb.every == 1

def test_no_host_sync_on_every_step(monkeypatch):
    "The callback adds a handful of host syncs per epoch, not one per step"
    counts = {'n': 0}
    for name in ('item', 'tolist', 'cpu', '__float__', 'numpy'):
        orig = getattr(torch.Tensor, name)
        def wrapped(self, *a, _o=orig, **k): counts['n'] += 1; return _o(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    def syncs(cbs):
        counts['n'] = 0; fit('resnet', epochs=2, cbs=cbs); return counts['n']
    bare, with_cb = syncs([]), syncs([RegularizationBalance(every=1)])
    steps = 2*22
    assert with_cb - bare < steps/2, (bare, with_cb)

def test_valid_every_adds_check_points_within_epochs():
    bal = RegularizationBalance(valid_every=5)
    learn = fit('mlp', epochs=2, cbs=[bal])
    rd = bal.readings
    assert list(rd['at'].round(3)) == [round(x, 3) for x in [5/22, 10/22, 15/22, 20/22, 1, 1+5/22, 1+10/22, 1+15/22, 1+20/22, 2]]
    assert rd.valid_loss.iloc[-1] == pytest.approx(learn.recorder.values[-1][1], rel=1e-5)
    assert rd.valid_loss.notna().all() and set(rd.reading) <= {'healthy', 'underfitting', 'overfitting'}

def deep_linear():
    "Three linear layers without activation or BatchNorm: SGD with momentum at lr 0.3 overflows to nan on digits"
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10))

def test_divergence_is_read_from_a_real_nan():
    "The loss goes non-finite: the reading says diverged, with the epoch and the advice"
    bal = RegularizationBalance()
    learn = digits_learner('mlp', opt_func=partial(SGD, mom=0.9))
    torch.manual_seed(42); learn.model = deep_linear()
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 0.3, cbs=[bal])
    assert not np.isfinite(bal.df.train_loss).all()
    s = bal.verdict
    first_nan = int(bal.df.epoch[~np.isfinite(bal.df.train_loss)].iloc[0] - 1e-9)  # fastai's 0-based epoch of the first nan step
    assert s['reading'] == 'diverged' and s['epoch'] <= first_nan and s['direction'] == 'lower lr'
    assert bal.readings.evidence.str.contains('nan|inf').any()   # a non-finite loss, train or valid, whichever comes first
    assert 'lower the max learning rate' in s['advice']
    assert 'DIVERGED' in bal.diagnosis()

def test_no_validation_data():
    xt, yt, xv, yv = digits_tensors()
    bal = RegularizationBalance()
    learn = digits_learner('mlp', dls=tensor_dls(xt, yt, xv[:0], yv[:0]))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2, cbs=[bal])
    assert bal.verdict['reading'] == 'no validation data' and 'valid' in bal.verdict['advice']
    from fastai.data.core import DataLoaders
    learn = digits_learner('mlp', dls=DataLoaders(learn.dls.train))
    with pytest.raises(ValueError, match='no validation DataLoader'): learn.fit(1, cbs=[RegularizationBalance()])

def test_training_that_blows_up_without_nan_reads_diverged():
    "SGD at lr 3 on the ReLU MLP: the loss jumps far above its start and the weights blow up; a rise, so it reads diverged"
    bal = RegularizationBalance()
    fit('mlp', epochs=2, cbs=[bal], opt_func=partial(SGD, mom=0.9), lr=3., fit='fit')
    s = bal.verdict
    assert s['reading'] == 'diverged' and s['direction'] == 'lower lr', s

def small_digits_mlp():
    "A 64-512-512-10 MLP on 200 digits images, batch size 32, fastai Adam: a typical 'is my learning rate far too low?' report"
    xt, yt, xv, yv = digits_tensors()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    return Learner(tensor_dls(xt[:200], yt[:200], xv, yv, bs=32), model, loss_func=CrossEntropyLossFlat(), opt_func=Adam)

def test_a_too_low_learning_rate_reads_underfitting_not_diverged():
    "lr 1e-4, 100x below a good one: a flat start is no divergence, and the slow fall is underfitting: raise the lr"
    bal = RegularizationBalance()
    learn = small_digits_mlp()
    with learn.no_bar(), learn.no_logging(): learn.fit(30, 1e-4, wd=0., cbs=[bal])
    rd = bal.readings
    assert 'diverged' not in set(rd.reading), rd[['epoch', 'reading', 'evidence']]
    s = bal.verdict
    assert s['reading'] == 'underfitting' and s['direction'] == 'raise lr' and 'raise the max learning rate' in s['advice'], s
    # the same model at a 100x learning rate fits far better: the construction holds
    ref = small_digits_mlp()
    with ref.no_bar(), ref.no_logging(): ref.fit(30, 1e-2, wd=0.)
    assert ref.recorder.values[-1][0] < 0.3*learn.recorder.values[-1][0]
    # fastai's 0-based epochs in what the user sees; the train loss is named for what it is
    assert list(rd.epoch) == list(range(30))
    assert 'mean train loss' in bal.diagnosis() and 'not the smoothed value' in bal.diagnosis()

def test_smith_readings_rules():
    r = [o.reading for o in smith_readings([1., .6, .5, .4], [.7, .5, .6, .45])]
    assert r == ['underfitting', 'underfitting', 'overfitting', 'underfitting']
    assert smith_readings([1., .6], [.7, float('nan')])[1].reading == 'diverged'
    assert smith_readings([1., .6, .5, .45], [.2, .1, .19, .45])[3].reading == 'diverged'  # jumped 2.4x, above its first value
    assert smith_readings([1., .6, .5, .45], [.2, .1, .15, .22])[3].reading == 'overfitting'  # crept up, however far: overfitting
    over = smith_readings([1., .6, .5, .45], [.5, .1, .19, .35])[3]                       # 3.5x its best, below its first value
    assert over.reading == 'overfitting' and over.since == 2 and over.direction == 'add regularization'
    assert smith_readings([1., .6, .5], [.5, .1, .55])[2].reading == 'diverged'  # more than doubled in one check point, above its first value
    assert smith_readings([2.5, 2.5, 2.5], [2.5, 2.5, 2.5], start=2.5)[-1].reading == 'underfitting'  # flat start: not diverged
    assert smith_readings([3.2, 2.], [2., 1.8], start=2.5)[-1].reading == 'diverged'  # climbed above its start

@pytest.mark.parametrize('kw,name', [(dict(every=0), 'every'), (dict(every=2.5), 'every'), (dict(valid_every=0), 'valid_every'),
                                     (dict(near_zero=-1), 'near_zero'), (dict(sched_tol=0.5), 'sched_tol')])
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=f'`{name}`'): RegularizationBalance(**kw)

@pytest.mark.parametrize('kw,name', [(dict(explode=1), 'explode'), (dict(gap=-0.1), 'gap'), (dict(shrink=1.5), 'shrink'), (dict(fall=float('nan')), 'fall')])
def test_bad_rules(kw, name):
    with pytest.raises(ValueError, match=f'`{name}`'): ReadingRules(**kw)
    with pytest.raises(TypeError, match='`rules`'): RegularizationBalance(rules=dict(kw))

def test_plot_and_diagnosis(sgd_run):
    _, bal = sgd_run
    fig = bal.plot()
    assert len(fig.axes) == 7 and fig.axes[5].get_title().startswith('losses')
    text = bal.diagnosis()
    assert 'fastai SGD (L2 weight decay in the gradient)' in text and 'Reading:' in text and 'Advice:' in text
    assert 'body.0.conv1 -> body.0.bn1' in text
    assert 'nothing recorded' in RegularizationBalance().diagnosis()

def test_the_reading_is_computed_once_per_state_of_the_records():
    bal = RegularizationBalance()
    learn = digits_learner('mlp', bs=128)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=bal)
    first = bal._read()
    assert bal._read() is first and bal.verdict == bal.reading   # cached: reading the results twice recomputes nothing
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=bal)   # same lengths, new records
    assert bal._read() is not first and len(bal.readings) == 2
