"""Faults: kill -9 of `dflab features` and `dflab train` at seeded random points.

The campaign is slow (a few minutes): it runs only when DFLAB_TEST_FLAGS contains 'slow', e.g.
`DFLAB_TEST_FLAGS=slow pytest tests/test_faults.py -s`. After every kill of an extraction the cache is never corrupt
(a fresh extract returns a clean uncached run's features within float16 rounding, and `cache prune --dry-run` finds
no damaged shard, only writer debris); every killed training resumes to the uninterrupted run's test metrics exactly.
The quick test below (default suite) shows that a killed extraction keeps its work before `shard_rows` images."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch

SLOW = pytest.mark.skipif(os.environ.get('DFLAB_TEST_FLAGS', '').find('slow') < 0, reason='slow')
ENV = {**os.environ, 'DFLAB_THREADS': '1', 'OMP_NUM_THREADS': '1', 'DFLAB_LOG_LEVEL': 'WARNING'}
LAYERS = ['final', 'cls:0']

_EXTRACT = """
import sys, torch
torch.set_num_threads(1)
from dflab.synth import benchmark_manifest
from dflab.features import extract
from dflab.backbones import load_backbone
bb = load_backbone('openclip:dflab-tiny')
if {delay}:                                   # a slower backbone, so that the kill lands mid-run for sure
    import time; fwd = bb.forward_layers
    bb.forward_layers = lambda *a, **k: (time.sleep({delay}), fwd(*a, **k))[1]
extract(benchmark_manifest('tiny'), bb, {layers!r}, cache=sys.argv[1], num_workers=0,
        batch_size=8, shard_rows={shard_rows}, flush_every={flush_every}, progress=False)
