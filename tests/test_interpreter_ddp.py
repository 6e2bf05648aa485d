"""The Stage 2 Interpreter on two processes (DDP on gloo, CPU, started as in test_train_ddp): one run directory, and
every test image gets exactly one report although the processes generate their shards separately."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

ACCELERATE = shutil.which('accelerate', path=str(Path(sys.executable).parent)) or shutil.which('accelerate')
ENV = {**os.environ, 'DFLAB_THREADS': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


@pytest.mark.skipif(ACCELERATE is None, reason='accelerate is not installed')
def test_two_processes_write_one_report_per_image(tmp_path):
    (tmp_path/'launch.py').write_text("import sys\nfrom dflab.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                        '--mixed_precision', 'no', '--dynamo_backend', 'no', str(tmp_path/'launch.py'),
                        'train', '--config', 'interpreter-tiny', '--debug', '--steps', '2', f'run.out_dir={tmp_path}',
                        'run.device=cpu', 'generation.max_new_tokens=12'],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'interpreter-tiny'
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ['interpreter-tiny']
    assert '2 process(es)' in (run/'run.log').read_text() and r.stdout.count('judgement: accuracy') == 1
    reports = pd.read_csv(run/'reports.csv')
    m = json.loads((run/'metrics.json').read_text())
    assert len(reports) == m['free']['judgement']['n'] == 105 and reports['index'].is_unique
    state = json.loads((run/'checkpoints'/'epoch-1'/'trainer_state.json').read_text())
    assert state['step'] == 2
