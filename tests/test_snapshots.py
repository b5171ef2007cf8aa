"WeightSnapshots on real digits Learners: schedules, storage, loading, averaging, ensembles, side runs, export, interruptions, bad input"
import os, warnings
import numpy as np, pytest, torch
from torch import nn
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle, fit_sgdr, lr_find)
from fastai.learner import load_learner
from fastai_smith.data import digits_learner, digits_mlp, digits_dls
from fastai_smith.snapshots import (WeightSnapshots, Snapshot, average_snapshots, bn_update, check_state_dict,
                                    sgdr_cycle_ends, _save)

def fit(snaps=None, arch='mlp', epochs=3, lr=1e-2, how='fit_one_cycle', attach=False, **kw):
    "A digits learner trained with `snaps` passed to the fit call (or attached to the Learner)"
    cbs = [snaps] if snaps is not None else []
    learn = digits_learner(arch, bs=128, cbs=cbs if attach else None, **kw)
    with learn.no_bar(), learn.no_logging():
        getattr(learn, how)(epochs, lr, cbs=None if attach else cbs)
    return learn

def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)

def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}

@pytest.fixture(scope='module')
def resnet_fit():
    "Three epochs of the BatchNorm ResNet with a snapshot every epoch, and one stored in half precision"
    snaps, half = WeightSnapshots(every=1), WeightSnapshots(epochs=[2], dtype=torch.half)
    learn = digits_learner('resnet', bs=128)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2, cbs=[snaps, half])
    return learn, snaps, half

@pytest.fixture
def resnet_run(resnet_fit): return resnet_fit[:2]

# --- when ---------------------------------------------------------------------------------------------------------------

def test_epoch_keys_metrics_and_final_weights(resnet_run):
    learn, snaps = resnet_run
    assert snaps.keys() == [0, 1, 2] and len(snaps) == 3 and 2 in snaps and 3 not in snaps
    for e in range(3):
        s = snaps[e]
        assert (s.epoch, s.iter) == (e, (e + 1) * len(learn.dls.train))
        np.testing.assert_allclose([s.metrics['train_loss'], s.metrics['valid_loss'], s.metrics['accuracy']],
                                   learn.recorder.values[e], rtol=1e-6)
    assert same_weights(snaps[2].state_dict(), learn.model.state_dict())
    assert list(snaps.df.columns[:6]) == ['key', 'epoch', 'iter', 'train_loss', 'valid_loss', 'accuracy']

def test_chosen_epochs_every_n_and_at_end():
    assert fit(s := WeightSnapshots(epochs=[1, 3]), epochs=4) and s.keys() == [1, 3]
    assert fit(s := WeightSnapshots(every=2), epochs=5) and s.keys() == [1, 3]
    assert fit(s := WeightSnapshots(at_end=True, epochs=0), epochs=3) and s.keys() == [0, 2]
    assert fit(s := WeightSnapshots(), epochs=2) and s.keys() == [0, 1]   # nothing asked: every epoch

def test_epochs_past_the_end_warn():
    with pytest.warns(UserWarning, match=r'past this fit.s last epoch 2'):
        fit(s := WeightSnapshots(epochs=[1, 8]), epochs=3)
    assert s.keys() == [1]

def test_iteration_snapshots_have_distinct_keys_and_smoothed_loss():
    snaps = WeightSnapshots(every_iters=5, epochs=[1])
    learn = fit(snaps, epochs=2)
    n = 2 * len(learn.dls.train)
    iters = [k for k in snaps.keys() if isinstance(k, str)]
    assert iters == [f'iter{i}' for i in range(5, n + 1, 5)] and 1 in snaps
    for k in iters:
        s = snaps[k]
        assert s.iter == int(k[4:]) and s.epoch == (s.iter - 1) // len(learn.dls.train)
        np.testing.assert_allclose(s.metrics['train_loss'], float(learn.recorder.losses[s.iter - 1]), rtol=1e-6)

