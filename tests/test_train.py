"`dflab train`, `eval`, `predict` and `bench train` as a user runs them: resume after a real kill, corrupt images, shipped configs."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')
ENV = {**os.environ, 'DFLAB_THREADS': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}

def sh(*args, timeout=600):
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)

def write_cfg(path, out_dir, name, **train):
    cfg = {'run': {'name': name, 'out_dir': str(out_dir), 'threads': 1, 'seed': 3},
           'data': {'benchmark': 'tiny'}, 'model': {'detector': 'mlp-head'},
           'train': {'epochs': 3, 'lr': 3e-3, 'n_boot': 0, 'plots': False, 'progress': False, **train}}
    path.write_text(yaml.safe_dump(cfg)); return path

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    r = sh('train', '--config', write_cfg(d/'c.yaml', d, 'base'))
    assert r.returncode == 0, r.stderr
    return d/'base'

def test_train_writes_the_run_directory(trained):
    names = {p.name for p in trained.iterdir()}
    for f in ('config.yaml', 'manifest.sha256', 'run.log', 'checkpoints', 'best', 'final', 'predictions.csv', 'metrics.json',
              'test_predictions.csv', 'test_metrics.json', 'final_model.safetensors', 'report.md', 'per_generator.csv'):
        assert f in names, f
    m = json.loads((trained/'test_metrics.json').read_text())
    assert 0 <= m['auc'] <= 1 and 'acc_val' in m and 'val_threshold' in m

def test_resume_after_kill_matches_uninterrupted(tmp_path):
    "Kill -9 a real `dflab train` after its second checkpoint; --resume finishes with the metrics of an uninterrupted run."
    # images end to end (cached: false) makes each epoch take a second or more, so the kill lands mid-run
    over = {'epochs': 5}
    cfg = write_cfg(tmp_path/'c.yaml', tmp_path, 'cut', **over)
    y = yaml.safe_load(cfg.read_text()); y['model']['cached'] = False; cfg.write_text(yaml.safe_dump(y))
    p = subprocess.Popen([DFLAB, 'train', '--config', str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    ck = tmp_path/'cut'/'checkpoints'/'epoch-2'/'trainer_state.json'
    t0 = time.time()
    while not ck.exists():
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 1800, 'hang guard: no second checkpoint after 30 minutes'
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (tmp_path/'cut'/'test_metrics.json').exists() and not (tmp_path/'cut'/'checkpoints'/'epoch-5').exists()
    r = sh('train', '--config', cfg, '--resume', tmp_path/'cut')
    assert r.returncode == 0, r.stderr
    assert 'resuming' in (tmp_path/'cut'/'run.log').read_text()
    y['run']['name'] = 'full'; (tmp_path/'f.yaml').write_text(yaml.safe_dump(y))
    r = sh('train', '--config', tmp_path/'f.yaml')
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path/'cut'/'test_metrics.json').read_text()); b = json.loads((tmp_path/'full'/'test_metrics.json').read_text())
    for k in ('auc', 'ap', 'eer', 'acc', 'acc_val', 'val_threshold'): assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert sorted(p.name for p in (tmp_path/'cut'/'checkpoints').iterdir()) == [f'epoch-{i}' for i in range(1, 6)]

def test_predict_folder_with_corrupt_image(trained, tmp_path, cli):
    from dflab.synth import get_benchmark
    src = sorted((get_benchmark('tiny')/'real').rglob('*.png'))[:2]
    for i, f in enumerate(src): shutil.copy(f, tmp_path/f'ok{i}.png')
    (tmp_path/'bad.jpg').write_bytes(b'\xff\xd8\xff garbage')
    (tmp_path/'notes.txt').write_text('not an image')
    r = cli('predict', '--run', trained, tmp_path)
    assert r.returncode == 1 and '1 of 3 inputs could not be read' in r.stderr, r.stderr   # a failure is not a success
    r = cli('predict', '--run', trained, tmp_path, '--out', tmp_path/'scores.csv', '--skip-bad')
    assert r.returncode == 0, r.stderr
    assert 'bad.jpg' in r.stderr and r.stdout.count('.png') == 2
    df = pd.read_csv(tmp_path/'scores.csv')
    assert len(df) == 3 and df.error.notna().sum() == 1 and df.dropna(subset=['score']).label.isin(['real', 'fake']).all()
    (tmp_path/'ok0.png').unlink(); (tmp_path/'ok1.png').unlink()
    r = cli('predict', '--run', trained, tmp_path)
    assert r.returncode == 1 and 'none of the 1 images could be read' in r.stderr

