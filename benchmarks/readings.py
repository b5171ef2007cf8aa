"""A labelled benchmark of training situations for `RegularizationBalance`'s reading.

Every case is built so its truth is known by construction (a learning rate 100x below a good one, weight decay of 1,
labels shuffled, a train set of 100 images...) and the construction is checked by an independent measure that the
reading never sees (a reference run at a good setting, the loss on a held-out test set, a continuation of the run).
Runs whose check fails are reported and left out of the score. The result is a confusion matrix of true situation vs
reading, the direction of the advice, and for overfitting the error of the epoch it starts.

    python benchmarks/readings.py            # all cases, a few minutes on 2 free CPU cores (longer on a busy machine)
    python benchmarks/readings.py --quick    # one seed per case
    python benchmarks/readings.py --reread   # re-read the stored records of the last run (benchmarks/results/readings_runs.pkl)
"""
from __future__ import annotations
import argparse, pickle, time, warnings
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd, torch
from torch import nn
from fastai.vision.all import *
from fastai.tabular.all import *
from fastai_smith.all import *
from fastai_smith.data import digits_tensors, tensor_dls
from fastai_smith.snapshots import preserved_modes

warnings.filterwarnings('ignore')
RESULTS = Path(__file__).parent/'results'

# ---------------------------------------------------------------- models and data
def mlp(hidden=512):
    "A 64-512-512-10 MLP without BatchNorm, the model of a typical 'my lr is far too low' report"
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

def deep_linear():
    "Three linear layers without activation or BatchNorm"
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10))

def frozen_head():
    "A frozen random feature extractor (like a frozen pretrained backbone) and a linear-BN-dropout head, as in the forum thread"
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU())
    for p in body.parameters(): p.requires_grad_(False)
    return nn.Sequential(body, nn.BatchNorm1d(256), nn.Dropout(0.25), nn.Linear(256, 64), nn.ReLU(),
                         nn.BatchNorm1d(64), nn.Dropout(0.25), nn.Linear(64, 10))

MODELS = dict(mlp=mlp, resnet=DigitsResNet, deeplinear=deep_linear, frozenhead=frozen_head)

def digits_split(seed, n_train=None, noise=0.):
    "Digits: train (optionally only `n_train` images, a fraction `noise` of labels shuffled), valid (360) and a held-out test set"
    xt, yt, xv, yv = digits_tensors(0.4, seed)          # 1078 train, 719 held out
    g = torch.Generator().manual_seed(seed)
    if n_train: idx = torch.randperm(len(xt), generator=g)[:n_train]; xt, yt = xt[idx], yt[idx]
    if noise:
        yt = yt.clone(); k = int(noise*len(yt)); sel = torch.randperm(len(yt), generator=g)[:k]
        yt[sel] = torch.randint(0, 10, (k,), generator=g)
    return xt, yt, xv[:360], yv[:360], xv[360:], yv[360:]

class TestLoss(Callback):
    "Loss on a held-out test set after every epoch: an independent measure of generalization the reading never sees"
    order = 200
    def __init__(self, xs:tuple, y): self.xs, self.y, self.losses = xs, y, []
    def after_epoch(self):
        dev = self.dls.device
        with preserved_modes(self.learn.model) as m, torch.no_grad():
            m.eval()
            self.losses.append(float(self.learn.loss_func(m(*(x.to(dev) for x in self.xs)), self.y.to(dev))))

def digits_case(model, seed, bs=64, n_train=None, noise=0., **kw):
    xt, yt, xv, yv, xs, ys = digits_split(seed, n_train, noise)
    torch.manual_seed(seed)
    learn = Learner(tensor_dls(xt, yt, xv, yv, bs=bs, drop_last=len(xt) > 2*bs), MODELS[model](), loss_func=CrossEntropyLossFlat(), **kw)
    learn.test_cb = TestLoss((xs,), ys)
    return learn

