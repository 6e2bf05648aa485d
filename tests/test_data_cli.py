"`dflab data` as a user runs it (subprocesses), and ForensicDataset inside DataLoader worker processes."
import shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image

DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')

def sh(*args):
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, timeout=300)

def _noise(p, seed, size=(24, 16)):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)

@pytest.fixture
def tree(tmp_path):
    "Class folders with one zero-byte file, one truncated JPEG and one real/fake duplicate."
    r = tmp_path/'faces'
    for c in ['Real_youtube', 'FaceSwap', 'NeuralTextures']:
        for i in range(5): _noise(r/c/f'{c}_{i}.jpg', seed=hash((c, i)) % 2**32)
    (r/'FaceSwap/empty.jpg').write_bytes(b'')
    raw = (r/'NeuralTextures/NeuralTextures_0.jpg').read_bytes()
    (r/'NeuralTextures/NeuralTextures_0.jpg').write_bytes(raw[:len(raw) // 2])
    shutil.copy(r/'Real_youtube/Real_youtube_1.jpg', r/'FaceSwap/copied_real.jpg')
    return r

def test_build_fails_with_summary_then_skip_bad(tree, tmp_path):
    out = tmp_path/'faces.parquet'
    r = sh('data', 'build', '--layout', 'class-folders', '--root', tree, '--out', out, '--validate-images', '--real-classes', 'Real_youtube')
    assert r.returncode == 1, r.stderr
    for reason in ('zero_byte', 'truncated', 'duplicate_real_fake'): assert reason in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('dflab: error: 4 bad files')
    assert not out.exists() and (tmp_path/'faces.report.csv').exists()

    r = sh('data', 'build', '--layout', 'class-folders', '--root', tree, '--out', out, '--validate-images', '--skip-bad',
           '--real-classes', 'Real_youtube', '--workers', 2)
    assert r.returncode == 0, r.stderr
    rej = pd.read_csv(tmp_path/'faces.rejected.csv')
    assert sorted(rej.reason) == ['duplicate_real_fake', 'duplicate_real_fake', 'truncated', 'zero_byte']
    assert set(rej.path) == {'FaceSwap/empty.jpg', 'NeuralTextures/NeuralTextures_0.jpg', 'FaceSwap/copied_real.jpg', 'Real_youtube/Real_youtube_1.jpg'}
    assert '13 images (4 real, 9 fake)' in r.stdout

    r = sh('data', 'split', '--manifest', out, '--protocol', 'cross-manipulation', '--out', tmp_path/'xm.csv')
    assert r.returncode == 0, r.stderr
    s = pd.read_csv(tmp_path/'xm.csv')
    assert set(s.split[s.path.str.startswith('NeuralTextures')]) == {'test'}
    assert set(s.split[s.path.str.startswith('FaceSwap')]) == {'train'}
    r = sh('data', 'info', '--manifest', out)
    assert r.returncode == 0 and 'FaceSwap' in r.stdout and 'validated: yes' in r.stdout

def test_without_validation_only_cheap_checks(tree, tmp_path):
    r = sh('data', 'build', '--layout', 'class-folders', '--root', tree, '--out', tmp_path/'m.parquet', '--skip-bad')
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path/'m.rejected.csv').reason.tolist() == ['zero_byte']

def test_usage_and_user_errors(tmp_path):
    assert sh('data', 'build', '--root', tmp_path, '--out', tmp_path/'m.parquet').returncode == 2      # --layout missing
    r = sh('data', 'build', '--layout', 'nope', '--root', tmp_path, '--out', tmp_path/'m.parquet')
    assert r.returncode == 1 and "unknown layout 'nope'" in r.stderr
    r = sh('data', 'build', '--layout', 'class-folders', '--root', tmp_path/'missing', '--out', tmp_path/'m.parquet')
    assert r.returncode == 1 and 'dataset root not found' in r.stderr

def test_bad_file_in_a_dataloader_worker_names_the_file(tmp_path):
    "A file broken after the build raises DflabError naming it, from inside a worker process."
    import torch
    from dflab.core import DflabError
    from dflab.data.manifest import new_manifest
    from dflab.data.datasets import ForensicDataset
    for i in range(4): _noise(tmp_path/f'{i}.png', seed=i)
    (tmp_path/'2.png').write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    m = new_manifest([{'path': f'{i}.png', 'label': i % 2, 'generator': 'real' if i % 2 == 0 else 'g'} for i in range(4)], root=tmp_path)
    dl = torch.utils.data.DataLoader(ForensicDataset(m), batch_size=1, num_workers=2)
    with pytest.raises(DflabError, match='2.png'):
        for _ in dl: pass

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize('script', ['dflip3k', 'ffpp', 'df40', 'genimage', 'ufd'])
def test_data_prep_scripts_document_their_layout(script):
    r = subprocess.run([sys.executable, ROOT/'data_prep'/f'{script}.py', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'Expected download layout' in r.stdout and '<root>' in r.stdout, r.stdout

def test_data_prep_dflip3k_writes_manifest_and_meta(tmp_path):
    import json
    from dflab.data.manifest import read_dflip_meta, read_manifest
    r = tmp_path/'dflip'
    for i in range(3): _noise(r/f'real/images/{i}.png', seed=i)
    for i in range(2): _noise(r/f'fake/sd-v1.5/images/{i}.png', seed=10 + i)
    (r/'fake/sd-v1.5/prompts.txt').write_text('a cat\na dog\n')
    res = subprocess.run([sys.executable, ROOT/'data_prep'/'dflip3k.py', '--root', r, '--out', tmp_path/'d.parquet',
                          '--meta', tmp_path/'dflip3k_meta.json'], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    m = read_manifest(tmp_path/'d.parquet')
    assert len(m) == 5 and m.sha256.notna().all()
    back = read_dflip_meta(tmp_path/'dflip3k_meta.json', root=r)
    assert back.prompt.dropna().tolist() == ['a cat', 'a dog']
    assert json.loads((tmp_path/'dflip3k_meta.json').read_text())[3]['generator_id'] == 1

def test_ffpp_h5_through_cli_and_data_prep(tmp_path):
    "Key names go through --opt; a wrong key lists the datasets found; data_prep/ffpp.py reads the defaults."
    import h5py
    from dflab.data.manifest import read_manifest
    rng = np.random.default_rng(0)
    (tmp_path/'h5').mkdir()
    with h5py.File(tmp_path/'h5'/'FF++_FaceSwap_c23.h5', 'w') as f:
        f['frames'] = rng.integers(0, 255, (3, 12, 12, 3), dtype=np.uint8); f['y'] = np.array([0, 1, 1])
    r = sh('data', 'build', '--layout', 'ffpp-h5', '--root', tmp_path/'h5', '--out', tmp_path/'f.parquet')
    assert r.returncode == 1 and "datasets found: frames (3, 12, 12, 3) uint8, y (3,)" in r.stderr
    r = sh('data', 'build', '--layout', 'ffpp-h5', '--root', tmp_path/'h5', '--out', tmp_path/'f.parquet', '--validate-images',
           '--opt', 'images_key=frames', '--opt', 'labels_key=y', '--opt', f'frames={tmp_path/"fr"}')
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path/'f.parquet')
    assert m.generator.tolist() == ['real', 'FaceSwap', 'FaceSwap'] and m.attrs['root'] == str(tmp_path/'fr') and m.width.tolist() == [12] * 3
    with h5py.File(tmp_path/'h5'/'FF++_FaceSwap_c23.h5', 'a') as f: f['images'] = f['frames'][()]; f['labels'] = f['y'][()]
    res = subprocess.run([sys.executable, ROOT/'data_prep'/'ffpp.py', '--root', tmp_path/'h5', '--out', tmp_path/'g.parquet'], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(read_manifest(tmp_path/'g.parquet')) == 3
