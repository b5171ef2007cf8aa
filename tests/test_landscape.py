"""`Learner.loss_landscape`, `Learner.trajectory_plane`, `Learner.sharpness`, `sharpness_history` and `SharpnessTracker` on
digits learners: numbers against fastai's `validate` and independent references (scikit-learn's PCA, the dense Hessian),
restoration of the model, non-finite losses, and the bad-input matrix."""
import copy, math, random, tempfile, warnings
from functools import partial
from pathlib import Path
import numpy as np, pytest, torch
from torch.nn.modules.batchnorm import _BatchNorm
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle, lr_find)
from fastai.learner import load_learner
from fastai.metrics import AvgMetric, accuracy
from fastai.optimizer import SGD
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai_smith.data import digits_learner, digits_tensors, tensor_dls, digits_mlp, DigitsResNet
from fastai_smith.snapshots import WeightSnapshots
from fastai_smith.landscape import (LossLandscape, TrajectoryPlane, SharpnessTracker, random_direction, stability_limit,
                                    _param_keys, _train_subset)

N_TRAIN, N_VALID = 640, 256  # a part of the digits keeps the tests fast

def small_dls(bs=64):
    x, y, xv, yv = digits_tensors()
    return tensor_dls(x[:N_TRAIN], y[:N_TRAIN], xv[:N_VALID], yv[:N_VALID], bs=bs)

def small_learner(arch='resnet', seed=42, **kwargs): return digits_learner(arch, seed=seed, dls=small_dls(), **kwargs)

@pytest.fixture(scope='module')
def trained():
    "A ResNet learner after 2 epochs with a snapshot every 4 steps"
    learn, snaps = small_learner(), WeightSnapshots(every_iters=4)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=snaps)
    learn.snaps = snaps
    return learn

def model_snapshot(model):
    return copy.deepcopy(model.state_dict()), [m.training for m in model.modules()], \
           [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)], [None if p.grad is None else p.grad.clone() for p in model.parameters()]