def tabular_case(seed, bs=32, n_train=None, noise=0., **kw):
    "`tabular_learner` on scikit-learn's breast cancer data (569 rows, 30 features), with a held-out test set"
    from sklearn.datasets import load_breast_cancer
    df = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(seed); idx = rng.permutation(len(df))
    test, valid, train = idx[:150], idx[150:270], idx[270:]
    if n_train: train = train[:n_train]
    df = df.copy()
    if noise:
        flip = rng.choice(train, int(noise*len(train)), replace=False); df.loc[flip, 'target'] = 1 - df.loc[flip, 'target']
    conts = [c for c in df.columns if c != 'target']
    to = TabularPandas(df.iloc[np.concatenate([train, valid])].reset_index(drop=True), procs=[Normalize], cont_names=conts,
                       y_names='target', y_block=CategoryBlock(), splits=(list(range(len(train))), list(range(len(train), len(train)+len(valid)))))
    dls = to.dataloaders(bs=bs, num_workers=0)
    torch.manual_seed(seed)
    learn = tabular_learner(dls, layers=[200, 100], **kw)
    tt = to.new(df.iloc[test].reset_index(drop=True)); tt.process()
    xs = torch.tensor(tt.conts.values, dtype=torch.float32); ys = torch.tensor(tt.ys.values.ravel(), dtype=torch.long)
    learn.test_cb = TestLoss((torch.zeros(len(xs), 0, dtype=torch.long), xs), ys)   # no categorical columns
    return learn

def make(model, seed, **kw):
    return tabular_case(seed, **kw) if model == 'tabular' else digits_case(model, seed, **kw)

# ---------------------------------------------------------------- situations
SGD9 = partial(SGD, mom=0.9)
GOOD = dict(mlp=1e-2, resnet=1e-2, tabular=1e-2, deeplinear=3e-3)

def run(model, seed, epochs, lr, fit='fit_one_cycle', wd=None, opt_func=Adam, **kw):
    "Fit one case with a `RegularizationBalance`; returns the callback, the learner and the held-out test losses"
    learn = make(model, seed, opt_func=opt_func, **kw)
    bal = RegularizationBalance()
    fkw = {} if wd is None else dict(wd=wd)
    with learn.no_bar(), learn.no_logging(): getattr(learn, fit)(epochs, lr, cbs=[bal, learn.test_cb], **fkw)
    return bal, learn