print('done', flush=True)
"""

def _extractor(cache, shard_rows=5, flush_every=30.0, delay=0.0) -> subprocess.Popen:
    code = _EXTRACT.format(layers=LAYERS, shard_rows=shard_rows, flush_every=flush_every, delay=delay)
    return subprocess.Popen([sys.executable, '-c', code, str(cache)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

def _kill_at(p:subprocess.Popen, seconds:float) -> bool:
    "SIGKILL `p` after `seconds` (True), or False if it finished first."
    try: p.wait(seconds); return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL); p.wait(); return True

def _shards(cache) -> list[Path]: return sorted(Path(cache).rglob('shard-*.safetensors'))

@pytest.fixture(scope='module')
def tiny(tiny_bench):
    "The tiny benchmark, the tiny backbone and its clean (uncached, full precision) features."
    from dflab.features import extract
    df, bb = tiny_bench
    clean = extract(df, bb, LAYERS, cache=False, num_workers=0, progress=False)
    return df, bb, clean

def _check_cache(cache, tiny) -> dict:
    "The cache after a kill: nothing damaged (debris only), and a fresh extract gives the clean features."
    from dflab.features import extract, prune
    df, bb, clean = tiny
    g = prune(cache, dry_run=True)
    assert g['shards'] == 0, g                                   # never a damaged shard, at most writer debris
    t = extract(df, bb, LAYERS, cache=cache, num_workers=0, progress=False)
    for l in LAYERS:
        torch.testing.assert_close(t[l], clean[l], atol=2e-3 * float(clean[l].abs().max()), rtol=0)
    again = extract(df, bb, LAYERS, cache=cache, num_workers=0, progress=False)
    assert again.stats['computed'] == 0 and all(torch.equal(again[l], t[l]) for l in LAYERS)
    return {'kept': t.stats['hits'], 'debris': g['debris']}

def test_killed_extraction_keeps_its_work_below_shard_rows(tmp_path, tiny):
    "shard_rows=2048 (the default) on 400 images: only the time-based flush saves work before the kill."
    p = _extractor(tmp_path/'c', shard_rows=2048, flush_every=0.5, delay=0.1)    # 50 batches: 5 s at least
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and len(_shards(tmp_path/'c')) < 2: time.sleep(0.05)
    assert p.poll() is None, 'the extraction ended before it was killed'
    p.send_signal(signal.SIGKILL); p.wait()
    r = _check_cache(tmp_path/'c', tiny)
    assert 0 < r['kept'] < 400, r

@SLOW
def test_fault_campaign_features(tmp_path, tiny):
    "kill -9 `extract` (shard_rows=5, two layers) at 10 seeded random points; a fresh cache each time."
    t0 = time.time()
    p = _extractor(tmp_path/'full'); assert not _kill_at(p, 600) and 'done' in p.stdout.read()
    full = time.time() - t0
    _check_cache(tmp_path/'full', tiny)
    rng = np.random.default_rng(18)
    rows = []
    for i, at in enumerate(rng.uniform(0.1, 1.0, 10) * full):
        c = tmp_path/f'c{i}'
        killed = _kill_at(_extractor(c), at)
        rows.append({'at_s': round(float(at), 2), 'killed': killed, 'shards': len(_shards(c)), **_check_cache(c, tiny)})
        shutil.rmtree(c)
    print(f"\nfeatures: uninterrupted {full:.1f}s; {sum(r['killed'] for r in rows)} of {len(rows)} killed mid-run")
    for r in rows: print('  ', r)
    assert sum(r['killed'] for r in rows) >= 8                  # the points land inside the run
    assert any(r['kept'] > 0 for r in rows)                      # and a killed run keeps work

_CFG = """run: {{name: {name}, seed: 0, threads: 1, out_dir: '{out}'}}
data: {{benchmark: tiny}}
model: {{detector: linear-probe, backbone: 'openclip:dflab-tiny', cached: false}}
train: {{epochs: 12, batch_size: 32, n_boot: 0, plots: false, progress: false, tensorboard: false}}
"""

def _metrics(run:Path) -> dict:
    m = json.loads((run/'test_metrics.json').read_text())
    return {k: m[k] for k in ('n', 'auc', 'ap', 'eer', 'acc', 'acc_val', 'val_threshold')}

@SLOW
def test_fault_campaign_train(tmp_path):
    "kill -9 `dflab train` (images, not cached features) at 10 seeded points; each resumes to the same metrics."
    from dflab.core import load_config
    from dflab.train import TrainRunConfig, train
    dflab = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')
    def cfg_file(name):
        f = tmp_path/f'{name}.yaml'; f.write_text(_CFG.format(name=name, out=tmp_path/'runs')); return f
    t0 = time.time()
    r = subprocess.run([dflab, 'train', '--config', cfg_file('ref')], env=ENV, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    full = time.time() - t0
    ref = _metrics(tmp_path/'runs/ref')
    rng = np.random.default_rng(18)
    rows = []
    for i, at in enumerate(rng.uniform(0.15, 1.0, 10) * full):
        name = f'k{i}'
        p = subprocess.Popen([dflab, 'train', '--config', cfg_file(name)], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        killed = _kill_at(p, at)
        run = tmp_path/'runs'/name
        cks = sorted(p.name for p in (run/'checkpoints').glob('epoch-*')) if (run/'checkpoints').is_dir() else []
        cfg = load_config(TrainRunConfig, cfg_file(name))
        resumed = (run/'config.yaml').is_file()
        if not resumed and run.exists(): shutil.rmtree(run)      # killed while the run directory was being made
        train(cfg, resume=run if resumed else None)
        got = _metrics(run)
        rows.append({'at_s': round(float(at), 2), 'killed': killed, 'checkpoints': len(cks), 'resumed': resumed,
                     'same': got == ref})
        assert got == ref, (rows[-1], got, ref)
    print(f"\ntrain: uninterrupted {full:.1f}s; {sum(r['killed'] for r in rows)} of {len(rows)} killed mid-run")
    for r in rows: print('  ', r)
    assert sum(r['killed'] for r in rows) >= 8
    assert sum(r['checkpoints'] > 0 for r in rows) >= 3          # some kills land after checkpoints were written