def test_sgdr_cycle_ends_detected():
    snaps = WeightSnapshots(cycle_ends=True)
    learn = digits_learner('mlp', bs=128)
    with learn.no_bar(), learn.no_logging(): learn.fit_sgdr(3, 1, 1e-2, cbs=snaps)
    assert snaps.keys() == sgdr_cycle_ends(3, 1) == [0, 2, 6]
    learn = digits_learner('mlp', bs=64)   # other steps per epoch, other cycle lengths
    with learn.no_bar(), learn.no_logging(): learn.fit_sgdr(2, 1, 1e-2, cycle_mult=3, cbs=snaps)
    assert snaps.keys() == sgdr_cycle_ends(2, 1, 3) == [0, 3]
    fit(snaps, epochs=4)                   # one cycle: its warm-up is no restart, only the end counts
    assert snaps.keys() == [3]

def test_learner_cbs_and_fit_cbs_give_the_same_snapshots():
    a, b = WeightSnapshots(every=1), WeightSnapshots(every=1)
    fit(a, epochs=2); learn = fit(b, epochs=2, attach=True)
    assert a.keys() == b.keys() == [0, 1]
    assert learn.weight_snapshots is b
    assert a[1].metrics.keys() == b[1].metrics.keys()

def files(folder): return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())

def test_each_fit_starts_a_new_set_in_its_own_folder(tmp_path):
    snaps = WeightSnapshots(every=1, path=tmp_path)
    learn = fit(snaps, epochs=3, attach=True)
    first = snaps[2]
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert snaps.keys() == [0] and snaps.folder == tmp_path/'fit1'
    assert files(tmp_path) == ['fit0/snapshot_0.pth', 'fit0/snapshot_1.pth', 'fit0/snapshot_2.pth', 'fit1/snapshot_0.pth']
    assert not same_weights(first.state_dict(), snaps[0].state_dict())
    snaps.clear()   # drops the current set and its folder; the earlier fit's files are the user's
    assert files(tmp_path) == ['fit0/snapshot_0.pth', 'fit0/snapshot_1.pth', 'fit0/snapshot_2.pth'] and len(snaps) == 0

def wine_learner(cbs=None):
    "A `tabular_learner` on scikit-learn's wine data (178 wines, 13 measurements, 3 cultivars)"
    import pandas as pd
    from sklearn.datasets import load_wine
    from fastai.tabular.all import TabularDataLoaders, tabular_learner, Normalize, accuracy
    data = load_wine(as_frame=True).frame
    data['target'] = data['target'].astype(str)
    dls = TabularDataLoaders.from_df(data, y_names='target', cont_names=list(data.columns[:-1]), procs=[Normalize],
                                     valid_idx=list(range(0, len(data), 5)), bs=32)
    return tabular_learner(dls, layers=[32], metrics=accuracy, cbs=cbs)

@pytest.mark.parametrize('on_disk', [False, True])
def test_a_kept_snapshot_loads_its_own_weights_after_another_fit(tmp_path, on_disk):
    "The case a user met: keep `snaps[1]` of a first fit, fit again with the same callback, load the kept one"
    torch.manual_seed(0)
    snaps = WeightSnapshots(every=1, path=tmp_path if on_disk else None)
    learn = wine_learner()
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2, cbs=snaps)
        kept, kept_w = snaps[1], weights(learn)
        learn.fit(2, 3e-2, cbs=snaps)
        second_w = weights(learn)
        learn.load_snapshot(kept)
        assert same_weights(weights(learn), kept_w) and not same_weights(kept_w, second_w)
        np.testing.assert_allclose(learn.validate()[0], kept.metrics['valid_loss'], rtol=1e-5)
        learn.restore_weights()
    assert same_weights(weights(learn), second_w)
    if on_disk: assert kept.fname.parent != snaps[1].fname.parent

def test_a_replaced_or_deleted_file_is_refused_naming_it(tmp_path):
    snaps = WeightSnapshots(every=1, path=tmp_path, with_opt=True)
    fit(snaps, epochs=2)
    s, other = snaps[0], snaps[1]
    _save(other.state_dict(), s.fname)    # same model, same size: another file with other weights under s's name
    with pytest.raises(RuntimeError, match=rf"{s.fname.name}.*replaced after this snapshot wrote it"): s.state_dict()
    _save(other.opt_state, s.opt_fname)
    with pytest.raises(RuntimeError, match='replaced'): s.opt_state
    other.fname.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{other.fname.name}.*is gone"): other.state_dict()

