"""The bad-input corpus (dflab.data.badinputs): every case through the command or function a user would hit.

Each case asserts its exit code or error, that the message (or the report it points to) names the file or the
config key, and that every good row survives. Also here: non-UTF-8 names through `dflab data build` in every
mode, the config bounds, damaged saved models and checkpoints, and the network guard of conftest.py."""
import json, logging, os, re, shutil, socket, subprocess, sys
from dataclasses import dataclass, field
from pathlib import Path
import pandas as pd
import pytest
import torch

from conftest import NET_LOG
from dflab.core import ConfigError, DflabError, at_least, check_config, checked, fraction, load_config, positive
from dflab.data import badinputs as bi
from dflab.data.manifest import read_manifest

DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')

def sh(*args):
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, errors='backslashreplace',
                          timeout=300)

def _bad(table):
    "The rows whose outcome is not the expected one (exit, outcome, file or key named, good rows kept)."
    table = table.assign(ok=[bi.case_ok(r) for r in table.itertuples()])
    cols = ['case', 'input', 'want_exit', 'exit', 'expect', 'observed', 'named', 'good_rows_kept']
    return table[~table.ok][cols].to_dict('records')

# --- the corpus, part by part -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return bi.image_outcomes(tmp_path_factory.mktemp('images'))

def test_image_corpus_every_file(images):
    "Each bad file gets its reason and is named in the report and the rejected rows; every good row survives."
    assert len(images) >= 25 and images.case.nunique() >= 20
    assert set(images.exit) == {'1 / 0'}                     # fails naming the files; --skip-bad writes the rest
    assert images.good_rows_kept.all()
    for r in images.itertuples():
        assert r.expect in r.observed.split(';') and r.named, r
    assert not _bad(images)

def test_folders_and_every_layout(tmp_path):
    t = bi.folder_outcomes(tmp_path)
    layouts = ('dflip3k', 'class-folders', 'forensynths', 'genimage', 'df40', 'csv', 'json')
    assert {f'non-UTF-8 name ({l})' for l in layouts} <= set(t.case)
    assert not _bad(t)

def test_damaged_manifests(tmp_path):
    t = bi.manifest_outcomes(tmp_path)
    assert (t.exit == '1').all() and t.named.all() and not _bad(t)

def test_bad_configs(tmp_path):
    t = bi.config_outcomes(tmp_path)
    assert (t.exit == 'ConfigError (exit 2)').all() and t.named.all() and not _bad(t)

def test_damaged_models_and_checkpoints(tmp_path):
    t = bi.weights_outcomes(tmp_path)
    assert not _bad(t)
    assert (t[t.through == 'load_detector'].exit == 'DflabError (exit 1)').all()
    assert list(t[t.exit == 'warning'].observed) == ['resumes from epoch-1'] * 2

def test_features_eval_predict(tmp_path):
    "Files changed after the build (features), one-class sets (eval), unreadable inputs and --out (predict)."
    t = bi.pipeline_outcomes(tmp_path)
    assert len(t) == 7 and not _bad(t)
    assert set(t[t.through == 'eval'].observed.str.contains('no AUC')) == {True}

# --- non-UTF-8 names through the CLI, every mode ------------------------------------------------------------------

@pytest.fixture
def latin1_tree(tmp_path):
    "A DFLIP-3K tree of four good images and one named caf\\xe9.png in Latin-1 bytes."
    r = tmp_path/'ds'
    for i, rel in enumerate(['real/images/a.png', 'real/images/b.png', 'fake/g/images/c.png', 'fake/g/images/d.png']):
        bi._noise(seed=i).save(bi._at(r, rel))
    bi._noise(seed=9).save(bi._at(r, b'real/images/caf\xe9.png'), 'PNG')
    return r

