"Feature cache tests a notebook can't run: concurrent writer processes and the dflab CLI as a subprocess."
import multiprocessing as mp, os, shutil, subprocess, sys
from pathlib import Path
import pytest

def _writer(cache, rows, seed, q):
    "Extract a shuffled slice of the tiny benchmark into a shared cache, flushing a shard every few images."
    import torch, numpy as np
    torch.set_num_threads(1)
    from dflab.synth import benchmark_manifest
    from dflab.features import extract
    df = benchmark_manifest('tiny')
    idx = np.random.default_rng(seed).permutation(rows)
    sub = df.iloc[idx].reset_index(drop=True); sub.attrs = dict(df.attrs)
    t = extract(sub, 'openclip:dflab-tiny', ['final', 'cls:0'], cache=cache, num_workers=0, shard_rows=5, progress=False)
    q.put(t.stats['computed'])

def test_concurrent_writers(tmp_path):
    import torch
    torch.set_num_threads(1)
    from dflab.synth import benchmark_manifest
    from dflab.features import extract, FeatureStore, cache_key
    from dflab.backbones import load_backbone
    df = benchmark_manifest('tiny').iloc[:80]
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(tmp_path, list(range(80)), s, q)) for s in (1, 2)]
    for p in procs: p.start()
    for p in procs: p.join(1800)                         # a hang guard only; the writers take seconds
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert sum(q.get() for _ in procs) >= 80              # every image computed at least once
    assert not list(tmp_path.rglob('*.tmp'))              # no debris from atomic writes
    bb = load_backbone('openclip:dflab-tiny')
    warm = extract(df, bb, ['final', 'cls:0'], cache=tmp_path, num_workers=0, progress=False)
    assert warm.stats['computed'] == 0 and warm.stats['hits'] == 80
    cold = extract(df, bb, ['final', 'cls:0'], cache=False, num_workers=0, progress=False)
    for l in cold: torch.testing.assert_close(warm[l], cold[l], atol=2e-3 * float(cold[l].abs().max()), rtol=0)
    assert len(FeatureStore(tmp_path, cache_key(bb), 'final')) == 80

def test_cli_subprocess(tmp_path):
    from dflab.synth import benchmark_manifest
    from dflab.data.manifest import write_manifest
    df = benchmark_manifest('tiny').iloc[:16]
    m = write_manifest(df, tmp_path/'m.parquet')
    env = {**os.environ, 'DFLAB_THREADS': '1'}
    dflab = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')
    run = lambda *a: subprocess.run([dflab, *map(str, a)], capture_output=True, text=True, env=env, timeout=300)
    r = run('features', '--manifest', m, '--cache', tmp_path/'c', '--layers', 'final', 'cls:*', '--no-progress', '--num-workers', '1')
    assert r.returncode == 0, r.stderr
    assert '16 computed, 0 from cache' in r.stdout and 'cls:3' in r.stdout
    r = run('features', '--manifest', m, '--backbone', 'openclip:ViT-B-32@/no/such.safetensors', '--cache', tmp_path/'c')
    assert r.returncode == 1 and 'weights file not found' in r.stderr and 'Traceback' not in r.stderr
