"""`Learner.interpolate` and `Learner.loss_plane` on real digits learners: numbers against fastai's own `validate`,
BatchNorm statistics against independent references, restoration of the model, non-finite losses and bad input."""
import copy, itertools, warnings
import numpy as np, pytest, torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai.callback.core import Callback
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle)
from fastai.data.core import Datasets
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.metrics import AvgMetric, accuracy
from fastai.torch_core import TensorImage, TensorCategory
from fasttransform import Transform
from fastai_smith.data import digits_learner, digits_tensors, digits_mlp, tensor_dls, DigitsResNet
from fastai_smith.interpolation import weights_of, eval_batches, LossLine, LossPlane
from fastai_smith.evaluator import Evaluator

N_TRAIN, N_VALID = 640, 256  # a part of the digits keeps the tests fast; the notebooks use all of it

def small_dls(bs=64):
    x, y, xv, yv = digits_tensors()
    return tensor_dls(x[:N_TRAIN], y[:N_TRAIN], xv[:N_VALID], yv[:N_VALID], bs=bs)

def small_learner(arch='resnet', seed=42, **kwargs): return digits_learner(arch, seed=seed, dls=small_dls(), **kwargs)

def state(model): return {k: v.clone() for k, v in model.state_dict().items()}

@pytest.fixture(scope='module')
def trained():
    "A learner after 2 epochs, its weights after epoch 0 and 1; `WeightSnapshots` kept them too when it exists"
    learn = small_learner()
    try:
        from fastai_smith.snapshots import WeightSnapshots
        snaps = [WeightSnapshots(epochs=[0, 1], dtype=torch.float16)]
    except ImportError: snaps = []
    class Keep(Callback):
        order = 100
        def after_epoch(self): learn.kept[self.epoch] = state(self.model)
    learn.kept = {}
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=[Keep()] + snaps)
    learn.snaps = snaps[0] if snaps else None
    return learn, learn.kept[0], learn.kept[1]

def ordered_train_dl(learn): return learn.dls.train.new(shuffle=False, drop_last=False)

def validate_loop(learn, sd):
    """The body of the loop of `learn.validate()` in the notebook "Reproducing Leslie N. Smith's papers using fastai",
    with the learner's weights put back afterwards"""
    keep = copy.deepcopy(learn.model.state_dict())
    try:
        learn.model.load_state_dict(sd)
        with learn.no_bar(): return learn.validate(), learn.validate(dl=ordered_train_dl(learn))
    finally: learn.model.load_state_dict(keep)

def lerp_state(a, b, al): return {k: ((1-al)*a[k] + al*b[k]) if a[k].is_floating_point() else a[k] for k in a}

def model_snapshot(model):
    return copy.deepcopy(model.state_dict()), [m.training for m in model.modules()], \
           [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)]

def assert_same_model(model, snap):
    sd, modes, moms = snap
    for k, v in model.state_dict().items(): assert torch.equal(v, sd[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)] == moms

# --- the numbers -------------------------------------------------------------------------------------------------

def test_ends_equal_validate(trained):
    "The notebook's check: with interpolated statistics, alpha 0 and 1 give `learn.validate()`'s numbers to 1e-5"
    learn, a, b = trained
    df = learn.interpolate(a, b, alphas=[0, 1], progress=False).df
    for i, sd in enumerate((a, b)):
        v, t = validate_loop(learn, sd)
        assert abs(df.valid_loss[i] - v[0]) < 1e-5 and abs(df.train_loss[i] - t[0]) < 1e-5
        assert abs(df.valid_accuracy[i] - float(v[1])) < 1e-6 and abs(df.train_accuracy[i] - float(t[1])) < 1e-6