def assert_same_model(model, snap):
    sd, modes, moms, grads = snap
    for k, v in model.state_dict().items(): assert torch.equal(v, sd[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in model.modules() if isinstance(m, _BatchNorm)] == moms
    for p, g in zip(model.parameters(), grads): assert (p.grad is None and g is None) or torch.equal(p.grad, g)

def validate_at(learn, sd):
    keep = copy.deepcopy(learn.model.state_dict())
    try:
        learn.model.load_state_dict(sd)
        with learn.no_bar(): return learn.validate(), learn.validate(dl=learn.dls.train.new(shuffle=False, drop_last=False))
    finally: learn.model.load_state_dict(keep)

# --- random directions ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('norm', ['filter', 'layer', 'weight', None])
@pytest.mark.parametrize('bias_bn', ['zero', 'include'])
def test_direction_normalization(trained, norm, bias_bn):
    center, keys = trained.model.state_dict(), _param_keys(trained.model)
    d = random_direction(center, keys, norm, bias_bn, torch.Generator().manual_seed(3))
    raw = random_direction(center, keys, None, 'include', torch.Generator().manual_seed(3))
    for k in keys:
        w, v, r = center[k], d[k], raw[k]
        if w.dim() <= 1 and bias_bn == 'zero': assert (v == 0).all(); continue
        if norm == 'filter' and w.dim() > 1:
            torch.testing.assert_close(v.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
            # each filter keeps its Gaussian direction
            cos = torch.nn.functional.cosine_similarity(v.flatten(1), r.flatten(1), dim=1)
            torch.testing.assert_close(cos, torch.ones_like(cos), rtol=1e-4, atol=1e-5)
        elif norm in ('filter', 'layer'): torch.testing.assert_close(v.norm(), w.norm(), rtol=1e-4, atol=1e-6)
        elif norm == 'weight': torch.testing.assert_close(v, r * w)
        else: torch.testing.assert_close(v, r)

def test_directions_reproducible_and_different_per_seed(trained):
    a, b, c = (trained.loss_landscape(directions=1, n=3, n_batches=1, progress=False, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(a.directions[0][k], b.directions[0][k]) for k in a.directions[0])
    assert not all(torch.equal(a.directions[0][k], c.directions[0][k]) for k in a.directions[0])
    np.testing.assert_array_equal(a.df.valid_loss, b.df.valid_loss)

# --- the numbers -------------------------------------------------------------------------------------------------

def test_grid_points_equal_validate(trained):
    learn = trained
    land = learn.loss_landscape(n=3, span=0.5, progress=False)
    assert isinstance(land, LossLandscape) and land.dims == 2 and land.grid().shape == (3, 3)
    center = learn.model.state_dict()
    d1, d2 = land.directions
    for _, r in land.df.iloc[[0, 4, 7]].iterrows():
        sd = {k: v + r.x * d1[k] + r.y * d2[k] if k in d1 else v for k, v in center.items()}
        v, t = validate_at(learn, sd)
        np.testing.assert_allclose([r.valid_loss, r.train_loss], [v[0], t[0]], rtol=1e-4)
        np.testing.assert_allclose([r.valid_accuracy, r.train_accuracy], [float(v[1]), float(t[1])], atol=1e-6)

def test_curve_and_given_directions(trained):
    learn = trained
    grid = learn.loss_landscape(n=5, span=(1., 0.5), n_batches=2, progress=False)
    curve = learn.loss_landscape(directions=grid.directions[:1], n=5, span=1., n_batches=2, progress=False)
    assert curve.dims == 1 and curve.norm == 'given' and list(curve.df.columns[:3]) == ['x', 'train_loss', 'valid_loss']
    np.testing.assert_allclose(curve.df.valid_loss, grid.grid()[2], rtol=1e-5)  # y = 0 row of the grid
    np.testing.assert_allclose(grid.ys, np.linspace(-0.5, 0.5, 5))

def test_bn_recompute_at_center_matches_interpolate(trained):
    learn = trained
    land = learn.loss_landscape(directions=1, n=3, span=0.3, bn='recompute', progress=False)
    line = learn.interpolate(None, None, alphas=[0.], bn='recompute', progress=False)
    np.testing.assert_allclose(land.df.valid_loss[1], line.df.valid_loss[0], rtol=1e-5)

def test_snapshot_as_center_labels(trained):
    learn = trained
    key = learn.snaps.keys()[2]
    land = learn.loss_landscape(center=learn.snaps[key], directions=1, n=3, n_batches=1, progress=False)
    assert land.label == f'epoch {learn.snaps[key].epoch}'
    v, _ = validate_at(learn, learn.snaps[key].state_dict())
    assert land.df.valid_loss[1] == pytest.approx(v[0], rel=1e-4) or True  # n_batches=1 reads part of the set
    full = learn.loss_landscape(center=learn.snaps[key], directions=1, n=3, progress=False)
    assert full.df.valid_loss[1] == pytest.approx(v[0], rel=1e-4)

# --- restoration ---------------------------------------------------------------------------------------------------

class FailingMetric(AvgMetric):
    def __init__(self, n): super().__init__(accuracy); self.calls, self.n = 0, n
    def accumulate(self, learn):
        self.calls += 1
        if self.calls >= self.n: raise RuntimeError('metric failed')
        super().accumulate(learn)

@pytest.mark.parametrize('bn,train_mode', [('center', True), ('recompute', False)])
def test_model_restored_also_on_error(trained, bn, train_mode):
    learn = trained
    learn.model.train(train_mode); learn.model.body[0].bn1.train(not train_mode)  # a mixed state comes back as it was
    snap = model_snapshot(learn.model)
    learn.loss_landscape(n=3, bn=bn, n_batches=2, progress=False)
    assert_same_model(learn.model, snap)
    with pytest.raises(RuntimeError, match='metric failed'):
        learn.loss_landscape(n=3, bn=bn, n_batches=2, metrics=[FailingMetric(3)], progress=False)
    assert_same_model(learn.model, snap)
    learn.trajectory_plane(learn.snaps, n=3, bn=bn, n_batches=1, progress=False)
    assert_same_model(learn.model, snap)
    rng = torch.get_rng_state()
    learn.sharpness(rows=128, train_mode=True)
    learn.sharpness(rows=128, train_mode=False, trace=True, n_trace=2)
    assert_same_model(learn.model, snap)
    assert torch.equal(torch.get_rng_state(), rng)
    learn.model.eval()

def test_nonfinite_points_are_data(trained):
    learn = trained
    huge = [{k: v * 1e38 for k, v in random_direction(learn.model.state_dict(), _param_keys(learn.model), 'layer').items()}]
    with pytest.warns(RuntimeWarning, match='not finite'):
        land = learn.loss_landscape(directions=huge, n=5, span=1., n_batches=1, progress=False)
    assert len(land.nonfinite) > 0 and 0. not in land.nonfinite.x.values
    plt.close(land.plot())

# --- plots ---------------------------------------------------------------------------------------------------------

def test_plots(trained):
    learn = trained
    land = learn.loss_landscape(n=5, n_batches=1, progress=False)
    fig = land.plot()
    assert len(fig.axes) == 2 and all(len(ax.texts) > 1 for ax in fig.axes)  # labelled contour levels, the center named
    plt.close(fig)
    fig = land.plot(which='valid', surface=True, log=False)
    assert fig.axes[0].name == '3d'; plt.close(fig)
    fig = learn.loss_landscape(directions=1, n=5, n_batches=1, progress=False).plot(which='train')
    assert fig.axes[0].get_yscale() == 'log'; plt.close(fig)
    with pytest.raises(ValueError, match='`which`'): land.plot(which='test')

# --- the PCA plane of the path -------------------------------------------------------------------------------------

def test_trajectory_plane_against_sklearn_pca(trained):
    from sklearn.decomposition import PCA
    learn = trained
    tp = learn.trajectory_plane(learn.snaps, n=5, n_batches=1, progress=False)
    assert isinstance(tp, TrajectoryPlane)
    keys = _param_keys(learn.model)
    sds = [learn.snaps[k].state_dict() for k in learn.snaps.keys()]
    D = np.stack([np.concatenate([(sd[k] - sds[-1][k]).flatten().double().numpy() for k in keys]) for sd in sds[:-1]])
    pca = PCA(n_components=2).fit(D)
    var = ((D - D.mean(0)) ** 2).sum()
    np.testing.assert_allclose(tp.explained, pca.explained_variance_ * (len(D) - 1) / var, rtol=1e-4)
    V = np.stack([np.concatenate([d[k].flatten().double().numpy() for k in keys]) for d in tp.directions])
    np.testing.assert_allclose(np.abs((V * pca.components_).sum(1)), [1, 1], rtol=1e-4)
    np.testing.assert_allclose(np.abs(tp.path[['x', 'y']].values[:-1]), np.abs(D @ pca.components_.T), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tp.path[['x', 'y']].values[-1], [0, 0])
    plt.close(tp.plot())

def test_trajectory_plane_bias_bn_zero_and_current(trained):
    learn = trained
    tp = learn.trajectory_plane(learn.snaps, final='current', bias_bn='zero', n=(3, 4), n_batches=1, progress=False)
    assert tp.grid().shape == (4, 3) and tp.label == 'current'
    assert all(v.dim() > 1 for v in tp.directions[0].values())

# --- sharpness -----------------------------------------------------------------------------------------------------

def dense_hessian_top(learn, rows):
    (xb,), (yb,) = _train_subset(learn, rows, rows)[0]
    keys = _param_keys(learn.model)
    ps0 = tuple(p.detach().clone() for p in learn.model.parameters())
    f = lambda *ps: learn.loss_func(torch.func.functional_call(learn.model, dict(zip(keys, ps)), (xb,)), yb)
    H = torch.autograd.functional.hessian(f, ps0)
    sizes = [p.numel() for p in ps0]
    M = torch.cat([torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(ps0))], 1) for i in range(len(ps0))]).double()
    return torch.linalg.eigvalsh(M)[-1].item(), M.trace().item()

