"Feature cache tests a notebook can't run: concurrent writer processes and the dflab CLI as a subprocess."
import multiprocessing as mp, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
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
    # racing writers can store the same images twice (whether these two did depends on timing, so one more writer
    # stores five of them again, as a late racer would): prune drops every shard another shard covers, keeping one copy
    from dflab.features import prune
    from dflab.features.cache import _redundant
    st = FeatureStore(tmp_path, cache_key(bb), 'final')
    some = sorted(st.entries)[:5]
    got, _ = st.get(some)
    FeatureStore(tmp_path, cache_key(bb), 'final').put(some, torch.stack([got[s] for s in some]))
    n0 = len(FeatureStore(tmp_path, cache_key(bb), 'final').shard_files())
    g = prune(tmp_path)
    assert g['shards'] == 0 and g['duplicates'] >= 1, g
    for l in ('final', 'cls:0'):
        st = FeatureStore(tmp_path, cache_key(bb), l)
        assert len(st) == 80 and not _redundant(st._shards)
    assert len(FeatureStore(tmp_path, cache_key(bb), 'final').shard_files()) < n0
    assert prune(tmp_path, dry_run=True)['duplicates'] == 0
    again = extract(df, bb, ['final', 'cls:0'], cache=tmp_path, num_workers=0, progress=False)
    assert again.stats['computed'] == 0 and all(torch.equal(again[l], warm[l]) for l in warm)

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
    r = run('features', '--manifest', m, '--cache', tmp_path/'c', '--batch-size', '0')
    assert r.returncode == 2 and '--batch-size must be at least 1' in r.stderr

def test_cli_missing_and_replaced_files(tmp_path, cli):
    "A file deleted or replaced after the manifest was built is named, never served from the cache; --skip-bad."
    import shutil as sh
    from dflab.synth import benchmark_manifest
    from dflab.data.manifest import new_manifest, write_manifest
    b = benchmark_manifest('tiny')
    for i in range(8): sh.copy(Path(b.attrs['root'])/b.path[i], tmp_path/f'{i}.png')
    m = write_manifest(new_manifest([{'path': f'{i}.png', 'label': int(b.label[i]), 'sha256': b.sha256[i]}
                                     for i in range(8)], tmp_path), tmp_path/'m.parquet')
    run = lambda *a: cli('features', '--manifest', m, '--cache', tmp_path/'c', '--no-progress', '--num-workers', '0', *a)
    assert run().returncode == 0
    (tmp_path/'2.png').unlink()
    st = (tmp_path/'5.png').stat()
    (tmp_path/'5.png').write_bytes((Path(b.attrs['root'])/b.path[9]).read_bytes())
    os.utime(tmp_path/'5.png', ns=(st.st_atime_ns, st.st_mtime_ns))    # same mtime: the ctime still tells
    r = run()
    assert r.returncode == 1 and '2.png (missing' in r.stderr and '5.png (changed' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and '--skip-bad' in r.stderr
    r = run('--skip-bad')
    assert r.returncode == 0 and '6 images' in r.stdout and '0 computed, 6 from cache' in r.stdout, r.stdout
    rej = pd.read_csv(tmp_path/'m.features-rejected.csv')
    assert sorted(zip(rej.path, rej.reason)) == [('2.png', 'missing'), ('5.png', 'changed')]
