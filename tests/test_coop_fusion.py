"""CoOp / CoCoOp on the shipped tiny CLIP's text tower, and every fusion combination trained from a config: what trains,
what stays frozen, what a saved model scores after reloading, and the errors a wrong setting gets."""
import contextlib, io, json
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dflab.cli import run_cli
from dflab.core import DflabError, load_config
from dflab.detectors import Detector, create_detector, list_detectors, load_detector
from dflab.detectors.coop import TextTower
from dflab.detectors.fusion import FUSES, MATCHES, lare_available, lare_maps, pack_streams
from dflab.train import TrainRunConfig, train

def text_state(bb):
    return {k: v.clone() for k, v in bb.model.state_dict().items() if not k.startswith('visual.')}

@pytest.mark.parametrize('name,options,trained', [
    ('coop', {'n_ctx': 16}, ['prompt.ctx']),
    ('coop', {'ctx_init': 'a photo of a', 'position': 'middle', 'csc': True}, ['prompt.ctx']),
    ('cocoop', {'n_ctx': 8, 'position': 'front'}, ['meta_net.0.bias', 'meta_net.0.weight', 'meta_net.2.bias',
                                                    'meta_net.2.weight', 'prompt.ctx'])])
def test_prompt_learning_trains_only_context_and_meta_net(world, name, options, trained):
    "Logits (B, 2); the optimiser sees only the context (and meta-net); a step moves them and leaves the tower as it was."
    manifest, bb, feats = world
    det = create_detector(name, in_dim=bb.embed_dim, backbone=bb, **options)
    x, y = feats[:12], torch.tensor(manifest.label.to_numpy()[:12])
    assert det(x).shape == (12, 2)
    assert sorted(n for n, p in det.named_parameters() if p.requires_grad) == trained
    before = text_state(bb)
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):                            # two steps: CoCoOp's zero-started output layer opens the first one
        opt.zero_grad(); Detector.loss(det(x), y).backward(); opt.step()
    assert all(det.get_parameter(n).grad.abs().sum() > 0 for n in trained)
    after = text_state(bb)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in bb.model.parameters())

def test_coop_at_its_initial_phrase_is_clip_zero_shot(world):
    "Left at 'a photo of a', CoOp's logits are the logit scale times the cosines to 'a photo of a real.' / '... fake.'."
    _, bb, feats = world
    det = create_detector('coop', in_dim=bb.embed_dim, backbone=bb, ctx_init='a photo of a')
    with torch.no_grad():
        t = torch.nn.functional.normalize(bb.encode_text(['a photo of a real.', 'a photo of a fake.']).float(), dim=-1)
        ref = bb.model.logit_scale.exp() * torch.nn.functional.normalize(feats[:5], dim=-1) @ t.T
        torch.testing.assert_close(det(feats[:5]), ref, atol=1e-4, rtol=1e-4)

def test_prompt_errors_name_the_problem(world):
    _, bb, _ = world
    with pytest.raises(DflabError, match='reads 32: use a smaller n_ctx'): create_detector('coop', in_dim=64, backbone=bb, n_ctx=40)
    with pytest.raises(DflabError, match='two non-empty names'): create_detector('coop', in_dim=64, backbone=bb, classnames=['real'])
    with pytest.raises(DflabError, match='projects to 64-d but the image features are 32-d'):
        create_detector('coop', in_dim=32, backbone=bb)
    from dflab.detectors.base import ToyBackbone
    with pytest.raises(DflabError, match='no open_clip CLIP text tower'): TextTower(ToyBackbone())

COMBOS = [(d, text) for d in ('fusion', 'fusion-concat-attention', 'fusion-sum-mlp', 'fusion-sum-attention')
          for text in ('coop', 'cocoop')]

@pytest.mark.parametrize('detector,text', COMBOS)
def test_every_fusion_trains_an_epoch_from_a_config_and_reloads(world, tmp_path, detector, text):
    "A YAML config selects the combination; one epoch trains; best/ reloads and scores its test rows as the run did."
    manifest, bb, feats = world
    stage = 'grid' if 'attention' in detector else 'mlp'
    cfg_file = tmp_path/'fusion.yaml'
    cfg_file.write_text(yaml.safe_dump({
        'run': {'name': f'{detector}-{text}', 'out_dir': str(tmp_path), 'threads': 1},
        'model': {'detector': detector, 'options': {'text': text, 'text_options': {'n_ctx': 4}, 'lare': 'noise',
                                                   'lare_options': {'shape': [4, 8, 8]}, 'lare_stage': stage, 'grid': 2,
                                                   'width': 16, 'hidden': 32}},
        'train': {'epochs': 1, 'lr': 0.01, 'n_boot': 0, 'plots': False, 'progress': False, 'tensorboard': False}}))
    cfg = load_config(TrainRunConfig, cfg_file)
    with contextlib.redirect_stderr(io.StringIO()): run, m = train(cfg, manifest=manifest, features=feats, backbone=bb)
    assert m['test']['auc'] > 0.8                               # the image stream carries the known direction
    det = load_detector(run/'best')
    assert (det.match_, det.fuse_, det.text_kind, det.lare_shape) == (
        'sum' if 'sum' in detector else 'concat', 'attention' if 'attention' in detector else 'mlp', text, (4, 8, 8))
    meta = json.loads((run/'best'/'detector.json').read_text())['detector']
    assert meta['lare'] == 'noise' and meta['text_options']['n_ctx'] == 4
    test = pd.read_csv(run/'test_predictions.csv')
    packed = pack_streams(feats, lare_maps(manifest, 'noise', shape=(4, 8, 8)))
    with torch.no_grad(): s = Detector.scores(det(packed[test['index'].to_numpy().copy()])).numpy()
    np.testing.assert_allclose(s, test.score.to_numpy(), atol=1e-5)

def test_fusion_without_lare_and_bad_settings(world):
    "Text and image streams alone need no maps; a LaRE stream without maps, or a wrong option, is a one-line error."
    manifest, bb, feats = world
    det = create_detector('fusion', in_dim=64, backbone=bb, text_options={'n_ctx': 4})
    assert det(feats[:3]).shape == (3, 2)
    withmaps = create_detector('fusion', in_dim=64, backbone=bb, lare_shape=(4, 8, 8), text_options={'n_ctx': 4})
    with pytest.raises(DflabError, match='packed with their maps'): withmaps(feats[:3])
    with pytest.raises(DflabError, match='concat, sum'): create_detector('fusion', in_dim=64, backbone=bb, match='max')
    with pytest.raises(DflabError, match='mlp, attention'): create_detector('fusion', in_dim=64, backbone=bb, fuse='gate')
    with pytest.raises(DflabError, match='unknown LaRE source'): lare_maps(manifest, 'sdxl')
    if not lare_available():
        with pytest.raises(DflabError, match="dflab.lare's Stage 1"): lare_maps(manifest, 'lare')
    assert set(list_detectors('fusion*')) == {'fusion', 'fusion-concat-attention', 'fusion-sum-mlp', 'fusion-sum-attention'}
    assert MATCHES == ('concat', 'sum') and FUSES == ('mlp', 'attention')

def test_bench_prompts_cli():
    "dflab bench prompts prints its table; a bad batch size is a usage error naming the flag."
    rc, out, err = run_cli('bench', 'prompts', '--batch-sizes', '0')
    assert rc != 0 and '--batch-sizes must be positive' in err
    rc, out, err = run_cli('bench', 'prompts', '--batch-sizes', '4', '--n-ctx', '4')
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:2] == ['batch', 'detector']
    assert [l.split()[1] for l in lines[2:]] == ['coop', 'cocoop', 'cocoop']