@pytest.mark.parametrize('validate', [False, True], ids=['cheap', 'validate-images'])
def test_non_utf8_name_fails_naming_it_then_skip_bad_keeps_the_rest(latin1_tree, tmp_path, validate):
    out = tmp_path/'m.parquet'
    args = ['data', 'build', '--layout', 'dflip3k', '--root', latin1_tree, '--out', out]
    args += ['--validate-images'] if validate else []
    r = sh(*args)
    assert r.returncode == 1, r.stderr
    assert 'undecodable_name' in r.stderr and 'real/images/caf\\xe9.png' in r.stderr   # named, readably
    assert r.stderr.strip().splitlines()[-1].startswith('dflab: error: 1 bad files') and 'Traceback' not in r.stderr
    rep = pd.read_csv(tmp_path/'m.report.csv')
    assert rep[['path', 'reason']].values.tolist() == [['real/images/caf\\xe9.png', 'undecodable_name']]
    assert not out.exists()
    r = sh(*args, '--skip-bad')
    assert r.returncode == 0, r.stderr
    assert sorted(read_manifest(out).path) == ['fake/g/images/c.png', 'fake/g/images/d.png', 'real/images/a.png',
                                               'real/images/b.png']
    assert pd.read_csv(tmp_path/'m.rejected.csv').reason.tolist() == ['undecodable_name']
    assert '4 images (2 real, 2 fake)' in r.stdout

def test_every_file_rejected_is_an_error_not_an_empty_manifest(tmp_path):
    bi._noise().save(bi._at(tmp_path/'ds', b'real/images/caf\xe9.png'), 'PNG')
    (tmp_path/'ds/fake').mkdir()
    r = sh('data', 'build', '--layout', 'dflip3k', '--root', tmp_path/'ds', '--out', tmp_path/'m.parquet', '--skip-bad')
    assert r.returncode == 1 and 'no images found' in r.stderr and 'caf\\xe9.png' in r.stderr, r.stderr

def test_numeric_options_are_usage_errors(tmp_path):
    r = sh('data', 'build', '--layout', 'dflip3k', '--root', tmp_path, '--out', tmp_path/'m.parquet', '--workers', '0')
    assert r.returncode == 2 and '--workers: must be >= 1, got 0' in r.stderr
    r = sh('data', 'split', '--manifest', tmp_path/'m.parquet', '--protocol', 'random', '--test-size', '-0.2',
           '--out', tmp_path/'s.csv')
    assert r.returncode == 2 and '--test-size: must be in [0, 1], got -0.2' in r.stderr

# --- config bounds on a small test dataclass ----------------------------------------------------------------------

@dataclass
class Loop:
    epochs: int = checked(15, positive)
    batch_size: int = checked(32, positive)
    warmup_epochs: float = checked(0.0, at_least(0))
    val_fraction: float = checked(0.15, fraction)
    patience: int|None = checked(None, at_least(1))

@dataclass
class Cfg:
    train: Loop = field(default_factory=Loop)

@pytest.mark.parametrize('override, message', [
    ('train.epochs=-1', 'train.epochs: must be > 0, got -1'),
    ('train.batch_size=0', 'train.batch_size: must be > 0, got 0'),
    ('train.warmup_epochs=-0.5', 'train.warmup_epochs: must be >= 0, got -0.5'),
    ('train.val_fraction=2', 'train.val_fraction: must be in [0, 1], got 2.0'),
    ('train.patience=0', 'train.patience: must be >= 1, got 0'),
    ('train.epochs=.inf', "train.epochs: expected an integer, got inf"),
])
def test_config_values_are_checked_up_front(override, message):
    with pytest.raises(ConfigError) as e: load_config(Cfg, overrides=[override])
    assert str(e.value) == message and e.value.exit_code == 2

def test_config_bounds_allow_unset_and_defaults(tmp_path):
    assert load_config(Cfg, overrides=['train.patience=null', 'train.warmup_epochs=0']).train.patience is None
    (tmp_path/'c.yaml').write_text('{}\n')
    assert load_config(Cfg, tmp_path/'c.yaml') == Cfg()
    with pytest.raises(ConfigError, match='train.epochs: must be > 0, got 0'): check_config(Cfg(train=Loop(epochs=0)))

def test_empty_config_file_is_an_error_naming_it(tmp_path):
    (tmp_path/'empty.yaml').write_text('')
    with pytest.raises(ConfigError, match=re.escape(f"config file {tmp_path/'empty.yaml'} is empty")):
        load_config(Cfg, tmp_path/'empty.yaml')

# --- saved models and checkpoints -----------------------------------------------------------------------------------

