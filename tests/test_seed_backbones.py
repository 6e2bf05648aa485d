"The seeds' backbones (languagebind:, llava-clip:): loading, preprocessing, the key mapping and `dflab features`."
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dflab.core import DflabError
from dflab.backbones import load_backbone, list_backbone_families
from dflab.backbones_seeds import (CLIP_MEAN, CLIP_STD, languagebind_transform, llava_preprocess,
                                   map_languagebind_keys, seed_param_counts)

FIX = Path(__file__).parent/'fixtures'/'seed_backbones'
MU, SD = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    torch.set_num_threads(1)

@pytest.fixture(scope='module')
def tiny():
    return {f: load_backbone(f'{f}:dflab-tiny') for f in ('languagebind', 'llava-clip')}

@pytest.fixture(scope='module')
def ref(): return load_file(str(FIX/'reference.safetensors'))

def test_families_register_on_first_use():
    load_backbone('llava-clip:dflab-tiny')
    assert {'languagebind', 'llava-clip'} <= set(list_backbone_families())

# --- preprocessing, against hand-computed values and against the seeds' own code ---

def test_languagebind_transform_by_hand():
    px = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    want = (torch.tensor(px, dtype=torch.float32).permute(2, 0, 1) / 255 - MU) / SD
    assert torch.allclose(languagebind_transform(8)(Image.fromarray(px)), want, atol=1e-6)
    grey = languagebind_transform(8)(Image.new('RGB', (30, 16), (128, 128, 128)))   # 30x16 -> 15x8 -> centre 8x8
    assert grey.shape == (3, 8, 8) and torch.allclose(grey, ((128 / 255 - MU) / SD).expand(3, 8, 8), atol=1e-5)

def test_languagebind_transform_resizes_the_tensor_not_the_pil_image(ref):
    "LanguageBind's order (ToTensor, then resize) is reproduced exactly; open_clip's (PIL resize first) is not."
    img = Image.open(FIX/'image.png').convert('RGB')
    assert torch.equal(languagebind_transform(224)(img)[:, ::7, ::7], ref['lb_pixels224'])
    import open_clip
    oc = open_clip.image_transform(224, is_train=False)
    assert (oc(img)[:, ::7, ::7] - ref['lb_pixels224']).abs().max() > 1e-3

def test_llava_pad_to_square_by_hand():
    x = llava_preprocess(8)(Image.new('RGB', (4, 8), (0, 255, 0)))    # taller than wide: padded left and right
    pad = (torch.tensor([122., 116, 104])[:, None, None] / 255 - MU) / SD
    green = (torch.tensor([0., 1, 0])[:, None, None] - MU) / SD
    assert torch.allclose(x[:, :, :2], pad.expand(3, 8, 2), atol=1e-6)
    assert torch.allclose(x[:, :, 6:], pad.expand(3, 8, 2), atol=1e-6)
    assert torch.allclose(x[:, :, 2:6], green.expand(3, 8, 4), atol=1e-6)

def test_llava_preprocess_matches_llava(ref):
    img = Image.open(FIX/'image.png').convert('RGB')
    assert torch.equal(llava_preprocess(336)(img)[None, :, ::7, ::7], ref['llava_pixels336'])
    bb = load_backbone(f"llava-clip:{FIX/'llava-clip'}")
    assert torch.equal(bb.preprocess(img)[None], ref['llava_pixels32'])

# --- the key mapping, against the languagebind package's own outputs ---

@pytest.mark.parametrize('folder,tag', [('languagebind', 'lb'), ('languagebind-lora', 'lb_lora')])
def test_languagebind_folder_matches_the_package(ref, folder, tag):
    bb = load_backbone(f'languagebind:{FIX/folder}')
    out = bb.forward_layers(ref['pixels32'], ['final', 'cls:-2', 'patch:-2'])
    assert torch.allclose(out['final'], ref[f'{tag}_image'], atol=5e-5)
    assert torch.allclose(out['cls:1'], ref[f'{tag}_hidden_m2'][:, 0], atol=5e-5)
    assert torch.allclose(out['patch:1'], ref[f'{tag}_hidden_m2'][:, 1:], atol=5e-5)
    assert torch.allclose(bb._text(ref['text_ids']), ref[f'{tag}_text'], atol=5e-5)

def test_lora_is_merged_not_dropped(ref):
    "Reading the LoRA folder without its LoRA weights gives other features: the merge is what makes them match."
    sd = load_file(str(FIX/'languagebind-lora'/'model.safetensors'))
    plain = {k: v for k, v in sd.items() if 'lora_' not in k}
    merged, dropped = map_languagebind_keys(sd, 16, 2), map_languagebind_keys(plain, 16, 2)
    k = 'vision_model.encoder.layers.0.self_attn.q_proj.weight'
    assert set(merged) == set(dropped) and not torch.equal(merged[k], dropped[k])
    a = sd['vision_model.encoder.base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight']
    b = sd['vision_model.encoder.base_model.model.layers.0.self_attn.q_proj.lora_B.default.weight']
    assert torch.allclose(merged[k] - dropped[k], 8 * b @ a, atol=1e-6)    # alpha / r = 16 / 2