def test_matches_validate_loop_along_the_line(trained):
    "Between and beyond the ends, the numbers are the validate loop's (Goodfellow convention: alpha 0 is `a`)"
    learn, a, b = trained
    alphas = [-0.5, 0.3, 1.25]
    df = learn.interpolate(a, b, alphas=alphas, progress=False).df
    for i, al in enumerate(alphas):
        v, t = validate_loop(learn, lerp_state(a, b, al))
        np.testing.assert_allclose([df.valid_loss[i], df.train_loss[i]], [v[0], t[0]], rtol=1e-5, atol=1e-6)

def test_unfolded_path_gives_same_numbers(trained):
    "The BatchNorm folding and channels-last speed-ups change nothing beyond float rounding"
    learn, a, b = trained
    fast, plain = Evaluator(learn), Evaluator(learn, fold_bn=False, channels_last=False)
    assert fast.gm is not None and plain.gm is None
    with torch.inference_mode():
        st = lerp_state(a, b, 0.7)
        r1, r2 = fast({k: v.clone() for k, v in st.items()}), plain({k: v.clone() for k, v in st.items()})
    for k in r1: assert abs(r1[k] - r2[k]) < 1e-5, k

def test_weights_from_anything(trained):
    "None/'current', a model, a duck-typed snapshot and a plain state dict name the same weights"
    learn, a, b = trained
    class Snap:  # anything with `state_dict()` that is not a module, e.g. `fastai_smith.snapshots.Snapshot`
        epoch = 1
        def state_dict(self): return b
    learn.model.load_state_dict(b)
    ref = learn.interpolate(a, b, alphas=[0.5], n_batches=1, progress=False).df.valid_loss[0]
    for other in (None, 'current', learn.model, Snap()):
        line = learn.interpolate(a, other, alphas=[0.5], n_batches=1, progress=False)
        assert abs(line.df.valid_loss[0] - ref) < 1e-6
    assert line.labels == ('a', 'epoch 1')

def test_with_weight_snapshots(trained):
    "Real `WeightSnapshots` snapshots, stored in half precision, work as ends"
    learn, a, b = trained
    if learn.snaps is None: pytest.skip('fastai_smith.snapshots is not there')
    snaps = learn.snaps
    line = learn.interpolate(snaps[0], snaps[1], alphas=[0, 1], progress=False)
    assert line.labels == ('epoch 0', 'epoch 1')
    v, _ = validate_loop(learn, snaps[1].state_dict())
    assert abs(line.df.valid_loss[1] - v[0]) < 1e-5

def test_n_batches(trained):
    "Only the first n batches of each set, in order: equal to validating on those rows"
    learn, a, b = trained
    line = learn.interpolate(a, b, alphas=[0.], n_batches=2, progress=False)
    assert line.n_rows == {'train': 2*64, 'valid': 2*128 if N_VALID >= 256 else N_VALID}
    x, y, xv, yv = digits_tensors()
    sub = lambda xs, ys, n, bs: DataLoader(torch.utils.data.TensorDataset(xs[:n], ys[:n]), bs=bs, shuffle=False)
    keep = copy.deepcopy(learn.model.state_dict())
    learn.model.load_state_dict(a)
    try:
        with learn.no_bar():
            t, v = learn.validate(dl=sub(x, y, 128, 64)), learn.validate(dl=sub(xv, yv, 256, 128))
    finally: learn.model.load_state_dict(keep)
    assert abs(line.df.train_loss[0] - t[0]) < 1e-5 and abs(line.df.valid_loss[0] - v[0]) < 1e-5

# --- BatchNorm recomputation ---------------------------------------------------------------------------------

def layerwise_stats(model, x):
    "Reference: each BatchNorm's mean and unbiased variance over `x`, one layer at a time, earlier layers already set"
    m = copy.deepcopy(model).eval()
    for bn in [o for o in m.modules() if isinstance(o, _BatchNorm)]:
        got = {}
        h = bn.register_forward_pre_hook(lambda mod, args: got.update(x=args[0]))
        with torch.no_grad(): m(x)
        h.remove()
        var, mean = torch.var_mean(got['x'], dim=[0, 2, 3], correction=1)
        bn.running_mean.copy_(mean); bn.running_var.copy_(var)
    return m