def test_damaged_weights_name_the_file_and_the_fix(tmp_path):
    from dflab.detectors import create_detector, load_detector, save_detector
    save_detector(create_detector('mlp-head', in_dim=8), tmp_path/'best')
    w = tmp_path/'best/model.safetensors'; w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(DflabError) as e: load_detector(tmp_path/'best')
    msg = str(e.value)
    assert str(w) in msg and 'damaged or incomplete' in msg and 'checkpoints/epoch-N' in msg
    assert 'SafetensorError' in msg and e.value.exit_code == 1

def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    from dflab.checkpoints import latest_checkpoint, load_checkpoint, write_dir
    from safetensors.torch import save_file
    for e in (1, 2, 3):
        def fill(p, e=e):
            save_file({'w': torch.full((2,), float(e))}, p/'model.safetensors')
            save_file({'0.step': torch.zeros(1)}, p/'optimizer.safetensors')
            (p/'detector.json').write_text(json.dumps({'detector': {'name': 'linear-probe', 'in_dim': 2}, 'epoch': e}))
            (p/'trainer_state.json').write_text(json.dumps({'epoch': e, 'optimizer': {}}))
        write_dir(tmp_path/'checkpoints'/f'epoch-{e}', fill)
    m = tmp_path/'checkpoints/epoch-3/model.safetensors'; m.write_bytes(m.read_bytes()[:-4])
    with caplog.at_level(logging.WARNING, logger='dflab.checkpoints'):
        logging.getLogger('dflab').propagate = True
        try: ck = latest_checkpoint(tmp_path)
        finally: logging.getLogger('dflab').propagate = False
    assert ck.name == 'epoch-2'
    assert any('epoch-3' in r.getMessage() and 'model.safetensors' in r.getMessage() for r in caplog.records)
    model, opt, state = load_checkpoint(ck)
    assert state['epoch'] == 2 and model['w'][0].item() == 2.0

# --- the network guard ---------------------------------------------------------------------------------------------

def test_sockets_beyond_this_machine_are_blocked(tmp_path):
    from dflab.core import network_reachable
    start = NET_LOG.stat().st_size if NET_LOG.exists() else 0
    try:
        with pytest.raises(OSError, match='network access blocked'):
            socket.create_connection(('192.0.2.1', 443), timeout=1)
        with pytest.raises(OSError, match='network access blocked'): socket.getaddrinfo('huggingface.co', 443)
        assert network_reachable() is False                             # dflab sees "offline", as it should
        code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
        assert r.returncode == 1 and 'network access blocked' in r.stderr   # subprocesses carry the guard too
        assert NET_LOG.read_text().count('192.0.2.1') == 2 and 'huggingface.co' in NET_LOG.read_text()
    finally:
        with open(NET_LOG, 'r+') as f: f.truncate(start)               # these attempts were on purpose
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)     # loopback stays open
    with socket.create_connection(srv.getsockname(), timeout=5): pass
    srv.close()
    u = socket.socket(socket.AF_UNIX); u.bind(str(tmp_path/'s')); u.listen(1)   # and unix sockets
    with socket.socket(socket.AF_UNIX) as c: c.connect(str(tmp_path/'s'))
    u.close()

def test_resume_names_the_path_given(tmp_path):
    "`--resume runs/nope` says `runs/nope`, not the runs directory joined to it again."
    env = {**os.environ, 'DFLAB_RUNS': str(tmp_path/'runs')}
    cli = 'import sys; from dflab.cli import main; sys.exit(main(sys.argv[1:]))'
    r = subprocess.run([sys.executable, '-c', cli, 'train', '--config', 'linear-probe', '--resume', 'runs/nope'],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 1 and 'no run directory runs/nope' in r.stderr and 'runs/runs' not in r.stderr, r.stderr

def test_a_pickled_checkpoint_cannot_run_code(tmp_path):
    "A foreign .pt checkpoint is read with torch.load(weights_only=True): a pickle that would run code is refused."
    import pickle
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (open, (str(marker), 'w'))
    (tmp_path/'evil.pt').write_bytes(pickle.dumps({'state_dict': Evil()}))
    from dflab.core import DflabError
    from dflab.backbones import load_backbone
    with pytest.raises(Exception): load_backbone(f'openclip:dflab-tiny@{tmp_path/"evil.pt"}')
    assert not marker.exists()