def test_sharpness_against_dense_hessian():
    learn = Learner(small_dls(), digits_mlp(hidden=8), loss_func=CrossEntropyLossFlat())  # 610 parameters: a dense Hessian is cheap
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    top, tr = dense_hessian_top(learn, 96)
    s = learn.sharpness(rows=96, tol=1e-6, trace=True, n_trace=300)
    assert s['top_eigenvalue'] == pytest.approx(top, rel=1e-3)
    assert abs(s['trace'] - tr) < 4 * s['trace_se'] + 1e-3 * abs(tr)
    assert s['rows'] == 96 and s['hvps'] > 0 and s['seconds'] > 0
    assert learn.sharpness(rows=96, bs=64)['rows'] == 96  # the last chunk cut at `rows`
    s2 = learn.sharpness(rows=96, bs=40)  # the loss averaged over chunks is the same loss: an MLP has no batch statistics
    assert s2['top_eigenvalue'] == pytest.approx(top, rel=1e-2)

def test_tracker_limits_and_history():
    learn = small_learner('mlp', opt_func=partial(SGD, mom=0.9))
    snaps, tracker = WeightSnapshots(every_iters=5), SharpnessTracker(every_iters=5, rows=128)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.05, cbs=[snaps, tracker])
    d = tracker.df
    assert len(d) == len(learn.dls.train) // 5
    np.testing.assert_allclose(d.limit, stability_limit(0.05, 0.9))
    hist = learn.sharpness_history(snaps, rows=128, progress=False)
    assert hist.df['iter'].tolist() == d['iter'].tolist()
    np.testing.assert_allclose(hist.df.top_eigenvalue, d.top_eigenvalue, rtol=1e-2)
    np.testing.assert_allclose(hist.df.limit, d.limit)
    plt.close(tracker.plot()); plt.close(hist.plot())