def test_damaged_lora_is_refused(tmp_path):
    d = tmp_path/'lb'
    shutil.copytree(FIX/'languagebind-lora', d)
    sd = load_file(str(d/'model.safetensors'))
    save_file({k: v for k, v in sd.items() if 'layers.1.self_attn.k_proj.lora_B' not in k}, str(d/'model.safetensors'))
    with pytest.raises(DflabError, match='LoRA weights of .*layers.1.self_attn.k_proj are incomplete'):
        load_backbone(f'languagebind:{d}')

def test_llava_folder_matches_llava(ref):
    bb = load_backbone(f"llava-clip:{FIX/'llava-clip'}")
    out = bb.forward_layers(ref['llava_pixels32'], ['final', 'patch:-2', 'cls_patch:-2'])
    assert torch.allclose(out['cls_patch:1'], ref['llava_cls_patch'], atol=1e-6)
    assert torch.allclose(out['patch:1'], ref['llava_patch'], atol=1e-6)
    assert torch.allclose(out['final'], ref['llava_pooled'], atol=1e-6)

# --- tiny configs: shapes, the real folder format, save and reload ---

def test_tiny_shapes(tiny):
    x = torch.randn(2, 3, 64, 64)
    lb = tiny['languagebind'].forward_layers(x, ['final', 'patch:-2'])
    assert lb['final'].shape == (2, 64) and lb['patch:2'].shape == (2, 64, 64)
    ll = tiny['llava-clip'].forward_layers(x, ['final', 'patch:-2', 'cls_patch:-2', 'cls:-2'])
    assert ll['cls_patch:2'].shape == (2, 65, 64) and ll['patch:2'].shape == (2, 64, 64)
    assert torch.equal(ll['cls_patch:2'][:, 0], ll['cls:2']) and torch.equal(ll['cls_patch:2'][:, 1:], ll['patch:2'])
    assert tiny['languagebind'].encode_text(['a photo']).shape == (1, 64)

@pytest.mark.parametrize('family', ['languagebind', 'llava-clip'])
def test_save_and_reload_gives_identical_features(tiny, tmp_path, family):
    bb = tiny[family]
    d = bb.save_pretrained(tmp_path/family)
    back = load_backbone(f'{family}:{d}')
    x = torch.stack([bb.preprocess(Image.new('RGB', (70, 50), c)) for c in ('red', 'teal')])
    assert torch.equal(back.preprocess(Image.new('RGB', (70, 50), 'red')), x[0])
    want, got = bb.forward_layers(x, ['final', 'patch:-2']), back.forward_layers(x, ['final', 'patch:-2'])
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert back.fingerprint == bb.fingerprint and back.preprocess_cfg == bb.preprocess_cfg

def test_real_folder_format(tiny, tmp_path):
    d = tiny['languagebind'].save_pretrained(tmp_path/'lb')
    cfg = json.loads((d/'config.json').read_text())
    assert cfg['architectures'] == ['LanguageBindImage'] and cfg['vision_config']['lora_r'] == 0
    keys = set(load_file(str(d/'model.safetensors')))
    assert {'vision_model.encoder.layers.0.self_attn.q_proj.weight', 'visual_projection.weight',
            'text_model.embeddings.token_embedding.weight', 'logit_scale'} <= keys
    d = tiny['llava-clip'].save_pretrained(tmp_path/'ll')
    assert json.loads((d/'config.json').read_text())['model_type'] == 'clip'
    assert json.loads((d/'preprocessor_config.json').read_text())['crop_size'] == {'height': 64, 'width': 64}
    assert 'vision_model.post_layernorm.weight' in set(load_file(str(d/'model.safetensors')))

def test_wrong_folders_are_refused(tiny, tmp_path):
    ll = tiny['llava-clip'].save_pretrained(tmp_path/'ll')
    with pytest.raises(DflabError, match="'clip' model, not LanguageBind's image branch"):
        load_backbone(f'languagebind:{ll}')
    lb = tiny['languagebind'].save_pretrained(tmp_path/'lb')
    with pytest.raises(DflabError, match="'LanguageBindImage' model; llava-clip loads a CLIP checkpoint"):
        load_backbone(f'llava-clip:{lb}')
    (lb/'model.safetensors').unlink()
    with pytest.raises(DflabError, match='has no weights'):
        load_backbone(f'languagebind:{lb}')

