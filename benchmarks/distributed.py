"""Overhead of all fastai_smith callbacks under 2-process DDP (fastai's `distrib_ctx`, gloo on the CPU), against bare DDP.

Both configurations train the digits reference ResNet with `fit_one_cycle` (32 items per process: a global batch of 64) in the
same 2-process launch, interleaved over repeats in a rotating order so that machine noise falls on both alike. The figures are
the ratio of median epoch times (all callbacks over bare DDP, first epoch of each fit left out) and the share of the fit spent
inside each callback's event handlers, on each process (that time includes waiting for the other process in the callbacks'
few collectives: the losses averaged once per epoch or per 50 steps, rank 0's BatchNorm statistics at each snapshot).

    python benchmarks/distributed.py [--epochs 4] [--repeats 3]

Writes benchmarks/results/distributed.md and distributed.json.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent/'tests')]  # `overhead`'s timers, `ddp_worker`'s launcher

def _configs():
    from fastai_smith.all import WeightSnapshots, RegularizationBalance, AdamInstabilityMonitor
    return {'bare DDP': lambda: {},
            'all callbacks': lambda: {'WeightSnapshots(every=1)': WeightSnapshots(every=1), 'RegularizationBalance()': RegularizationBalance(),
                                      'AdamInstabilityMonitor()': AdamInstabilityMonitor()}}

def worker(out, epochs, repeats, lr=1e-2):
    "One process of the launch: every configuration `repeats` times; its epoch times and time inside each callback to JSON"
    import torch
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401
    from fastai.distributed import Learner  # noqa: F401 (distrib_ctx)
    from fastai.torch_core import rank_distrib
    from fastai_smith.data import digits_learner
    from overhead import EpochTimer, _timed
    torch.set_num_threads(1)
    cfgs = _configs(); names = list(cfgs)
    res = {k: dict(epochs=[], total=0., inside={}) for k in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            timer, clocks = EpochTimer(), {}
            learn = digits_learner(bs=32, cbs=[timer])
            cbs = [_timed(cb, clocks.setdefault(n, {'s': 0.})) for n, cb in cfgs[name]().items()]
            t0 = time.perf_counter()
            with learn.no_bar(), learn.no_logging(), learn.distrib_ctx(sync_bn=False, cpu=True): learn.fit_one_cycle(epochs, lr, cbs=cbs)
            res[name]['total'] += time.perf_counter() - t0
            res[name]['epochs'] += timer.times[1:]  # the first epoch warms caches up
            for n, c in clocks.items(): res[name]['inside'][n] = res[name]['inside'].get(n, 0.) + c['s']
    (Path(out)/f'rank{rank_distrib()}.json').write_text(json.dumps(res))
    torch.distributed.destroy_process_group()  # gloo's threads stopped before the interpreter exits

def run(epochs=4, repeats=3):
    from ddp_worker import launch
    with tempfile.TemporaryDirectory() as out:
        launch(Path(__file__).resolve(), ['--worker', out, '--epochs', epochs, '--repeats', repeats], timeout=1800)
        ranks = [json.loads((Path(out)/f'rank{r}.json').read_text()) for r in range(2)]
    med = {k: statistics.median(v['epochs']) for k, v in ranks[0].items()}
    best = {k: min(v['epochs']) for k, v in ranks[0].items()}
    rows = []
    for k in ranks[0]:
        row = dict(config=k, median_epoch_s=med[k], ratio=med[k]/med['bare DDP'], min_ratio=best[k]/best['bare DDP'],
                   inside_share=[sum(r[k]['inside'].values())/r[k]['total'] for r in ranks],
                   per_callback={n: [r[k]['inside'][n]/r[k]['total'] for r in ranks] for n in ranks[0][k]['inside']})
        rows.append(row)
    return rows

def write(rows, epochs, repeats, out=HERE/'results'):
    import torch
    out.mkdir(exist_ok=True, parents=True)
    (out/'distributed.json').write_text(json.dumps(rows, indent=2))
    pct = lambda xs: ' / '.join(f'{x:.2%}' for x in xs)
    lines = ['# Callback overhead under 2-process DDP (digits, DigitsResNet, gloo on the CPU)', '',
             f'Measured {time.strftime("%Y-%m-%d")} with `python benchmarks/distributed.py --epochs {epochs} --repeats {repeats}`: '
             '`fit_one_cycle` under `distrib_ctx(sync_bn=False, cpu=True)` on 2 processes launched by torchrun, 32 items per process '
             '(a global batch of 64); both configurations in the same launch, interleaved.', '',
             '| configuration | median epoch (s) | ratio of median epoch times to bare DDP | ratio of fastest epochs | time inside the callbacks (rank 0 / rank 1) |',
             '|---|---|---|---|---|']
    lines += [f"| {r['config']} | {r['median_epoch_s']:.3f} | {r['ratio']:.3f} | {r['min_ratio']:.3f} | {pct(r['inside_share'])} |" for r in rows]
    per = [r for r in rows if r['per_callback']]
    if per:
        lines += ['', 'Time inside each callback, as a share of the fit (rank 0 / rank 1):', '', '| callback | time inside |', '|---|---|']
        lines += [f"| {n} | {pct(v)} |" for r in per for n, v in r['per_callback'].items()]
    lines += ['', f"torch {torch.__version__}, 1 thread per process, 2 processes on a shared 2-core machine, CPU only. The epoch-time ratio "
              "carries the machine's noise; the time inside the callbacks' event handlers is the low-noise figure. Under DDP it also holds "
              "the waits in the callbacks' collectives, where a process waits for the other to reach the same step."]
    (out/'distributed.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--epochs', type=int, default=4); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--worker', help=argparse.SUPPRESS)  # set by the launch: this is one of the processes, writing to this folder
    a = ap.parse_args()
    if a.worker: worker(a.worker, a.epochs, a.repeats)
    else: write(run(a.epochs, a.repeats), a.epochs, a.repeats)
