"""fastai_smith under fastai's `distrib_ctx`: real 2-process DDP runs on the CPU (gloo), launched with `torchrun`.

One launch (`tests/ddp_worker.py`) runs every case; each process writes what it saw to JSON, and the tests compare the two
processes with each other and with single-process runs of the same global batch. A hang (a collective that one process never
enters) hits the hard timeout of the launch and fails every test here, instead of blocking the suite."""
import json, time
from pathlib import Path
import numpy as np, pytest, torch
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle)
from fastai_smith.data import digits_learner, digits_dls, adam_seed_learner, adam_seed_tensors
from fastai_smith.adam_monitor import AdamInstabilityMonitor, full_batch_dls
from fastai_smith.balance import RegularizationBalance

pytest.importorskip('accelerate', reason="fastai's distrib_ctx needs accelerate (a dev dependency)")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip('torch.distributed with the gloo backend is not available', allow_module_level=True)

WORKER = Path(__file__).parent/'ddp_worker.py'
from ddp_worker import launch  # noqa: E402 (tests/ is on the path: pytest puts a test's folder there)
CASES = ['resnet', 'mlp', 'adam_defaults', 'adam_stop', 'adam_restore']
TIMEOUT = 480  # the launch takes about a minute on 2 free cores

def run_cases(out, cases):
    "One 2-process launch of `cases`: per case, what each process wrote; a hang or a failure fails the test"
    try: launch(WORKER, [out, *cases], timeout=TIMEOUT)
    except (TimeoutError, RuntimeError) as e: pytest.fail(str(e))
    return {c: [json.loads((out/f'{c}.rank{r}.json').read_text()) for r in range(2)] for c in cases}

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    t = time.perf_counter()
    res = run_cases(tmp_path_factory.mktemp('ddp'), CASES)
    res['seconds'] = time.perf_counter() - t
    return res

def fit_single(learn, n_epoch, cbs, lr=None):
    with learn.no_bar(), learn.no_logging():
        if lr is None: learn.fit(n_epoch, cbs=cbs)
        else: learn.fit_one_cycle(n_epoch, lr, cbs=cbs)
    return learn

# --- 1. every case finishes with all callbacks at their defaults -------------------------------------------------------

def test_all_cases_finish_on_both_processes(runs):
    for c in CASES:
        r0, r1 = runs[c]
        assert (r0['rank'], r1['rank']) == (0, 1)
        assert r0['adam']['steps'] == r1['adam']['steps'] > 0
    assert runs['seconds'] < TIMEOUT

# --- 2. snapshots: the same on both processes, files written once, complete and loadable -------------------------------

@pytest.mark.parametrize('arch', ['resnet', 'mlp'])
def test_snapshots_same_on_every_process_written_by_rank0_alone(runs, arch):
    r0, r1 = runs[arch]
    assert list(r0['mem']) == ['0', '1', '2'] and r0['mem'] == r1['mem']  # weights, rank 0's BatchNorm statistics, metrics
    assert r0['mem']['2']['hash'] == r0['model'] == r1['model']  # the last one is the final model
    assert len({s['hash'] for s in r0['mem'].values()}) == 3
    # on disk, `keep=2`: rank 0 wrote the three files and deleted the oldest; rank 1 wrote and deleted nothing
    assert [Path(f).name for f in r0['saves']] == ['snapshot_0.pth', 'snapshot_1.pth', 'snapshot_2.pth'] and r1['saves'] == []
    assert r0['files'] == r1['files'] == ['fit0/snapshot_1.pth', 'fit0/snapshot_2.pth']  # the fit's folder, named by rank 0 for all
    assert r0['disk'] == r1['disk'] and {k: d['hash'] for k, d in r0['disk'].items()} == {k: r0['mem'][k]['hash'] for k in ('1', '2')}
    for d in r0['disk'].values():  # complete and loadable here too, by plain torch
        sd = torch.load(d['fname'], map_location='cpu', weights_only=True)
        assert sd.keys() == digits_learner(arch).model.state_dict().keys()

# --- prints: only rank 0 -------------------------------------------------------------------------------------------------

def _ours(w): return any(n in w for n in ('AdamInstability', 'WeightSnapshots', 'RegularizationBalance', 'fastai_smith'))

def test_only_rank0_prints_and_warns(runs):
    for c in CASES:
        r0, r1 = runs[c]
        assert r1['stdout'] == '', (c, r1['stdout'][-500:])
        # none of ours on rank 1 (a warning of torch or fastai would come on both)
        assert set(r1['warnings']) <= set(r0['warnings']) and not [w for w in r1['warnings'] if _ours(w)], (c, r1['warnings'])
        assert 'train_loss' in r0['stdout']  # fastai's table, once
    kinds = [w.split(' at step')[0] for w in runs['adam_defaults'][0]['warnings']]
    assert kinds == ['AdamInstabilityWarning: WARNING', 'AdamInstabilityWarning: ALARM']

# --- 3. RegularizationBalance: the global batch, the same records everywhere, agreeing with one process ------------------