def test_param_counts_of_the_real_architectures():
    t = seed_param_counts().set_index(['family', 'config'])['total M']
    assert 427 < t['languagebind', 'real'] < 429        # ViT-L/14 + LanguageBind's 12-block text tower
    assert 303 < t['llava-clip', 'real'] < 305          # CLIP ViT-L/14-336, vision tower only
    assert t['languagebind', 'dflab-tiny'] < 5 and t['llava-clip', 'dflab-tiny'] < 1

# --- the command line ---

def _run(*args):
    "`dflab *args` in this process (tests/test_cli.py covers the console script itself)."
    from types import SimpleNamespace
    from dflab.cli import run_cli
    rc, out, err = run_cli(*args)
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)

@pytest.mark.parametrize('family,layers,shapes', [
    ('languagebind', ['final', 'patch:-2'], ['final      (12, 64)', 'patch:2    (12, 64, 64)']),
    ('llava-clip', ['final', 'cls_patch:-2'], ['final      (12, 64)', 'cls_patch:2 (12, 65, 64)'])])
def test_cli_features_into_the_cache(tiny, tmp_path, family, layers, shapes):
    from dflab.synth import benchmark_manifest
    from dflab.data.manifest import write_manifest
    d = tiny[family].save_pretrained(tmp_path/family)
    m = write_manifest(benchmark_manifest('tiny').iloc[:12], tmp_path/'m.parquet')
    args = ('features', '--manifest', m, '--backbone', f'{family}:{d}', '--cache', tmp_path/'c', '--layers', *layers,
            '--no-progress', '--num-workers', '0')
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    assert '12 computed, 0 from cache' in r.stdout and all(s in r.stdout for s in shapes), r.stdout
    r = _run(*args)
    assert r.returncode == 0 and '0 computed, 12 from cache' in r.stdout, r.stdout + r.stderr

def test_cli_hub_id_offline_says_how_to_pass_a_folder(tmp_path):
    from dflab.synth import benchmark_manifest
    from dflab.data.manifest import write_manifest
    m = write_manifest(benchmark_manifest('tiny').iloc[:2], tmp_path/'m.parquet')
    for name, hint in (('languagebind:LanguageBind/LanguageBind_Image', 'languagebind:DIR'),
                       ('llava-clip:openai/clip-vit-large-patch14-336', 'llava-clip:DIR')):
        r = _run('features', '--manifest', m, '--backbone', name, '--cache', tmp_path/'c')
        assert r.returncode == 1, r.stdout + r.stderr
        assert 'dflab is offline' in r.stderr and hint in r.stderr and 'Traceback' not in r.stderr, r.stderr

def test_languagebind_seed_end_to_end(tiny, tmp_path):
    "The seed's command in dflab terms: a category tree, split by category, the shipped config on languagebind:DIR."
    import pandas as pd
    from dflab.synth import benchmark_manifest
    df = benchmark_manifest('tiny')
    names = {'scene': 'car', 'photo': 'cat', 'object': 'chair'}          # LSUN category folders, as in ProGAN's tree
    for r in df.itertuples():
        d = tmp_path/'tree'/names[r.content]/('1_fake' if r.label else '0_real')
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(df.attrs['root'])/r.path, d/r.path.replace('/', '_'))
    lb = tiny['languagebind'].save_pretrained(tmp_path/'lb')
    assert _run('data', 'build', '--layout', 'forensynths', '--root', tmp_path/'tree', '--out', tmp_path/'ufd.parquet').returncode == 0
    r = _run('data', 'split', '--manifest', tmp_path/'ufd.parquet', '--protocol', 'category', '--train', 'car,cat',
             '--val-size', '0.2', '--out', tmp_path/'split.parquet')
    assert r.returncode == 0, r.stderr
    r = _run('train', '--config', 'languagebind-mlp-head', f"data.manifest={tmp_path/'split.parquet'}",
             f'model.backbone=languagebind:{lb}', 'train.epochs=2', 'train.batch_size=64', 'train.n_boot=0',
             'train.plots=false', 'train.tensorboard=false', 'train.progress=false', f'run.out_dir={tmp_path/"runs"}')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'acc@0.5' in r.stdout and ' AP ' in r.stdout, r.stdout
    run = tmp_path/'runs'/'languagebind-mlp-head'
    assert {p.name for p in (run/'checkpoints').iterdir()} == {'epoch-1', 'epoch-2'} and (run/'best').is_dir()
    m = json.loads((run/'test_metrics.json').read_text())
    assert {'acc', 'ap', 'auc'} <= set(m), sorted(m)
    preds = pd.read_csv(run/'test_predictions.csv')
    assert set(preds.category) == {'chair'}                               # the held-out category only