def validate_model(learn, model):
    l2 = Learner(learn.dls, model, loss_func=learn.loss_func, metrics=accuracy)
    with l2.no_bar(): return l2.validate(), l2.validate(dl=ordered_train_dl(learn))

def test_recompute_exact_population_statistics(trained):
    "bn='recompute' with at most `stats_rows` training rows: exact training-set statistics, checked layer by layer"
    learn, a, b = trained
    st = lerp_state(a, b, 1.6)
    model = copy.deepcopy(learn.model); model.load_state_dict(st)
    x = torch.cat([bt[0] for bt in eval_batches(learn, 0)])
    v, t = validate_model(learn, layerwise_stats(model, x))
    df = learn.interpolate(a, b, alphas=[1.6], bn='recompute', progress=False).df
    np.testing.assert_allclose([df.valid_loss[0], df.train_loss[0]], [v[0], t[0]], rtol=1e-5, atol=1e-6)
    assert abs(df.valid_accuracy[0] - float(v[1])) < 1e-6

def test_recompute_in_chunks_matches_update_bn(trained):
    "With more training rows than `stats_rows`: torch's `update_bn` over chunks of `bs`, then evaluation"
    learn, a, b = trained
    st = lerp_state(a, b, 0.4)
    model = copy.deepcopy(learn.model); model.load_state_dict(st)
    x = torch.cat([bt[0] for bt in eval_batches(learn, 0)])
    torch.optim.swa_utils.update_bn([(c,) for c in x.split(256)], model)
    v, t = validate_model(learn, model)
    df = learn.interpolate(a, b, alphas=[0.4], bn='recompute', bs=256, stats_rows=256, progress=False).df
    np.testing.assert_allclose([df.valid_loss[0], df.train_loss[0]], [v[0], t[0]], rtol=1e-5, atol=1e-6)

def test_recompute_without_batchnorm_is_interpolation():
    learn = small_learner('mlp')
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    init = small_learner('mlp', seed=3).model
    r = [learn.interpolate(init, None, alphas=[0.2, 1.3], bn=bn, progress=False).df for bn in ('interpolate', 'recompute')]
    np.testing.assert_allclose(r[0].valid_loss, r[1].valid_loss, rtol=1e-6)

# --- the learner is left as it was ---------------------------------------------------------------------------

class FailingMetric(AvgMetric):
    "Raises on its `n`-th call, to interrupt `interpolate` mid-way"
    def __init__(self, n):
        super().__init__(accuracy); self.calls, self.n = 0, n
    def accumulate(self, learn):
        self.calls += 1
        if self.calls >= self.n: raise RuntimeError('metric failed')
        super().accumulate(learn)

@pytest.mark.parametrize('bn,stats_rows,train_mode', [('interpolate', 4096, True), ('recompute', 4096, False), ('recompute', 64, True)])
def test_restored_also_on_error(trained, bn, stats_rows, train_mode):
    learn, a, b = trained
    learn.model.train(train_mode)
    learn.model.body[0].bn1.train(not train_mode)  # a mixed state must come back as it was
    snap = model_snapshot(learn.model)
    learn.interpolate(a, b, alphas=[0, 2.], bn=bn, bs=64, stats_rows=stats_rows, n_batches=2, progress=False)
    assert_same_model(learn.model, snap)
    with pytest.raises(RuntimeError, match='metric failed'):
        learn.interpolate(a, b, alphas=np.linspace(0, 1, 5), bn=bn, bs=64, stats_rows=stats_rows, n_batches=2, metrics=[FailingMetric(4)], progress=False)
    assert_same_model(learn.model, snap)
    learn.model.eval()