def test_tracker_per_epoch_adam_has_no_limit_side_runs_and_export():
    learn = small_learner('mlp')
    tracker = SharpnessTracker(every=1, rows=64, trace=True, n_trace=2)
    learn.add_cb(tracker)
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        assert tracker.records == []  # a side run records nothing
        learn.fit_one_cycle(2, 1e-2)
        learn.get_preds(); learn.validate()   # validate sends before_fit and after_epoch too: no new record, no measurement
    d = tracker.df
    assert d['key'].tolist() == [0, 1] and d.limit.isna().all() and {'trace', 'trace_se'} <= set(d.columns)
    with tempfile.TemporaryDirectory() as tmp:
        learn.export(Path(tmp)/'m.pkl')
        assert (Path(tmp)/'m.pkl').stat().st_size < 2e6
        load_learner(Path(tmp)/'m.pkl')
    learn.remove_cb(tracker)

# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,err,msg', [
    (dict(span=0), ValueError, '`span`'), (dict(span=-0.5), ValueError, '`span`'), (dict(span=float('nan')), ValueError, '`span`'),
    (dict(span=(1., 1., 1.)), TypeError, '`span`'), (dict(span='1'), TypeError, '`span`'),
    (dict(n=1), ValueError, '`n`'), (dict(n=2.5), TypeError, '`n`'), (dict(n=(3, 3, 3)), TypeError, '`n`'),
    (dict(n=2000), ValueError, '`n`'), (dict(directions=1, n=2_000_000), ValueError, '`n`'),
    (dict(directions=0), ValueError, '`directions`'), (dict(directions=3), ValueError, '`directions`'),
    (dict(directions='random'), TypeError, '`directions`'), (dict(directions=[1]), TypeError, '`directions[0]`'),
    (dict(norm='filters'), ValueError, '`norm`'), (dict(bias_bn='keep'), ValueError, '`bias_bn`'),
    (dict(bn='interpolate'), ValueError, '`bn`'), (dict(bs=0), ValueError, '`bs`'), (dict(n_batches=0), ValueError, '`n_batches`'),
    (dict(seed=-1), ValueError, '`seed`'), (dict(center=42), TypeError, '`center`'),
])
def test_bad_landscape_arguments(trained, kwargs, err, msg):
    with pytest.raises(err, match=msg.replace('[', r'\[').replace(']', r'\]')): trained.loss_landscape(progress=False, **kwargs)

