"""One process of a 2-process DDP run for `tests/test_distributed.py`, launched by `torchrun --nproc_per_node 2` (`launch`,
also used by `benchmarks/distributed.py`). It runs the cases named on the command line under fastai's `distrib_ctx` on the CPU
(gloo), and writes what it saw to `OUT/<case>.rank<r>.json`: records, snapshots (as hashes), events, its stdout and warnings.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT resnet mlp adam_defaults adam_stop adam_restore"""
import contextlib, hashlib, io, json, math, os, signal, socket, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, torch
from fastai.callback.schedule import *  # noqa: F401 (fit_one_cycle)
from fastai.distributed import *  # noqa: F401 (Learner.distrib_ctx)
from fastai.torch_core import rank_distrib, get_model
from fastai_smith.all import *
import fastai_smith.snapshots as snapshots_module

RANK = rank_distrib()

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(script, args, nproc=2, timeout=480):
    "Run `script args` on `nproc` CPU processes with torchrun; kill them all when they run past `timeout` seconds (a hang); return the log"
    import fastai_smith
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore::FutureWarning',
               PYTHONPATH=os.pathsep.join([str(Path(fastai_smith.__file__).parent.parent), os.environ.get('PYTHONPATH', '')]))
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): env.pop(k, None)
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', str(script), *map(str, args)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try: log, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); log, _ = p.communicate()
        raise TimeoutError(f"the {nproc}-process run did not finish in {timeout}s (a hang?):\n{log[-4000:]}") from None
    if p.returncode != 0: raise RuntimeError(f"torchrun failed ({p.returncode}):\n{log[-6000:]}")
    return log