def test_a_second_callback_on_the_same_folder_takes_a_new_subfolder(tmp_path):
    a, b = WeightSnapshots(epochs=[0], path=tmp_path), WeightSnapshots(epochs=[0], path=tmp_path)
    fit(a, epochs=1); fit(b, epochs=1)
    assert (a.folder, b.folder) == (tmp_path/'fit0', tmp_path/'fit1')
    assert not same_weights(a[0].state_dict(), b[0].state_dict())

# --- where and what -----------------------------------------------------------------------------------------------------

def test_disk_keep_atomic_files(tmp_path):
    folder = tmp_path/'new'/'folder'
    snaps = WeightSnapshots(every=1, path=folder, keep=2)
    learn = fit(snaps, epochs=4)
    assert snaps.keys() == [2, 3]
    assert files(folder) == ['fit0/snapshot_2.pth', 'fit0/snapshot_3.pth']   # no temporary files left
    plain = torch.load(folder/'fit0'/'snapshot_3.pth', weights_only=True)   # a plain state dict, loadable without fastai_smith
    assert same_weights(plain, learn.model.state_dict()) and same_weights(snaps[3].state_dict(), plain)
    assert snaps.df['file'].tolist() == [str(folder/'fit0'/'snapshot_2.pth'), str(folder/'fit0'/'snapshot_3.pth')]

def test_retention_in_memory_and_gone_files(tmp_path):
    snaps = WeightSnapshots(every=1, keep=1)
    fit(snaps, epochs=3)
    assert snaps.keys() == [2]
    disk = WeightSnapshots(every=1, path=tmp_path, keep=1)
    learn = digits_learner('mlp', bs=128)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2, cbs=disk)
    old = disk[0]
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2, cbs=disk)
    assert disk.keys() == [1] and files(tmp_path) == ['fit0/snapshot_0.pth', 'fit1/snapshot_1.pth']   # retention within a fit
    assert same_weights(old.state_dict(), torch.load(tmp_path/'fit0'/'snapshot_0.pth', weights_only=True))
    gone = disk[1]; disk.clear()
    with pytest.raises(FileNotFoundError, match=r'fit1/snapshot_1.pth.*is gone'): gone.state_dict()

def test_interrupted_write_keeps_the_old_file(tmp_path):
    f = tmp_path/'snapshot_1.pth'
    _save({'w': torch.ones(3)}, f)
    with pytest.raises(Exception): _save({'bad': lambda: 0}, f)   # cannot be pickled: fails half-way
    assert torch.equal(torch.load(f, weights_only=True)['w'], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ['snapshot_1.pth']

def test_half_storage_keeps_integer_buffers(resnet_fit):
    learn2, full, half = resnet_fit
    stored = half[2]._state
    assert stored['stem.0.weight'].dtype == torch.half
    assert stored['stem.1.num_batches_tracked'].dtype == torch.int64
    assert stored['stem.1.num_batches_tracked'] == learn2.model.state_dict()['stem.1.num_batches_tracked']
    sd = half[2].state_dict()
    assert all(sd[k].dtype == v.dtype for k, v in learn2.model.state_dict().items())
    torch.testing.assert_close(sd['head.2.weight'], learn2.model.state_dict()['head.2.weight'], rtol=1e-3, atol=1e-3)
    nbytes = lambda d: sum(t.numel() * t.element_size() for t in d.values())
    assert nbytes(stored) < 0.55 * nbytes(full[2]._state)

@pytest.mark.parametrize('on_disk', [False, True])
def test_optimizer_state(tmp_path, on_disk):
    snaps = WeightSnapshots(epochs=[0, 1], with_opt=True, path=tmp_path if on_disk else None)
    learn = fit(snaps, epochs=2)
    opt = snaps[0].opt_state
    live = learn.opt.state_dict()
    assert len(opt['state']) == len(live['state']) and 'grad_avg' in opt['state'][0]
    assert not torch.equal(opt['state'][0]['grad_avg'], live['state'][0]['grad_avg'])
    learn.load_snapshot(0, snaps=snaps, with_opt=True)
    assert torch.equal(learn.opt.state_dict()['state'][0]['grad_avg'], opt['state'][0]['grad_avg'])
    assert learn.opt.hypers[0]['lr'] == opt['hypers'][0]['lr']
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)   # training goes on from the loaded state
    plain = WeightSnapshots(epochs=[0]); fit(plain, epochs=1)
    assert plain[0].opt_state is None
    with pytest.raises(ValueError, match='with_opt'): learn.load_snapshot(plain[0], with_opt=True)

