"""Overhead of fastai_smith callbacks on `fit_one_cycle` (digits, reference ResNet), side by side in one run.

Each configuration trains from the same seed; configurations are interleaved over repeats so that machine noise
falls on all of them alike. The figure is the ratio of median epoch times against the bare `fit_one_cycle`.

    python benchmarks/overhead.py [--epochs 4] [--repeats 5]

Writes benchmarks/results/overhead.md and overhead.json.
"""
import argparse, json, time, statistics
from pathlib import Path
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle)
from fastai_smith.data import digits_learner

class EpochTimer(Callback):
    "Wall time of each training epoch (train and validation)"
    order = -100
    def before_fit(self): self.times = []
    def before_epoch(self): self.t0 = time.perf_counter()
    def after_epoch(self): self.times.append(time.perf_counter() - self.t0)

def _callbacks():
    "name -> (factory of the callbacks, budget as a ratio); every later callback adds its line here"
    cfgs = {'bare': (lambda: [], None)}
    try:
        from fastai_smith.snapshots import WeightSnapshots
        cfgs['WeightSnapshots(every=1)'] = (lambda: [WeightSnapshots(every=1)], 1.02)
    except ImportError: pass
    try:
        from fastai_smith.adam_monitor import AdamInstabilityMonitor
        cfgs['AdamInstabilityMonitor()'] = (lambda: [AdamInstabilityMonitor()], 1.02)
    except ImportError: pass
    try:
        from fastai_smith.balance import RegularizationBalance
        cfgs['RegularizationBalance()'] = (lambda: [RegularizationBalance()], 1.02)
    except ImportError: pass
    return cfgs

def run(epochs=4, repeats=5, lr=1e-2, seed=42):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfgs = _callbacks()
    times = {k: [] for k in cfgs}
    for r in range(repeats):
        for name, (make, _) in cfgs.items():
            timer = EpochTimer()
            learn = digits_learner(seed=seed, cbs=[timer])
            with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr, cbs=make())
            times[name] += timer.times[1:]  # the first epoch warms caches up
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [dict(config=k, median_epoch_s=med[k], ratio=med[k]/med['bare'], budget=cfgs[k][1],
                 ok=(cfgs[k][1] is None or med[k]/med['bare'] <= cfgs[k][1])) for k in cfgs]
    return rows

def write(rows, out=Path(__file__).parent/'results'):
    out.mkdir(exist_ok=True, parents=True)
    (out/'overhead.json').write_text(json.dumps(rows, indent=2))
    lines = ['# Callback overhead on fit_one_cycle (digits, DigitsResNet)', '',
             f'Measured {time.strftime("%Y-%m-%d")} with `python benchmarks/overhead.py`; ratio of median epoch times, same run, same seed.', '',
             '| configuration | ratio to bare | budget | within budget |', '|---|---|---|---|']
    lines += [f"| {r['config']} | {r['ratio']:.3f} | {r['budget'] or '-'} | {'yes' if r['ok'] else 'NO'} |" for r in rows]
    (out/'overhead.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--epochs', type=int, default=4); ap.add_argument('--repeats', type=int, default=5)
    a = ap.parse_args()
    write(run(a.epochs, a.repeats))