def final_train(bal): return float(np.nanmean(bal.df.train_loss.values[-max(1, len(bal.df)//10):]))

def check_lr_too_low(model, seed, fit):
    "200 digits images, bs 32, Adam without weight decay, a learning rate 100x below a good one (1000x for the tabular model)"
    epochs, lr = (30 if fit == 'fit' else 20), GOOD[model]/(1000 if model == 'tabular' else 100)
    kw = {} if model == 'tabular' else dict(n_train=200, bs=32)
    bal, _ = run(model, seed, epochs, lr, fit=fit, wd=0., **kw)
    ref, _ = run(model, seed, epochs, GOOD[model], fit=fit, wd=0., **kw)
    return bal, dict(ok=final_train(ref) < 0.3*final_train(bal), measure=f"train loss {final_train(bal):.3g} vs {final_train(ref):.3g} at a good lr")

def check_healthy(model, seed):
    epochs = 4 if model == 'tabular' else 12   # the tabular model starts to overfit after ~5 epochs
    bal, _ = run(model, seed, epochs, GOOD[model])
    lo, _ = run(model, seed, epochs, GOOD[model]/30)
    v, vlo = bal.readings.valid_loss.values, lo.readings.valid_loss.values
    ok = np.isfinite(v).all() and v[-1] <= 1.15*np.nanmin(v) and v[-1] < 0.7*vlo[-1]
    return bal, dict(ok=ok, measure=f"final valid {v[-1]:.3g} (best {np.nanmin(v):.3g}); at lr/30: {vlo[-1]:.3g}")

def check_lr_too_high(model, seed, opt):
    lr = dict(adam=dict(mlp=0.3, resnet=1., tabular=1., deeplinear=0.3), sgd=dict(mlp=3., resnet=10., tabular=10., deeplinear=0.5))[opt][model]
    bal, _ = run(model, seed, 6, lr, fit='fit', opt_func=Adam if opt == 'adam' else SGD9, wd=0.)
    ref, _ = run(model, seed, 6, GOOD[model], fit='fit', opt_func=Adam, wd=0.)
    t = bal.df.train_loss.values
    ok = (not np.isfinite(t).all()) or final_train(bal) > 3*final_train(ref)
    return bal, dict(ok=ok, measure=f"train loss {final_train(bal):.3g} vs {final_train(ref):.3g} at a good lr; non-finite steps: {int((~np.isfinite(t)).sum())}")

def check_valid_explodes(seed, bs=8, lr=0.3):
    "The forum thread 'Learning rate and regularization': fit_one_cycle at bs 8 with a frozen backbone and a BN-dropout-linear head (max_lr 0.3: at 0.1 this head stays stable on digits)"
    bal, learn = run('frozenhead', seed, 5, lr, bs=bs, n_train=400)
    v, t = bal.readings.valid_loss.values, bal.df.train_loss.values
    ok = np.isfinite(t).all() and ((~np.isfinite(v)).any() or np.nanmax(v) > 3*np.nanmin(v))
    return bal, dict(ok=ok, measure=f"valid losses {np.round(v, 3).tolist()}, train finite: {np.isfinite(t).all()}")

def overfit_truth(test_losses):
    "Epoch (0-based) where overfitting starts: the one after the best held-out test loss"
    tl = np.asarray(test_losses)
    return int(np.nanargmin(tl)) + 1

def check_overfit(model, seed, noise=0.):
    n_train = 400 if noise else (60 if model == 'tabular' else 100)
    bal, learn = run(model, seed, 30, GOOD[model]/3, fit='fit', wd=0., n_train=n_train, noise=noise, bs=16 if model == 'tabular' else 32)
    tl = np.array(learn.test_cb.losses)
    e = overfit_truth(tl)
    ok = e < len(tl) and tl[-1] > 1.2*np.nanmin(tl)
    return bal, dict(ok=ok, epoch=e, measure=f"held-out test loss: min {np.nanmin(tl):.3g} at epoch {e-1}, last {tl[-1]:.3g}")

def check_too_much_wd(model, seed, opt='adam'):
    "Weight decay 1000x fastai's default with Adam (decoupled), or L2 of 0.1 through SGD's momentum"
    kw = dict(opt_func=Adam, wd=10.) if opt == 'adam' else dict(opt_func=partial(SGD, mom=0.9, decouple_wd=False), wd=0.1)
    bal, _ = run(model, seed, 12, GOOD[model] if opt == 'adam' else 0.1, **kw)
    ref, _ = run(model, seed, 12, GOOD[model] if opt == 'adam' else 0.1, **(kw | dict(wd=0.)))
    return bal, dict(ok=final_train(ref) < 0.5*final_train(bal), measure=f"train loss {final_train(bal):.3g} vs {final_train(ref):.3g} without weight decay")

def check_small_batch(model, seed):
    lr = dict(mlp=0.3, resnet=0.5, tabular=0.5, deeplinear=0.1)[model]
    bal, _ = run(model, seed, 4, lr, fit='fit', opt_func=SGD9, bs=2, wd=0.)
    ref, _ = run(model, seed, 4, lr, fit='fit', opt_func=SGD9, bs=128, wd=0.)
    t = bal.df.train_loss.values
    ok = (not np.isfinite(t).all()) or final_train(bal) > 2*final_train(ref)
    return bal, dict(ok=ok, measure=f"train loss at bs 2: {final_train(bal):.3g}, at bs 128 and the same lr: {final_train(ref):.3g}")

def check_still_improving(model, seed):
    learn = make(model, seed, opt_func=Adam)
    bal = RegularizationBalance()
    lr = GOOD[model]/10
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, lr, cbs=[bal])
        v3 = learn.validate()[0]
        learn.fit(15, lr)
        v18 = learn.validate()[0]
    return bal, dict(ok=v18 < 0.6*v3, measure=f"valid loss after 3 epochs {v3:.3g}, after 15 more {v18:.3g}")

# situation: (truth reading, advice directions that are right, cases)
def situations(seeds):
    S = {}
    S['lr too low (fit)'] = ('underfitting', {'raise lr'}, [(partial(check_lr_too_low, m, s, 'fit'), m, s) for m in ('mlp', 'resnet', 'tabular') for s in seeds])
    S['lr too low (fit_one_cycle)'] = ('underfitting', {'raise lr'}, [(partial(check_lr_too_low, m, s, 'fit_one_cycle'), m, s) for m in ('mlp', 'resnet') for s in seeds])
    S['lr well chosen'] = ('healthy', {'keep'}, [(partial(check_healthy, m, s), m, s) for m in ('mlp', 'resnet', 'tabular') for s in seeds])
    S['lr too high, Adam'] = ('diverged', {'lower lr'}, [(partial(check_lr_too_high, m, s, 'adam'), m, s) for m in ('mlp', 'resnet', 'deeplinear') for s in seeds])
    S['lr too high, SGD'] = ('diverged', {'lower lr'}, [(partial(check_lr_too_high, m, s, 'sgd'), m, s) for m in ('mlp', 'deeplinear', 'tabular') for s in seeds])
    S['valid loss explodes (bs 8, frozen backbone)'] = ('diverged', {'lower lr'}, [(partial(check_valid_explodes, s), 'frozenhead', s) for s in seeds])
    S['no regularization, tiny train set'] = ('overfitting', {'add regularization'}, [(partial(check_overfit, m, s), m, s) for m in ('mlp', 'tabular') for s in seeds])
    S['label noise'] = ('overfitting', {'add regularization'}, [(partial(check_overfit, m, s, 0.5), m, s) for m in ('mlp', 'resnet') for s in seeds])
    S['too much weight decay'] = ('underfitting', {'remove regularization'}, [(partial(check_too_much_wd, m, s, o), m if o == 'adam' else f'{m} (SGD, L2)', s)
                                  for m, o in (('mlp', 'adam'), ('deeplinear', 'adam'), ('mlp', 'sgd')) for s in seeds])
    S['batch too small at a high lr'] = ('diverged', {'lower lr'}, [(partial(check_small_batch, m, s), m, s) for m in ('mlp', 'resnet') for s in seeds])
    S['still improving at the end'] = ('underfitting', {'train longer', 'raise lr'}, [(partial(check_still_improving, m, s), m, s) for m in ('mlp', 'resnet') for s in seeds])
    return S

# ---------------------------------------------------------------- running and scoring
def collect(seeds, only=None):
    "Run every case; returns a list of dicts with the truth, its check and the callback's records"
    out = []
    for name, (truth, dirs, cases) in situations(seeds).items():
        if only and only not in name: continue
        for fn, model, seed in cases:
            t0 = time.perf_counter()
            bal, chk = fn()
            out.append(dict(situation=name, truth=truth, directions=dirs, model=model, seed=seed, records=bal._rec,
                            time_s=time.perf_counter()-t0, **chk))
            print(f"{name:42s} {model:10s} {seed} {'ok ' if chk['ok'] else 'BAD'} {time.perf_counter()-t0:5.1f}s  {chk['measure']}", flush=True)
    return out

def reread(rec):
    "A `RegularizationBalance` holding stored records, so its reading can be recomputed"
    bal = RegularizationBalance(); bal._rec = rec
    return bal

def score(runs):
    "One row per run: truth, reading, advice direction and whether each is right"
    rows = []
    for r in runs:
        s = reread(r['records']).verdict
        right = s['reading'] == r['truth']
        d = s.get('direction', '')
        row = dict(situation=r['situation'], model=r['model'], seed=r['seed'], check=r['ok'], truth=r['truth'], reading=s['reading'],
                   right=right, direction=d, direction_right=d in r['directions'], wrong_way=_wrong_way(d, r['directions']),
                   true_epoch=r.get('epoch'), epoch=s['epoch'], evidence=s['evidence'], measure=r['measure'])
        rows.append(row)
    return pd.DataFrame(rows)

# pairs of directions that point opposite ways; in Smith's frame a larger learning rate is more regularization
_wrong_pairs = {frozenset(p) for p in [('raise lr', 'lower lr'), ('add regularization', 'remove regularization'),
                                       ('add regularization', 'lower lr'), ('remove regularization', 'raise lr'), ('train longer', 'lower lr')]}
def _wrong_way(d, truths): return any(frozenset((d, t)) in _wrong_pairs for t in truths)

# ---------------------------------------------------------------- one sweep over the learning rate
SWEEP_TRUTH = {1e-4: 'underfitting', 1e-2: 'healthy', 1.: 'diverged'}

def lr_sweep(seed=0):
    "`smith_sweep` over lr on the 64-512-512-10 MLP (200 digits images, bs 32, 12 epochs): each run's reading against its truth, and the ranking"
    def make(bs=32): return digits_case('mlp', seed, bs=bs, n_train=200, opt_func=Adam)
    res = smith_sweep(make, {'lr': list(SWEEP_TRUTH)}, epochs=12, seed=seed, progress=False, wd=0.)
    df = res.df.assign(truth=lambda d: d.lr.map(SWEEP_TRUTH))
    df['right'] = df.reading == df.truth
    return df[['rank', 'lr', 'status', 'truth', 'reading', 'direction', 'valid_loss', 'right']]

def md(df, index=True):
    "A DataFrame as a Markdown table (no `tabulate` needed)"
    d = df.reset_index() if index else df
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v).replace('|', '/')
    rows = [[str(c) for c in d.columns]] + [[fmt(v) for v in r] for r in d.itertuples(index=False)]
    return '\n'.join(['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|'*len(rows[0])] + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])

def report(df, sweep, seeds, elapsed):
    "benchmarks/results/readings.md: confusion matrix, advice directions, overfitting epochs, misses, the lr sweep"
    ok = df[df.check]
    cm = pd.crosstab(ok.situation, ok.reading).reindex(columns=['underfitting', 'healthy', 'overfitting', 'diverged'], fill_value=0)
    cm.insert(0, 'truth', [ok[ok.situation == s].truth.iloc[0] for s in cm.index]); cm['right'] = ok.groupby('situation').right.sum()
    cm['runs'] = ok.groupby('situation').size()
    o = ok[(ok.truth == 'overfitting') & (ok.reading == 'overfitting')].dropna(subset=['epoch'])
    err = (o.epoch - o.true_epoch).astype(int)
    misses = df[~df.right | ~df.direction_right | df.wrong_way | ~df.check]
    L = [f"# Smith's reading on a labelled benchmark of training situations", "",
         f"`python benchmarks/readings.py` ({len(df)} runs, seeds {seeds}, {elapsed/60:.1f} minutes of training on a 2-core CPU; torch {torch.__version__}). "
         "Every situation is built so its truth is known (the construction is in the script) and checked by a measure the reading never sees; "
         f"runs whose check failed ({(~df.check).sum()}) are listed below and left out of the scores.", "",
         f"- **Readings right: {ok.right.sum()} of {len(ok)} ({ok.right.mean():.0%})** (goal >= 90%)",
         f"- **Advice direction right where the reading is right: {ok[ok.right].direction_right.sum()} of {ok.right.sum()}** (goal 100%)",
         f"- **Advice pointing the wrong way: {int(ok.wrong_way.sum())}** (goal 0): raise vs lower the learning rate, add vs remove regularization, and, since a larger learning rate regularizes, lower lr vs add regularization and raise lr vs remove regularization",
         f"- **Overfitting epoch**, where the reading is overfitting (fastai's 0-based epoch where it starts, truth: the epoch after the best held-out test loss): "
         f"error {err.tolist()}, within +-1 in {(err.abs() <= 1).sum()} of {len(err)}", "",
         "## Confusion matrix (rows: true situation, columns: reading)", "", md(cm), "",
         "## lr sweep: `smith_sweep` over the learning rate", "",
         "The 64-512-512-10 MLP on 200 digits images (bs 32, Adam, no weight decay, 12 epochs of `fit_one_cycle`) at three learning rates, ranked by `smith_sweep`; each run's reading against its truth:", "",
         md(sweep, index=False), "",
         f"Readings right: {sweep.right.sum()} of {len(sweep)}; best-ranked run: lr {sweep.lr.iloc[0]:g} ({sweep.truth.iloc[0]}).", "",
         "## What the misses say", "",
         "The kinds of miss seen over repeated runs of this benchmark (the runs are not bit-for-bit repeatable on a multi-threaded CPU, so "
         "which runs miss changes from one run to the next; the rates above do not move by more than a run or two):", "",
         "- A `tabular_learner` trained well for a few epochs can have a mean train loss (BatchNorm in training mode, the mean over the "
         "epoch's steps) above its valid loss: from the losses alone that is Smith's underfitting, and the reading says so. Its advice "
         "(raise the learning rate or train longer) is not the opposite of the truth, and the short `smith_sweep` over the learning rate "
         "that the advice asks for tells the two apart.",
         "- With three or four steps per epoch (a tiny train set) the mean train loss of one epoch is noisy; a climb back within twice its "
         "standard error is not read as divergence, but a larger one is, which is what the same climb means on a large data set.",
         "- A short run with an early bump of the valid loss reads as overfitting, Smith's own rule, even when a longer run would "
         "have recovered from it.",
         "- The overfitting epoch is read on the valid set and checked on a separate held-out test set of the same size; where the valid "
         "loss has a long flat bottom (the tiny train sets), the two sets can put their best epoch far apart. That is the noise of the "
         "measure: on the label-noise runs, whose valid loss turns up sharply, the reading is within one epoch.",
         "- Runs whose construction check failed are not scored (for example a healthy run that overfits by the held-out measure at the "
         "end, a learning rate 100x too low whose good-lr reference run happened to train badly, a tiny train set whose held-out loss "
         "barely rises); they are listed below with the measure that failed.", "",
         "## Runs read wrong, with a wrong advice direction, or whose construction check failed", "",
         md(misses[['situation', 'model', 'seed', 'check', 'truth', 'reading', 'direction', 'evidence', 'measure']], index=False) if len(misses) else "None.", "",
         "## Every run", "", md(df[['situation', 'model', 'seed', 'check', 'truth', 'reading', 'direction', 'true_epoch', 'epoch', 'measure']], index=False)]
    (RESULTS/'readings.md').write_text('\n'.join(L) + '\n')
    df.drop(columns=['evidence']).to_csv(RESULTS/'readings.csv', index=False)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--quick', action='store_true', help='one seed')
    ap.add_argument('--reread', action='store_true', help='re-read the stored records of the last run instead of training')
    a = ap.parse_args()
    torch.set_num_threads(2)
    seeds = [0] if a.quick else a.seeds
    store = RESULTS/'readings_runs.pkl'
    t0 = time.perf_counter()
    if a.reread: runs = pickle.loads(store.read_bytes())
    else:
        runs = collect(seeds)
        store.write_bytes(pickle.dumps(runs))
    sweep = lr_sweep(seeds[0])
    elapsed = sum(r['time_s'] for r in runs)
    seeds = sorted({r['seed'] for r in runs})
    df = score(runs)
    report(df, sweep, seeds, elapsed)
    print((RESULTS/'readings.md').read_text()[:1500])