def sd_hash(sd):
    "A hash of a state dict's keys, dtypes and values"
    h = hashlib.sha1()
    for k, v in sd.items():
        h.update(k.encode()); h.update(str(v.dtype).encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def model_hash(learn): return sd_hash(get_model(learn.model).state_dict())

def clean(o):
    "JSON-safe: NaN and inf as strings, numpy scalars as numbers"
    if isinstance(o, dict): return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [clean(v) for v in o]
    if isinstance(o, (np.floating, float)): return float(o) if math.isfinite(o) else str(float(o))
    if isinstance(o, np.integer): return int(o)
    if isinstance(o, np.ndarray): return clean(o.tolist())
    return o

saves = []  # the snapshot files this process wrote (`_save` is counted when run as a script)
def _counted_save(obj, fname, _save=snapshots_module._save):
    saves.append(str(fname)); return _save(obj, fname)

@contextlib.contextmanager
def captured(res):
    "Record this process's stdout and warnings into `res`"
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter('always')
        yield
    res['stdout'] = out.getvalue()
    res['warnings'] = [f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught]

def fit_ddp(learn, n_epoch, lr, cbs, res, one_cycle=True):
    "`fit_one_cycle` (or `fit`) under `distrib_ctx` on CPU processes, this process's output and warnings recorded in `res`"
    t = time.perf_counter()
    with captured(res), learn.distrib_ctx(sync_bn=False, cpu=True):  # gloo on the CPU; torch's SyncBatchNorm needs GPUs
        if one_cycle: learn.fit_one_cycle(n_epoch, lr, cbs=cbs)
        else: learn.fit(n_epoch, lr, cbs=cbs)
    res['fit_s'] = time.perf_counter() - t

def balance_record(bal):
    d = bal.df
    return dict(bs=sorted(set(d.bs.tolist())), n=int(d.n.iloc[0]), steps=len(d), noise_scale=d.noise_scale.tolist(),
                train_loss=d.train_loss.tolist(), readings=bal.readings[['epoch', 'train_loss', 'valid_loss', 'reading']].to_dict('list'),
                reading=bal.verdict['reading'], world=bal.knobs.world, diagnosis=bal.diagnosis())

def adam_record(mon):
    d = mon.df
    return dict(steps=len(d), loss=d.loss.tolist(), rho=d.rho.dropna().tolist() if 'rho' in d else [],
                events=[(e.kind, e.step, e.epoch) for e in mon.events], predictions=mon.predictions, notes=mon.notes,
                layers=mon.layers)

def digits_case(arch, out):
    "The digits reference (BatchNorm ResNet) or the MLP without BatchNorm, all three callbacks with their defaults"
    res = dict(case=arch, rank=RANK)
    learn = digits_learner(arch, bs=32)  # 32 per process: a global batch of 64
    path = out/f'snaps_{arch}'
    mem, disk = WeightSnapshots(), WeightSnapshots(every=1, path=path, keep=2)
    bal, adam = RegularizationBalance(), AdamInstabilityMonitor()
    fit_ddp(learn, 3, 1e-2, [mem, disk, bal, adam], res)
    res['model'] = model_hash(learn)
    res['mem'] = {str(k): dict(hash=sd_hash(mem[k].state_dict()), metrics=mem[k].metrics) for k in mem.keys()}
    res['disk'] = {str(k): dict(fname=str(disk[k].fname), hash=sd_hash(disk[k].state_dict())) for k in disk.keys()}
    res['files'] = sorted(str(p.relative_to(path)) for p in path.rglob('*') if p.is_file()) if path.exists() else []
    res['saves'] = list(saves)
    res['balance'] = balance_record(bal)
    res['adam'] = adam_record(adam)
    if RANK == 0:  # after `distrib_ctx`, on rank 0 alone: the other process has finished and waits for nothing
        t = time.perf_counter()
        with local_process(learn): valid_loss = float(learn.validate()[0])  # fastai's own, without its gather
        line = learn.interpolate(mem[1], mem[2], alphas=np.linspace(-0.5, 1.5, 9), progress=False)
        plane = learn.loss_plane(mem[0], mem[1], mem[2], n=3, progress=False)
        preds, targs = learn.ensemble_preds(mem, progress=False)
        table = learn.compare_snapshots(mem)
        before = model_hash(learn)
        learn.load_averaged(mem)
        averaged = model_hash(learn)
        learn.restore_weights()
        res['analysis'] = dict(validate=valid_loss, line_valid=line.df.valid_loss.tolist(), plane_points=len(plane.df), ensemble_rows=int(preds.shape[0]),
                               ensemble_acc=float((preds.argmax(1) == targs).float().mean()), n_valid=len(learn.dls.valid_ds),
                               compare_rows=len(table), compare_finite=bool(np.isfinite(table.values.astype(float)).all()),
                               averaged_differs=averaged != before, restored=model_hash(learn) == before,
                               seconds=time.perf_counter() - t)
    return res

def adam_case(kind, out):
    "The StackExchange Adam question's case (fastai's Adam): 2 processes, each on the whole batch, so every step is the single-process step"
    res = dict(case=kind, rank=RANK)
    x, y = adam_seed_tensors()
    learn = adam_seed_learner(torch_adam=False)
    learn.dls = full_batch_dls(x, y, steps_per_epoch=50)  # 25 steps per process and epoch under DDP
    if kind == 'adam_defaults':
        mon = AdamInstabilityMonitor()
        fit_ddp(learn, 28, 1e-3, [WeightSnapshots(), RegularizationBalance(), mon], res, one_cycle=False)
    else:
        mon = AdamInstabilityMonitor(on_warning=None, on_alarm=kind.split('_')[1])
        fit_ddp(learn, 28, 1e-3, [mon], res, one_cycle=False)
    res['adam'] = adam_record(mon)
    res['model'] = model_hash(learn)
    with torch.no_grad(): res['final_loss'] = float(learn.loss_func(learn.model(x), y))
    return res

if __name__ == '__main__':
    out, cases = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    snapshots_module._save = _counted_save
    for case in cases:
        if case in ('resnet', 'mlp'): res = digits_case(case, out)
        elif case.startswith('adam'): res = adam_case(case, out)
        else: raise ValueError(f"unknown case {case!r}")
        saves.clear()
        (out/f'{case}.rank{RANK}.json').write_text(json.dumps(clean(res)))
    torch.distributed.destroy_process_group()  # gloo's threads stopped before the interpreter exits
