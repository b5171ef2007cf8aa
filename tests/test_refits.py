"Several fits with the same callbacks attached to a `Learner`: `lr_find`, then two `fit_one_cycle` calls"
import numpy as np, pytest, torch
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle, lr_find)
from fastai_smith.data import digits_learner
from fastai_smith.snapshots import WeightSnapshots
from fastai_smith.balance import RegularizationBalance
from fastai_smith.adam_monitor import AdamInstabilityMonitor

def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}
def same_weights(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.fixture(scope='module', params=['memory', 'disk'])
def refit(request, tmp_path_factory):
    "lr_find and two fit_one_cycle calls (3 then 2 epochs) on a Learner created with all three callbacks"
    path = tmp_path_factory.mktemp('snaps') if request.param == 'disk' else None
    snaps, bal, mon = WeightSnapshots(every=1, path=path), RegularizationBalance(), AdamInstabilityMonitor()
    learn = digits_learner('mlp', bs=128, cbs=[snaps, bal, mon])
    seen = {}
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=20, show_plot=False)
        seen['after lr_find'] = (len(snaps), len(bal.df), len(mon.df))
        learn.fit_one_cycle(3, 1e-2)
        seen['fit1'] = dict(snap=snaps[2], weights=weights(learn), bal=bal.df.copy(), readings=bal.readings.copy(), mon=len(mon.df))
        learn.fit_one_cycle(2, 3e-3)
    return learn, snaps, bal, mon, seen, path

def test_lr_find_records_nothing(refit):
    *_, seen, _ = refit
    assert seen['after lr_find'] == (0, 0, 0)

def test_snapshots_a_new_set_per_fit_and_the_kept_one_stays(refit):
    learn, snaps, *_, seen, path = refit
    n_iter = len(learn.dls.train)
    assert snaps.keys() == [0, 1] and snaps[1].iter == 2 * n_iter
    kept = seen['fit1']['snap']
    assert kept.key == 2 and kept.iter == 3 * n_iter
    assert same_weights(kept.state_dict(), seen['fit1']['weights'])       # still fit 1's weights
    assert same_weights(snaps[1].state_dict(), weights(learn))            # the current set is fit 2's
    if path is not None:
        assert sorted(p.name for p in path.iterdir()) == ['fit0', 'fit1']   # lr_find made no folder
        assert kept.fname.parent == path/'fit0' and snaps[1].fname.parent == path/'fit1'

def test_balance_records_start_again_each_fit(refit):
    learn, _, bal, *_ = refit
    n_iter = len(learn.dls.train)
    first = refit[4]['fit1']
    assert len(first['bal']) == 3 * n_iter and len(first['readings']) == 3
    assert len(bal.df) == 2 * n_iter and len(bal.readings) == 2
    assert bal.df.lr.max() == pytest.approx(3e-3, rel=0.05) and first['bal'].lr.max() == pytest.approx(1e-2, rel=0.05)

def test_adam_records_continue_over_fits_with_the_same_optimizer(refit):
    learn, _, _, mon, seen, _ = refit
    n_iter = len(learn.dls.train)
    assert seen['fit1']['mon'] == 3 * n_iter
    assert len(mon.df) == 5 * n_iter and (mon.df.step.values == np.arange(5 * n_iter)).all()
    assert mon.df.epoch.iloc[-1] == 1    # each fit's own epochs