# --- loading and restoring ----------------------------------------------------------------------------------------------

def test_load_snapshot_by_object_key_or_state_dict_and_restore(resnet_run):
    learn, snaps = resnet_run
    before = weights(learn)
    learn.load_snapshot(snaps[0])
    assert same_weights(learn.model.state_dict(), snaps[0].state_dict())
    np.testing.assert_allclose(learn.validate()[0], snaps[0].metrics['valid_loss'], rtol=1e-5)
    learn.load_snapshot(1, snaps=snaps); learn.load_snapshot(snaps[0].state_dict())
    learn.restore_weights()
    assert same_weights(learn.model.state_dict(), before)
    with pytest.raises(ValueError, match='no weights to restore'): learn.restore_weights()

def test_load_by_key_finds_attached_callback():
    learn = fit(snaps := WeightSnapshots(every=1), epochs=2, attach=True)
    learn.load_snapshot(0)
    assert same_weights(learn.model.state_dict(), snaps[0].state_dict())

def test_restoring_weights_on_error(resnet_run):
    learn, snaps = resnet_run
    before = weights(learn); learn.model.eval()
    with pytest.raises(RuntimeError, match='boom'):
        with learn.restoring_weights():
            learn.load_snapshot(snaps[0]); learn.model.train(); raise RuntimeError('boom')
    assert same_weights(learn.model.state_dict(), before) and not learn.model.training

# --- averaging and ensembles --------------------------------------------------------------------------------------------

def test_average_of_snapshots(resnet_run):
    learn, snaps = resnet_run
    avg = average_snapshots(snaps, keys=[0, 2])
    sd0, sd2 = snaps[0].state_dict(), snaps[2].state_dict()
    torch.testing.assert_close(avg['stem.0.weight'], (sd0['stem.0.weight'] + sd2['stem.0.weight']) / 2)
    torch.testing.assert_close(avg['stem.1.running_var'], (sd0['stem.1.running_var'] + sd2['stem.1.running_var']) / 2)
    assert avg['stem.1.num_batches_tracked'] == sd2['stem.1.num_batches_tracked'] != sd0['stem.1.num_batches_tracked']
    assert same_weights(average_snapshots([sd0, sd0]), sd0)
    assert same_weights(average_snapshots(snaps), average_snapshots([snaps[k] for k in snaps.keys()]))

def test_bn_update_is_the_train_mean_and_ignores_dropout():
    dls = digits_dls(bs=128)
    def model(p):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(p), nn.BatchNorm1d(32, momentum=0.3), nn.ReLU(), nn.Linear(32, 10))
    dl = dls.train.new(shuffle=False, drop_last=False)
    m, m0 = model(0.5), model(0.)
    m.eval(); m[2].train()   # modes are restored afterwards, whatever they were
    bn_update(m, dl); bn_update(m0, dl)
    assert torch.equal(m[3].running_mean, m0[3].running_mean) and torch.equal(m[3].running_var, m0[3].running_var)
    with torch.no_grad(): means = torch.stack([m[1](m[0](x)).mean(0) for x, _ in dl]).mean(0)
    torch.testing.assert_close(m[3].running_mean, means, rtol=1e-5, atol=1e-6)
    assert m[3].momentum == 0.3 and not m.training and m[2].training and not m[3].training
    bn_update(m, dl, n_batches=1)
    with torch.no_grad(): torch.testing.assert_close(m[3].running_mean, m[1](m[0](next(iter(dl))[0])).mean(0))

