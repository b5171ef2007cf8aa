"""Speed of `Learner.loss_landscape` (a 21x21 filter-normalized grid) against the bare forward pass over the same data, and the
cost of `Learner.sharpness` (the top Hessian eigenvalue) in forward+backward passes.

The reference model is the one of `benchmarks/interpolation.py`: a DigitsResNet after `fit_one_cycle(8, 1e-2)` on the digits.
Each grid point evaluates the train (1438 rows) and valid (359 rows) loss and accuracy. Two references of the cost of one point:

- "validate-loop forward": what `benchmarks/interpolation.py` times as the bare forward passes of the validate loop,
  `load_state_dict` of the point's weights, then `model(x)` in eval mode over the loaders' own batches (64 train, 128 valid);
- "bare forward, 512-row chunks": `model(x)` alone over the same rows in chunks of 512 (the evaluator's chunk size), the
  weights already loaded, no loss, no metrics: the network's arithmetic and nothing else.

Configurations are interleaved over repeats so that machine noise falls on all alike; medians are reported. For the
eigenvalue: `learn.sharpness(rows=R)` (Lanczos to relative accuracy 1e-3, Hessian-vector products by double backward, train
mode, chunks of the training batch size 64) against one forward+backward pass of the loss over the same R rows and chunks.

    python benchmarks/landscape.py [--n 21] [--repeats 3]

Writes benchmarks/results/landscape.md, landscape.csv and landscape.json. Target: a grid point within 1.3x of the bare forward pass.
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from torch.func import functional_call
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle)
from fastai_smith.data import digits_learner
from fastai_smith.interpolation import eval_batches
from fastai_smith.landscape import _param_keys, random_direction, _train_subset
sys.path.insert(0, str(Path(__file__).parent))
from interpolation import bare_forwards  # noqa: E402 (the validate loop's forward passes, as measured there)

def chunk_forwards(learn, states, bs=512):
    "Reference: `model(x)` over all rows in chunks of `bs`, in eval mode, the weights of each state loaded first (not timed apart)"
    xs = [torch.cat([b[0] for b in eval_batches(learn, i)]) for i in (0, 1)]
    chunks = [x[i:i+bs] for x in xs for i in range(0, len(x), bs)]
    learn.model.eval()
    with torch.inference_mode():
        for st in states:
            learn.model.load_state_dict(st)
            for x in chunks: learn.model(x)

def fwd_bwd(learn, chunks):
    "One forward+backward pass of the training loss over `chunks` (train mode, weights as leaves), gradients discarded"
    keys = _param_keys(learn.model)
    sd = learn.model.state_dict()
    params = [sd[k].detach().clone().requires_grad_(True) for k in keys]
    bufs = {k: v.clone() for k, v in sd.items() if k not in set(keys)}
    total = sum(len(y[0]) for _, y in chunks)
    learn.model.train()
    try:
        for xb, yb in chunks:
            loss = learn.loss_func(functional_call(learn.model, {**dict(zip(keys, params)), **bufs}, xb), *yb) * (len(yb[0]) / total)
            torch.autograd.grad(loss, params)
    finally: learn.model.eval()

def run(n=21, repeats=3, rows_list=(512, None), seed=42):
    learn = digits_learner(seed=seed)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 1e-2)
    center = {k: v.clone() for k, v in learn.model.state_dict().items()}
    keys = _param_keys(learn.model)
    g = torch.Generator().manual_seed(0)
    d1, d2 = (random_direction(center, keys, generator=g) for _ in range(2))
    xs = np.linspace(-1, 1, n)
    pts = [(x, y) for y in xs for x in xs]
    states = [{k: v + x * d1[k] + y * d2[k] if k in d1 else v for k, v in center.items()} for x, y in pts]
    a = center; b = {k: v + d1[k] if k in d1 else v for k, v in center.items()}
    cfgs = {
        'loss_landscape 21x21 (train+valid loss and accuracy)': lambda: learn.loss_landscape(n=n, span=1., progress=False),
        'reference: validate-loop forward (load_state_dict + model(x), loader batches)': lambda: bare_forwards(learn, a, b, np.linspace(-1, 1, len(pts))),
        'reference: bare forward, 512-row chunks (weights loaded, no loss)': lambda: chunk_forwards(learn, states),
    }
    times, land = {k: [] for k in cfgs}, None
    load0 = os.getloadavg()[0]
    for r in range(repeats):
        for name, f in cfgs.items():
            t0 = time.perf_counter(); out = f(); times[name].append(time.perf_counter() - t0)
            if out is not None: land = out
        learn.model.load_state_dict(center)
    per_point = {k: statistics.median(v) / len(pts) for k, v in times.items()}
    main = next(iter(cfgs))
    eig = []
    for rows in rows_list:
        chunks = _train_subset(learn, rows, learn.dls.train.bs)
        tfb = []
        for _ in range(3):
            t0 = time.perf_counter(); fwd_bwd(learn, chunks); tfb.append(time.perf_counter() - t0)
        ss = [learn.sharpness(rows=rows) for _ in range(repeats)]
        t_eig = statistics.median(s['seconds'] for s in ss)
        eig.append(dict(rows=ss[0]['rows'], top_eigenvalue=ss[0]['top_eigenvalue'], hvps=ss[0]['hvps'], seconds=t_eig,
                        fwd_bwd_seconds=statistics.median(tfb), cost_in_fwd_bwd=t_eig / statistics.median(tfb),
                        cost_per_hvp=t_eig / statistics.median(tfb) / ss[0]['hvps']))
    return dict(n=n, points=len(pts), repeats=repeats, n_train=len(learn.dls.train_ds), n_valid=len(learn.dls.valid_ds),
                times=times, per_point_s=per_point, ratio={k: per_point[main] / per_point[k] for k in cfgs},
                nonfinite=int(len(land.nonfinite)), center_valid_loss=float(land.df.valid_loss[(land.df.x == 0) & (land.df.y == 0)].iloc[0]),
                max_valid_loss=float(np.nanmax(land.df.valid_loss)), eigen=eig,
                machine=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                             device=str(next(learn.model.parameters()).device),
                             processor=platform.processor() or platform.machine(), loadavg_start=load0, loadavg_end=os.getloadavg()[0]),
                date=time.strftime('%Y-%m-%d'))

def write(res, out=Path(__file__).parent/'results'):
    out.mkdir(exist_ok=True, parents=True)
    (out/'landscape.json').write_text(json.dumps(res, indent=2))
    rows = [dict(kind='grid', configuration=k, seconds_per_point=v, landscape_over_this=res['ratio'][k]) for k, v in res['per_point_s'].items()]
    rows += [dict(kind='eigenvalue', configuration=f"sharpness rows={e['rows']}", **e) for e in res['eigen']]
    pd.DataFrame(rows).to_csv(out/'landscape.csv', index=False)
    m, main = res['machine'], next(iter(res['per_point_s']))
    refs = [k for k in res['per_point_s'] if k.startswith('reference')]
    worst = max(res['ratio'][k] for k in refs)
    lines = [f"# Speed of `Learner.loss_landscape` and `Learner.sharpness` (digits, DigitsResNet)", '',
        f"Measured {res['date']} with `python benchmarks/landscape.py`: a {res['n']}x{res['n']} grid ({res['points']} points) of two "
        f"filter-normalized random directions (span 1) around the weights after `fit_one_cycle(8, 1e-2)`; train ({res['n_train']} rows) "
        f"and valid ({res['n_valid']} rows) loss and accuracy at each point; median of {res['repeats']} interleaved repeats, whole call "
        f"timed (set-up, directions and the table included). Machine: {m['cpus']} CPUs ({m['processor']}), {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, model on {m['device']}; load average {m['loadavg_start']:.1f} at start, {m['loadavg_end']:.1f} at the end "
        "(other jobs share the CPU).", '',
        '| configuration | ms per point | loss_landscape / this |', '|---|---|---|']
    lines += [f"| {k} | {1000 * v:.1f} | {res['ratio'][k]:.2f}x |" for k, v in res['per_point_s'].items()]
    lines += ['', f"- Target: a grid point within 1.3x of the bare forward pass over the same data: **{worst:.2f}x** against the stricter "
              f"reference, {'met' if worst <= 1.3 else 'NOT met'}.",
              f"- The grid: {res['nonfinite']} non-finite points; valid loss {res['center_valid_loss']:.3g} at the center, up to "
              f"{res['max_valid_loss']:.3g} at the edge.", '',
              '## Top Hessian eigenvalue', '',
              '`learn.sharpness(rows=R)` at the final weights: Lanczos (ARPACK) to relative accuracy 1e-3, Hessian-vector products by double '
              'backward on the first R training rows in chunks of 64, train mode; its cost against one forward+backward pass of the same '
              'loss on the same chunks.', '',
              '| rows | lambda_max | Hessian-vector products | seconds | forward+backward s | cost in forward+backward passes | per product |',
              '|---|---|---|---|---|---|---|']
    lines += [f"| {e['rows']} | {e['top_eigenvalue']:.4g} | {e['hvps']} | {e['seconds']:.2f} | {e['fwd_bwd_seconds']:.3f} | "
              f"{e['cost_in_fwd_bwd']:.0f} | {e['cost_per_hvp']:.2f} |" for e in res['eigen']]
    per = [e['cost_per_hvp'] for e in res['eigen']]
    lines += ['', f"Each Hessian-vector product cost {min(per):.1f}-{max(per):.1f} forward+backward passes here, all included (building the "
              "gradient graph once with `create_graph=True`, the double backward through it per product, ARPACK's own work): a double "
              "backward costs more than a plain backward, and small chunks pay more per-call overhead on a CPU. ARPACK with its "
              "default 20 Lanczos vectors needs at least 21 products; `tol` sets how many more. `SharpnessTracker` and "
              "`sharpness_history` start each measurement from the previous eigenvector."]
    (out/'landscape.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=21); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--rewrite', action='store_true', help='only rewrite landscape.md/csv from the stored landscape.json')
    a = ap.parse_args()
    write(json.loads((Path(__file__).parent/'results'/'landscape.json').read_text()) if a.rewrite else run(a.n, a.repeats))
