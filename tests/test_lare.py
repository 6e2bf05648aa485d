"""LaRE: Stage-1 maps of the shipped tiny latent diffusion model (deterministic, timestep-sensitive, batch-independent,
cached under every setting) and the Stage-2 detectors (shapes, the Trainer's packing hook, a training step)."""
import json
from dataclasses import replace
import pytest
import torch

from dflab.cli import run_cli
from dflab.core import DflabError
from dflab.detectors import Detector, create_detector, detector_class, list_detectors
from dflab.detectors.lare import LareDetector
from dflab.lare.extract import LareSettings, extract_lare, lare_cache_key, lare_maps
from dflab.lare.model import TINY_LDM, TINY_LDM_FILE, load_ldm

@pytest.fixture(scope='module')
def ldm():
    torch.set_num_threads(1)
    return load_ldm()

@pytest.fixture(scope='module')
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 64, 64, generator=g) * 2 - 1

def test_the_shipped_model_is_trained_and_small(ldm):
    "The package ships a trained tiny LDM (a record with loss curves and held-out errors) within its size budget."
    rec = json.loads(TINY_LDM_FILE.with_suffix('.json').read_text())
    assert TINY_LDM_FILE.stat().st_size < 10 * 2**20
    assert rec['loss']['unet'][-1] < rec['loss']['unet'][0] and rec['loss']['vae'][-1] < rec['loss']['vae'][0]
    assert rec['heldout']['noise_mse_t200'] < 1.0            # better than predicting no noise at all
    assert ldm.vae.config.scaling_factor == pytest.approx(rec['configs']['vae']['scaling_factor'])

def test_map_is_deterministic_for_a_seed_and_changes_with_timestep(ldm, images):
    p = ['a photo'] * len(images)
    a, b = lare_maps(ldm, images, p, 200, 2, 0), lare_maps(ldm, images, p, 200, 2, 0)
    assert a.shape == (4, 4, 16, 16) and (a >= 0).all()
    assert torch.equal(a, b)
    assert not torch.allclose(lare_maps(ldm, images, p, 400, 2, 0), a, rtol=1e-3)
    assert not torch.allclose(lare_maps(ldm, images, p, 200, 2, 1), a, rtol=1e-3)
    torch.testing.assert_close(lare_maps(ldm, images[2:3], p[2:3], 200, 2, 0), a[2:3], rtol=1e-4, atol=1e-6)   # batch-independent

def test_map_shape_follows_the_size(ldm, images):
    small = torch.nn.functional.interpolate(images, size=32, mode='bilinear')
    assert lare_maps(ldm, small, ['a photo'] * 4, draws=1).shape == (4, 4, 8, 8)

def test_cache_is_keyed_by_model_and_every_setting(ldm, tiny_bench, tmp_path):
    manifest = tiny_bench[0].iloc[:6]
    s = LareSettings(draws=1).resolved(ldm)
    keys = {lare_cache_key(ldm, replace(s, **kw)) for kw in
            ({}, {'size': 32}, {'timestep': 150}, {'draws': 2}, {'prompt_source': 'default'}, {'prompt': 'x'}, {'seed': 3})}
    assert len(keys) == 7
    assert lare_cache_key(load_ldm(f'{TINY_LDM}@random'), s) not in keys
    first = extract_lare(manifest, ldm, s, cache=tmp_path, progress=False)
    again = extract_lare(manifest, ldm, s, cache=tmp_path, progress=False)
    other = extract_lare(manifest, ldm, replace(s, timestep=150), cache=tmp_path, progress=False)
    assert (first.stats['computed'], again.stats['hits'], other.stats['computed']) == (6, 6, 6)
    assert torch.equal(first['lare'], again['lare']) and first['lare'].shape == (6, 4, 16, 16)
    assert len(list(tmp_path.glob('lare-*/backbone.json'))) == 2
    caption = extract_lare(manifest, ldm, replace(s, prompt_source='default'), cache=tmp_path, progress=False)
    assert caption.stats['computed'] == 6 and not torch.allclose(caption['lare'], first['lare'])

def test_bad_settings_and_names_fail_clearly(ldm, tiny_bench):
    with pytest.raises(DflabError, match='timestep must be in'): LareSettings(timestep=-1).resolved(ldm)
    with pytest.raises(DflabError, match='prompt_source must be one of'): LareSettings(prompt_source='title').resolved(ldm)
    with pytest.raises(DflabError, match='dflab is offline'): load_ldm('runwayml/stable-diffusion-v1-5')
    rc, out, err = run_cli('lare', '--manifest', '/no/such.parquet')
    assert rc == 1 and 'such.parquet' in err

@pytest.mark.parametrize('name', ['lare-mlp', 'lare-original', 'lare-roi'])
def test_stage2_detectors_train_a_step(name):
    "Each Stage-2 detector reads maps packed by the Trainer's hook and takes an optimiser step that lowers its loss."
    assert name in list_detectors()
    torch.manual_seed(0)
    y = torch.tensor([0, 1] * 8)
    maps = torch.rand(16, 4, 16, 16) + y[:, None, None, None] * 0.5          # fakes reconstruct worse here
    feats = torch.randn(16, 64, 64) if name == 'lare-original' else torch.randn(16, 64)
    import pandas as pd
    from dflab.detectors.fusion import register_lare_source
    register_lare_source('test-maps')(lambda manifest: maps)
    rows, opts = detector_class(name).cached_inputs(pd.DataFrame({'path': list('abcdefghijklmnop')}), feats, 64, {'lare': 'test-maps'})
    det = create_detector(name, in_dim=64, hidden=32, dropout=0.0, **opts)
    assert isinstance(det, LareDetector) and det(rows).shape == (16, 2)
    opt = torch.optim.Adam(det.parameters(), 1e-2)
    losses = []
    for _ in range(5):
        loss = Detector.loss(det.train()(rows), y); losses.append(float(loss.detach()))
        opt.zero_grad(); loss.backward(); opt.step()
    assert losses[-1] < losses[0], losses