def test_load_averaged_recomputes_bn_and_restores(resnet_run):
    learn, snaps = resnet_run
    before = weights(learn)
    learn.load_averaged(snaps, keys=[1, 2], recompute_bn=False)
    averaged = weights(learn)
    assert same_weights(averaged, average_snapshots(snaps, keys=[1, 2]))
    learn.load_averaged(snaps, keys=[1, 2])
    now = learn.model.state_dict()
    torch.testing.assert_close(now['stem.0.weight'], averaged['stem.0.weight'])
    assert not torch.allclose(now['stem.1.running_mean'], averaged['stem.1.running_mean'])
    learn.restore_weights()
    assert same_weights(learn.model.state_dict(), before)

def test_ensemble_preds_is_the_mean_and_leaves_the_model(resnet_run):
    learn, snaps = resnet_run
    before = weights(learn); learn.model.train()
    probs, targs = learn.ensemble_preds(snaps, keys=[0, 2], progress=False)
    assert same_weights(learn.model.state_dict(), before) and learn.model.training
    each = []
    for k in (0, 2):
        with learn.restoring_weights(), learn.no_bar():
            learn.load_snapshot(snaps[k]); each.append(learn.get_preds()[0])
    torch.testing.assert_close(probs, (each[0] + each[1]) / 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    assert torch.equal(targs, learn.dls.valid_ds.tensors[1])

def test_compare_snapshots_table(resnet_run):
    learn, snaps = resnet_run
    before = weights(learn)
    df = learn.compare_snapshots(snaps, keys=[1, 2])
    assert list(df.index) == ['last snapshot', 'average, BN statistics averaged', 'average, BN statistics recomputed',
                              'ensemble (mean of probabilities)']
    np.testing.assert_allclose(df.loc['last snapshot', 'valid_loss'], snaps[2].metrics['valid_loss'], rtol=1e-4)
    assert same_weights(learn.model.state_dict(), before)

# --- side runs, export, interruptions -----------------------------------------------------------------------------------

def test_lr_find_get_preds_and_validate_record_nothing():
    snaps = WeightSnapshots(every=1, every_iters=3)
    learn = digits_learner('mlp', bs=128, cbs=[snaps])
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.lr_find(num_it=10, show_plot=False)
        assert len(snaps) == 0
        learn.fit(1, 1e-2)
        keys, w = snaps.keys(), snaps[0].state_dict()['1.weight'].clone()
        learn.lr_find(num_it=10, show_plot=False); learn.get_preds(); learn.get_preds(ds_idx=0); learn.validate()
    assert snaps.keys() == keys and torch.equal(snaps[0].state_dict()['1.weight'], w)

def test_export_does_not_carry_snapshots(tmp_path):
    snaps = WeightSnapshots(every=1, dtype=torch.half)
    learn = (fit(snaps, arch='resnet', epochs=2, attach=True, path=tmp_path))
    learn.export('with.pkl')
    learn.remove_cb(snaps); learn.export('without.pkl')
    size = lambda n: (tmp_path/n).stat().st_size
    one_snapshot = sum(v.numel() * v.element_size() for v in snaps[0]._state.values())
    assert size('with.pkl') < size('without.pkl') + one_snapshot / 4, (size('with.pkl'), size('without.pkl'), one_snapshot)
    assert snaps.keys() == [0, 1]   # the live callback keeps its snapshots
    loaded = load_learner(tmp_path/'with.pkl')
    cb = loaded.weight_snapshots
    assert len(cb) == 0 and cb.every == 1 and cb.dtype == torch.half

class Stop(Callback):
    "Raise `exc` after epoch `at`"
    order = 100
    def __init__(self, exc, at): self.exc, self.at = exc, at
    def after_epoch(self):
        if self.epoch == self.at: raise self.exc()

@pytest.mark.parametrize('exc', [KeyboardInterrupt, CancelFitException])
def test_snapshots_before_an_interruption_are_kept(tmp_path, exc):
    snaps = WeightSnapshots(every=1, path=tmp_path)
    learn = digits_learner('mlp', bs=128)
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(5, 1e-2, cbs=[snaps, Stop(exc, 2)])
    except KeyboardInterrupt: assert exc is KeyboardInterrupt
    assert snaps.keys() == [0, 1, 2]
    assert files(tmp_path) == [f'fit0/snapshot_{e}.pth' for e in range(3)]
    assert same_weights(snaps[2].state_dict(), learn.model.state_dict())

# --- bad input ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,arg', [
    (dict(epochs=-1), 'epochs'), (dict(epochs=[5, -7]), 'epochs'), (dict(epochs=2.5), 'epochs'), (dict(epochs=[1, 2.0]), 'epochs'),
    (dict(epochs='5'), 'epochs'), (dict(epochs=True), 'epochs'),
    (dict(every=0), 'every'), (dict(every=1.5), 'every'), (dict(every_iters=-10), 'every_iters'), (dict(every_iters='100'), 'every_iters'),
    (dict(keep=0), 'keep'), (dict(keep=2.0), 'keep'),
    (dict(dtype=torch.int8), 'dtype'), (dict(dtype='half'), 'dtype'), (dict(dtype=np.float16), 'dtype'),
])
def test_bad_arguments_name_themselves(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=f'`{arg}`'): WeightSnapshots(**kwargs)