def test_eval_with_perturbation(trained, cli):
    r = cli('eval', '--run', trained, '--perturb', 'jpeg:75,blur:1.0', '--n-boot', '0')
    assert r.returncode == 0, r.stderr
    out = trained/'eval-own-test-jpeg75-blur1.0'
    assert (out/'test_metrics.json').exists() and (out/'roc_curve.png').exists()
    r = cli('eval', '--run', trained, '--perturb', 'gamma:2')
    assert r.returncode == 1 and "unknown perturbation 'gamma'" in r.stderr
    r = cli('eval', '--run', trained, '--perturb', 'jpeg=75')          # the old name=value form says what to write
    assert r.returncode == 1 and "write 'jpeg:75'" in r.stderr

def test_mode_test_needs_a_run(tmp_path):
    r = sh('train', '--config', write_cfg(tmp_path/'c.yaml', tmp_path, 'never'), '--mode', 'test')
    assert r.returncode == 1 and '--mode test evaluates an existing run' in r.stderr

def test_shipped_configs_load_and_run_on_the_benchmark():
    "Every shipped config loads, names a registered detector, and its protocol splits the benchmark."
    from dflab.core import load_config, read_yaml
    from dflab.detectors import list_detectors
    from dflab.synth import benchmark_manifest
    from dflab.train import TrainRunConfig, config_path, configs_dir, list_configs, make_splits
    names = list_configs()
    assert set(names) >= {'linear-probe', 'mlp-head', 'prompt-adapter', 'linear-probe-cross', 'mlp-head-cross',
                          'prompt-adapter-cross', 'linear-probe-logo'}
    assert len(names) == len(list(configs_dir().glob('*.yaml')))
    for n in names:
        if read_yaml(config_path(n)).get('task', 'detector') != 'detector': continue   # profiler-*: test_profiler.py
        c = load_config(TrainRunConfig, config_path(n))
        assert c.model.detector in list_detectors(), n
        assert all(len(v) for v in make_splits(benchmark_manifest('tiny'), c.data).values()), n

def test_bench_train_prints_every_path():
    r = sh('bench', 'train', '--scale', 'tiny', '--epochs', '2', '--threads', '1')
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith(('recompute', 'cached'))]
    assert len(rows) == 3, r.stdout
    auc = [float(l.split()[-1]) for l in rows]
    assert max(auc) - min(auc) < 0.02, r.stdout
    bare = [l for l in r.stdout.splitlines() if l.startswith('bare PyTorch loop')]      # the fourth row: the limit
    assert len(bare) == 1 and 0.5 < float(bare[0].split()[-1]) <= 1, r.stdout
    for l in rows + bare:                                       # start-up, epochs, evaluation and their sum, per path
        start, epochs, ev, wall = map(float, l.split()[-6:-2])
        assert min(start, epochs, ev) >= 0 and wall == pytest.approx(start + epochs + ev, abs=0.02), l

HEAVY = ('open_clip', 'torchvision', 'transformers', 'diffusers', 'peft', 'seaborn', 'matplotlib', 'sklearn', 'torch._dynamo')

def test_warm_cache_training_imports_no_heavy_library(tmp_path):
    "Training and evaluating on cached features with a warm cache knows the backbone from its cache record and imports "
    "no backbone library, scikit-learn, seaborn or torch._dynamo; matplotlib only when it draws the plots."
    cfg = write_cfg(tmp_path/'c.yaml', tmp_path, 'warm', epochs=1)
    y = yaml.safe_load(cfg.read_text()); y['model']['detector'] = 'prompt-adapter'; cfg.write_text(yaml.safe_dump(y))
    code = ("import json, sys; from dflab.cli import main; rc = main(['train', '--config', *sys.argv[1:]]); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules])); sys.exit(rc)")
    def imported(*overrides):
        r = subprocess.run([sys.executable, '-c', code, str(cfg), *overrides], capture_output=True, text=True, env=ENV,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])
    imported('run.name=cold')                                   # (this run fills the cache if needed)
    assert imported('run.name=warm') == []
    assert imported('run.name=plots', 'train.plots=true') == ['matplotlib']
    assert (tmp_path/'plots'/'roc_curve.png').exists()
    a, b = (json.loads((tmp_path/n/'test_metrics.json').read_text()) for n in ('cold', 'warm'))
    assert a['auc'] == b['auc'] and a['val_threshold'] == b['val_threshold']      # and learns exactly the same
