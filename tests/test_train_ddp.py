"""Training and evaluation on two processes (DDP on gloo, CPU): every sample is scored exactly once.

accelerate 1.x starts several *CPU* processes only through mpirun when given `--cpu`; without MPI, `--cpu
--num_processes 2` silently runs one process. `--multi_gpu --num_processes 2` on a machine without GPUs starts
two processes with torchrun, and dflab's Trainer (device cpu) then runs them as accelerate's MULTI_CPU (gloo)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import yaml

ACCELERATE = shutil.which('accelerate', path=str(Path(sys.executable).parent)) or shutil.which('accelerate')
ENV = {**os.environ, 'DFLAB_THREADS': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}

@pytest.mark.skipif(ACCELERATE is None, reason='accelerate is not installed')
def test_two_processes_gather_each_sample_once(tmp_path):
    # odd split sizes (89 test, 81 val) so DistributedSampler must pad one shard with a repeated sample
    cfg = {'run': {'name': 'ddp', 'out_dir': str(tmp_path), 'threads': 1, 'device': 'cpu'},
           'data': {'benchmark': 'tiny', 'test_fraction': 0.2, 'val_fraction': 0.18},
           'model': {'detector': 'prompt-adapter'},
           'train': {'epochs': 2, 'lr': 3e-3, 'batch_size': 16, 'eval_batch_size': 8, 'n_boot': 0, 'plots': False, 'progress': False}}
    (tmp_path/'c.yaml').write_text(yaml.safe_dump(cfg))
    (tmp_path/'launch.py').write_text("import sys\nfrom dflab.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
                        '--dynamo_backend', 'no', str(tmp_path/'launch.py'), 'train', '--config', str(tmp_path/'c.yaml')],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'ddp'
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ['ddp']      # one run directory, not one per process
    assert '2 process(es)' in (run/'run.log').read_text()
    from dflab.synth import benchmark_manifest
    from dflab.train import DataConfig, make_splits
    sizes = {k: len(v) for k, v in make_splits(benchmark_manifest('tiny'), DataConfig(**cfg['data'])).items()}
    assert sizes['test'] % 2 and sizes['val'] % 2, sizes                           # both shards need padding
    preds = pd.read_csv(run/'predictions.csv')
    for split, n in (('test', sizes['test']), ('val', sizes['val'])):
        part = preds[preds.split == split]
        assert len(part) == n and part['index'].is_unique, (split, len(part))
    ddp = json.loads((run/'test_metrics.json').read_text())
    assert ddp['n'] == sizes['test']
    # the same saved model evaluated in one process gives the same metrics
    from dflab.cli import run_cli
    c = yaml.safe_load((run/'config.yaml').read_text())
    (tmp_path/'resolved.yaml').write_text(yaml.safe_dump(c))
    rc, out, err = run_cli('train', '--config', tmp_path/'resolved.yaml', '--mode', 'test', '--resume', run)
    assert rc == 0, err
    one = json.loads((run/'test_metrics.json').read_text())
    for k in ('auc', 'ap', 'eer', 'acc_val'): assert one[k] == pytest.approx(ddp[k], abs=1e-6), k