def test_bad_directions_and_center(trained):
    learn = trained
    sd = learn.model.state_dict()
    keys = _param_keys(learn.model)
    wrong = {k: torch.zeros(3) if k == 'head.2.weight' else torch.zeros_like(sd[k]) for k in keys}
    with pytest.raises(ValueError, match=r"`directions\[0\]`\['head.2.weight'\] has shape \(3,\)"): learn.loss_landscape(directions=[wrong])
    ok = {k: torch.zeros_like(sd[k]) for k in keys}
    with pytest.raises(ValueError, match=r"`directions\[1\]` does not fit"): learn.loss_landscape(directions=[ok, {'x': torch.zeros(1)}])
    nan = {**ok, 'head.2.bias': torch.full_like(sd['head.2.bias'], float('nan'))}
    with pytest.raises(ValueError, match=r"`directions\[0\]`\['head.2.bias'\] holds non-finite"): learn.loss_landscape(directions=nan)
    other = digits_learner('mlp').model
    with pytest.raises(ValueError, match='`center`'): learn.loss_landscape(center=other)
    with pytest.raises(ValueError, match='`center`'): learn.loss_landscape(center=other.state_dict())
    with pytest.raises(ValueError, match='`final`'): learn.trajectory_plane(learn.snaps, final=other)
    with pytest.raises(ValueError, match='`weights`'): learn.sharpness(weights=other)
    with pytest.raises(ValueError, match='`snaps`'): learn.trajectory_plane([learn.snaps[learn.snaps.keys()[0]]])

@pytest.mark.parametrize('kwargs,msg', [(dict(rows=0), '`rows`'), (dict(bs=-1), '`bs`'), (dict(tol=0), '`tol`'), (dict(tol=1.5), '`tol`'),
                                        (dict(n_trace=0), '`n_trace`')])
def test_bad_sharpness_arguments(trained, kwargs, msg):
    with pytest.raises((ValueError, TypeError), match=msg): trained.sharpness(**kwargs)
    with pytest.raises((ValueError, TypeError), match=msg): SharpnessTracker(**kwargs)


# --- models that torch.fx cannot trace --------------------------------------------------------------------------

class Untraceable(DigitsResNet):
    "Data-dependent control flow: `torch.fx` cannot trace it"
    def forward(self, x): return super().forward(x) if x.sum() > -1e30 else x

def test_untraceable_model_reports_why_not_folded(trained):
    ls = trained.loss_landscape(directions=1, n=3, n_batches=1, metrics=False, progress=False)
    assert ls.fold_off is None and 'not folded' not in repr(ls)
    l2 = Learner(trained.dls, Untraceable(), loss_func=trained.loss_func)
    l2.model.load_state_dict(trained.model.state_dict())
    ls2 = l2.loss_landscape(directions=1, n=3, n_batches=1, metrics=False, progress=False)
    assert ls2.fold_off.startswith('TraceError: ') and 'BatchNorm not folded: TraceError' in repr(ls2)
    np.testing.assert_allclose(ls2.df[['train_loss', 'valid_loss']].to_numpy(), ls.df[['train_loss', 'valid_loss']].to_numpy(), rtol=1e-4, atol=1e-5)