def test_recorder_metrics_untouched(trained):
    learn, a, b = trained
    before = learn.metrics[0].value
    learn.interpolate(a, b, alphas=[0.5], n_batches=1, progress=False)
    assert learn.metrics[0].value == before

# --- the training set without augmentation --------------------------------------------------------------------

class Noise(Transform):
    "Training-only augmentation"
    split_idx = 0
    def encodes(self, x:TensorImage): return x + torch.randn_like(x)

def test_train_set_read_without_augmentation_shuffle_or_drop():
    x, y, xv, yv = digits_tensors()
    x, y, xv, yv = x[:N_TRAIN+3], y[:N_TRAIN+3], xv[:N_VALID], yv[:N_VALID]  # 3 rows in a last, incomplete batch
    xs, ys = torch.cat([x, xv]), torch.cat([y, yv])
    splits = [list(range(len(x))), list(range(len(x), len(xs)))]
    dsets = Datasets(range(len(xs)), tfms=[[lambda i: TensorImage(xs[i])], [lambda i: TensorCategory(ys[i])]], splits=splits)
    dls = dsets.dataloaders(bs=64, after_batch=[Noise()], num_workers=0)
    torch.manual_seed(0)
    learn = Learner(dls, DigitsResNet(), loss_func=nn.CrossEntropyLoss(), metrics=accuracy)
    xb0 = dls.train.new(shuffle=False).one_batch()[0]
    assert not torch.allclose(xb0, x[:64])  # the training loader does augment
    got = eval_batches(learn, 0)
    assert torch.equal(torch.cat([o[0] for o in got]), x) and torch.equal(torch.cat([o[1] for o in got]), y)
    other = DigitsResNet()
    r1, r2 = [learn.interpolate(None, other, alphas=[0.5], metrics=False, progress=False).df for _ in range(2)]
    assert r1.train_loss[0] == r2.train_loss[0]
    assert dls.train.dataset.split_idx == 0  # the split is switched back: training still augments
    assert not torch.allclose(dls.train.new(shuffle=False).one_batch()[0], x[:64])

# --- non-finite losses -----------------------------------------------------------------------------------------

class NaNHatingMetric(AvgMetric):
    "Like sklearn's scores: refuses NaN predictions"
    def __init__(self): super().__init__(accuracy)
    def accumulate(self, learn):
        if not torch.isfinite(learn.pred).all(): raise ValueError('Input contains NaN')
        super().accumulate(learn)
    @property
    def name(self): return 'picky'

def test_nonfinite_losses_are_data(trained):
    learn, a, b = trained
    huge = {k: (v * 1e38 if k == 'head.2.weight' else v) for k, v in b.items()}
    alphas = np.linspace(-1, 1, 9)
    with pytest.warns(RuntimeWarning, match='not finite'):
        line = learn.interpolate(a, huge, alphas=alphas, metrics=[accuracy, NaNHatingMetric()], n_batches=2, progress=False)
    nf = line.nonfinite
    assert len(nf) > 0 and 0. not in nf.alpha.values
    picky, acc = line.df.valid_picky, line.df.valid_accuracy
    assert picky.isna().any() and (picky[picky.notna()] == acc[picky.notna()]).all()  # NaN where it refused, else computed
    fig = line.plot(log=True)
    ys = np.asarray(fig.axes[0].lines[0].get_ydata(), dtype=float)  # the train loss
    bad = ~np.isfinite(line.df.train_loss.to_numpy())
    assert bad.any() and np.isnan(ys[bad]).all() and np.isfinite(ys[~bad]).all()  # gaps exactly there
    assert fig.axes[0].get_yscale() == 'log'
    plt.close(fig)

def test_metric_error_on_finite_predictions_propagates(trained):
    learn, a, b = trained
    with pytest.raises(RuntimeError, match='metric failed'):
        learn.interpolate(a, b, alphas=[0.], metrics=[FailingMetric(1)], progress=False)

# --- the results -------------------------------------------------------------------------------------------------