@pytest.mark.parametrize('arch', ['resnet', 'mlp'])
def test_balance_reads_the_global_batch(runs, arch):
    b0, b1 = runs[arch][0]['balance'], runs[arch][1]['balance']
    assert b0 == b1  # losses averaged over the processes: the same records, readings and diagnosis on both
    assert b0['bs'] == [64] and b0['world'] == 2 and b0['n'] == digits_dls(64).train.n
    assert 'batch size 64' in b0['diagnosis'] and '32 per process x 2' in b0['diagnosis']
    # a single process with the same global batch: the same steps and noise scale, losses within the noise of two runs
    bal = RegularizationBalance()
    fit_single(digits_learner(arch, bs=64), 3, [bal], lr=1e-2)
    d = bal.df
    assert len(d) == b0['steps'] and d.n.iloc[0] == b0['n'] and set(d.bs) == {64}
    np.testing.assert_allclose(b0['noise_scale'], d.noise_scale.values, rtol=1e-9)
    rd = bal.readings
    # two runs differ by their shuffles (and, without SyncBatchNorm, by BatchNorm statistics of 32 rows instead of 64): the mean
    # train loss of each epoch, and the valid loss once the lr has annealed, within half of the loss or 0.05 near zero; the valid
    # loss at the peak lr of one-cycle swings far more between any two runs, so it is not compared
    np.testing.assert_allclose(b0['readings']['train_loss'], rd.train_loss.values, rtol=0.5, atol=0.05, err_msg='train_loss')
    np.testing.assert_allclose(b0['readings']['valid_loss'][-1], rd.valid_loss.values[-1], rtol=0.5, atol=0.05, err_msg='last valid_loss')

# --- 4. AdamInstabilityMonitor: the same signals and events on every process, acting together ----------------------------

@pytest.fixture(scope='module')
def single_adam():
    "The same Adam case on one process: 700 full-batch steps"
    mon = AdamInstabilityMonitor(on_warning=None, on_alarm=None)
    learn = adam_seed_learner(torch_adam=False)
    learn.dls = full_batch_dls(*adam_seed_tensors(), steps_per_epoch=50)
    fit_single(learn, 14, [mon])
    return mon

@pytest.mark.parametrize('case', ['adam_defaults', 'adam_stop', 'adam_restore'])
def test_adam_same_on_every_process(runs, case):
    a0, a1 = runs[case][0]['adam'], runs[case][1]['adam']
    assert a0 == a1  # loss, rho, events, predictions (rank 0's Hessian-vector products, broadcast), notes
    assert [k for k, *_ in a0['events']] == ['WARNING', 'ALARM'] and a0['predictions']
    assert runs[case][0]['model'] == runs[case][1]['model']

def test_adam_under_ddp_is_the_single_process_run(runs, single_adam):
    "Each process steps on the whole batch, so the averaged gradient is the single-process one: the same run, the same events"
    a = runs['adam_defaults'][0]['adam']
    d = single_adam.df
    assert a['steps'] == len(d) == 700
    np.testing.assert_allclose(a['loss'], d.loss.values, rtol=1e-5, atol=1e-12)
    assert [tuple(e[:2]) for e in a['events']] == [(e.kind, e.step) for e in single_adam.events]
    p, q = a['predictions'][0], single_adam.predictions[0]
    assert p['step'] == q['step'] and abs(p['predicted_step'] - q['predicted_step']) <= 0.01 * q['predicted_step']

def test_stop_and_restore_act_on_every_process_together(runs):
    for case in ('adam_stop', 'adam_restore'):
        r0, r1 = runs[case]
        alarm = r0['adam']['events'][-1]
        assert alarm[0] == 'ALARM' and r0['adam']['steps'] == r1['adam']['steps'] < 700  # both stopped, at the same step
        assert alarm[1] <= r0['adam']['steps'] <= alarm[1] + 51
        assert r0['final_loss'] == r1['final_loss'] and r0['model'] == r1['model']
    assert runs['adam_stop'][0]['final_loss'] > 1e-8  # stopped with the climb in the weights
    assert runs['adam_restore'][0]['final_loss'] < 1e-8  # the best weights back, on both
    assert all('restored' in r['adam']['notes'][-1] for r in runs['adam_restore'])

# --- 5. analysis after the fit, on rank 0 alone --------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ['resnet', 'mlp'])
def test_analysis_on_rank0_alone(runs, arch):
    "fastai's validate (in `local_process`), interpolate, loss_plane, ensemble_preds, compare_snapshots and load_averaged on rank 0 alone, while rank 1 goes on to its next fit: none of them enters a collective"
    r0, r1 = runs[arch]
    a = r0['analysis']
    assert 'analysis' not in r1
    assert len(a['line_valid']) == 9 and np.all(np.isfinite(a['line_valid'])) and a['plane_points'] == 9
    assert abs(a['validate'] - a['line_valid'][6]) < 1e-4 * a['validate']  # fastai's validate in `local_process`: the line at alpha 1
    assert a['ensemble_rows'] == a['n_valid'] == len(digits_dls(64).valid_ds) and a['ensemble_acc'] > 0.85
    assert a['compare_rows'] == 4 and a['compare_finite']
    assert a['averaged_differs'] and a['restored']