def test_unknown_key_lists_the_keys(resnet_run):
    learn, snaps = resnet_run
    with pytest.raises(KeyError, match=r"no snapshot 7; captured keys: \[0, 1, 2\]"): snaps[7]
    with pytest.raises(KeyError, match="'iter5'"): snaps['iter5']
    with pytest.raises(KeyError, match='no snapshot 4'): learn.load_snapshot(4, snaps=snaps)
    with pytest.raises(ValueError, match='pass `snaps`'): learn.load_snapshot(4)

def test_state_dict_of_another_model_names_the_keys(resnet_run):
    learn, snaps = resnet_run
    with pytest.raises(ValueError, match=r"missing keys \['stem.0.weight'.*unexpected keys \['1.weight'"):
        learn.load_snapshot(digits_mlp().state_dict())
    sd = snaps[0].state_dict(); sd['head.2.weight'] = torch.zeros(3, 64)
    with pytest.raises(ValueError, match=r"head.2.weight: \(3, 64\) instead of \(10, 64\)"): learn.load_snapshot(sd)
    with pytest.raises(ValueError, match='missing keys'): average_snapshots([snaps[0], digits_mlp().state_dict()])
    del sd['head.2.bias']
    with pytest.raises(ValueError, match=r"missing keys \['head.2.bias'\]"): check_state_dict(sd, snaps[0].state_dict())

def test_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path/'a_file'; blocker.write_text('not a folder')
    with pytest.raises(ValueError, match=r"`path` '.*a_file/snaps' must be a folder that can be written"):
        WeightSnapshots(path=blocker/'snaps')
    with pytest.raises(ValueError, match='`path`'): WeightSnapshots(path=blocker)
    if os.geteuid() != 0:   # root writes anywhere
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match='`path`'): WeightSnapshots(path=ro)
        finally: ro.chmod(0o700)

def test_folder_removed_after_construction_is_recreated_or_named(tmp_path):
    snaps = WeightSnapshots(every=1, path=tmp_path/'gone')
    (tmp_path/'gone').rmdir()
    fit(snaps, epochs=1)
    assert (tmp_path/'gone'/'fit0'/'snapshot_0.pth').exists()
    snaps.clear(); (tmp_path/'gone').rmdir(); (tmp_path/'gone').write_text('now a file')
    with pytest.raises(ValueError, match='`path`'): fit(snaps, epochs=1)

def test_empty_and_keyless_combinations(resnet_run):
    learn, snaps = resnet_run
    with pytest.raises(ValueError, match='no snapshots'): average_snapshots([])
    with pytest.raises(ValueError, match='`keys`'): average_snapshots([snaps[0]], keys=[0])
    before = weights(learn)
    with pytest.raises(ValueError, match='`n_batches`'): learn.load_averaged(snaps, n_batches=0)
    assert same_weights(learn.model.state_dict(), before)