def test_line_result_and_plot(trained):
    learn, a, b = trained
    # inside [0, 1] the interpolated BatchNorm variances are convex combinations of the ends': the loss is finite for sure
    # (outside, some variance crosses zero wherever the two ends' statistics put it: at alpha 1.6..2.1 in this fixture)
    line = learn.interpolate(a, b, alphas=np.linspace(0, 1, 5), n_batches=1, progress=False)
    assert isinstance(line, LossLine)
    assert list(line.df.columns) == ['alpha', 'train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy']
    assert len(line.nonfinite) == 0 and line.metric_names == ['accuracy']
    fig = line.plot(metric='accuracy')
    assert isinstance(fig, plt.Figure)
    vlines = [l.get_xdata()[0] for l in fig.axes[0].lines if len(set(l.get_xdata())) == 1]
    assert vlines == [0, 1]
    assert len(fig.axes) == 2  # the metric's axis
    with pytest.raises(ValueError, match='metric'): line.plot(metric='f1')
    plt.close('all')
    assert 'LossLine(5 points' in repr(line)

def test_loss_plane(trained):
    learn, a, b = trained
    c = DigitsResNet().state_dict()
    plane = learn.loss_plane(a, b, c, n=(4, 3), n_batches=1, progress=False)
    assert isinstance(plane, LossPlane) and len(plane.df) == 12
    keys = [k for k, _ in learn.model.named_parameters()]
    vec = lambda s: torch.cat([s[k].flatten().double() for k in keys])
    (xa, ya), (xb, yb), (xc, yc) = plane.points.values()
    assert (xa, ya, yb) == (0, 0, 0)
    assert abs(xb - float((vec(b) - vec(a)).norm())) < 1e-3
    assert abs(np.hypot(xc, yc) - float((vec(c) - vec(a)).norm())) < 1e-3  # true distances
    assert abs(np.hypot(xc - xb, yc) - float((vec(c) - vec(b)).norm())) < 1e-3
    assert plane.grid('valid_loss').shape == (3, 4)
    # a grid point equals the line's point with the same weights
    aff = learn.loss_plane(a, b, c, n=3, margin=0., basis='affine', n_batches=1, metrics=False, progress=False)
    line = learn.interpolate(a, b, alphas=[0.5], n_batches=1, metrics=False, progress=False)
    assert abs(aff.df.valid_loss[1] - line.df.valid_loss[0]) < 1e-5
    fig = plane.plot()
    assert len(fig.axes) == 4  # two panels with their colour bars
    assert sum(len(ax.texts) for ax in fig.axes) == 6  # a, b, c on each panel
    plt.close(fig)

# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,err,msg', [
    (dict(alphas=[]), ValueError, 'alphas'),
    (dict(alphas=[0, np.nan]), ValueError, 'finite'),
    (dict(alphas=[0, np.inf]), ValueError, 'finite'),
    (dict(alphas=[[0, 1]]), TypeError, '1-D'),
    (dict(alphas='abc'), TypeError, 'alphas'),
    (dict(alphas=0.5), TypeError, '1-D'),
    (dict(alphas=[True, False]), TypeError, 'numbers'),
    (dict(bn='batch'), ValueError, "'interpolate', 'recompute'"),
    (dict(n_batches=0), ValueError, 'n_batches'),
    (dict(n_batches=-2), ValueError, 'n_batches'),
    (dict(n_batches=1.5), TypeError, 'n_batches'),
    (dict(n_batches=True), TypeError, 'n_batches'),
    (dict(bs=0), ValueError, 'bs'),
    (dict(stats_rows=None), TypeError, 'stats_rows'),
])
def test_bad_arguments(trained, kwargs, err, msg):
    learn, a, b = trained
    with pytest.raises(err, match=msg): learn.interpolate(a, b, progress=False, **kwargs)

def test_state_dict_of_another_model(trained):
    learn, a, b = trained
    with pytest.raises(ValueError, match=r"`b`.*missing keys.*stem\.0\.weight"):
        learn.interpolate(a, digits_mlp().state_dict(), progress=False)
    wrong = DigitsResNet(widths=(8, 32, 64)).state_dict()
    with pytest.raises(ValueError, match=r"`a`.*shape mismatches.*stem\.0\.weight"):
        learn.interpolate(wrong, b, progress=False)
    with pytest.raises(TypeError, match='`a` must be'): learn.interpolate(3, b, progress=False)

def test_bad_labels(trained):
    learn, a, b = trained
    with pytest.raises(ValueError, match='labels'): learn.interpolate(a, b, labels=('x',), progress=False)
    with pytest.raises(ValueError, match='labels'): learn.interpolate(a, b, labels=('x', 'x'), progress=False)
    assert learn.interpolate(a, b, alphas=[0], n_batches=1, labels=('five', 'seven'), progress=False).labels == ('five', 'seven')

def test_bad_plane_arguments(trained):
    learn, a, b = trained
    mid = lerp_state(a, b, 0.5)
    with pytest.raises(ValueError, match='one line'): learn.loss_plane(a, b, mid, progress=False)
    with pytest.raises(ValueError, match='same weights'): learn.loss_plane(a, a, b, progress=False)
    with pytest.raises(ValueError, match='basis'): learn.loss_plane(a, b, None, basis='polar', progress=False)
    with pytest.raises(ValueError, match='`n`'): learn.loss_plane(a, b, None, n=1, progress=False)
    with pytest.raises(ValueError, match='margin'): learn.loss_plane(a, b, None, margin=-1, progress=False)
    with pytest.raises(ValueError, match='`c`'): learn.loss_plane(a, b, digits_mlp(), progress=False)

# --- models that torch.fx cannot trace --------------------------------------------------------------------------

class Untraceable(DigitsResNet):
    "Data-dependent control flow: `torch.fx` cannot trace it"
    def forward(self, x):
        if x.sum() > -1e30: return super().forward(x)
        return x

def test_untraceable_model_falls_back(trained):
    learn, a, b = trained
    l2 = Learner(learn.dls, Untraceable(), loss_func=learn.loss_func, metrics=accuracy)
    assert Evaluator(l2).gm is None
    df = l2.interpolate(a, b, alphas=[1], progress=False).df
    v, t = validate_loop(learn, b)
    assert abs(df.valid_loss[0] - v[0]) < 1e-5 and abs(df.train_loss[0] - t[0]) < 1e-5

def test_untraceable_model_reports_why_not_folded(trained):
    learn, a, b = trained
    assert Evaluator(learn).fold_off is None and 'not folded' not in repr(learn.interpolate(a, b, alphas=[0], progress=False))
    l2 = Learner(learn.dls, Untraceable(), loss_func=learn.loss_func, metrics=accuracy)
    ev = Evaluator(l2)
    assert ev.gm is None and ev.fold_off.startswith('TraceError: ')
    assert Evaluator(l2, fold_bn=False).fold_off is None
    line = l2.interpolate(a, b, alphas=[0, 0.5, 1], progress=False)
    assert line.fold_off == ev.fold_off and 'BatchNorm not folded: TraceError' in repr(line)
    plain = Evaluator(l2, fold_bn=False, channels_last=False)
    for al, row in zip([0, 0.5, 1], line.df.itertuples()):
        st = {k: torch.lerp(a[k], b[k], al) if a[k].is_floating_point() else a[k].clone() for k in a}
        ref = plain(st)
        assert abs(row.valid_loss - ref['valid_loss']) < 1e-5 and abs(row.train_loss - ref['train_loss']) < 1e-5
    plane = l2.loss_plane(a, b, small_learner(seed=7).model, n=2, n_batches=1, progress=False)
    assert plane.fold_off == ev.fold_off and 'BatchNorm not folded' in repr(plane)
