"dflab.explain: map shapes for every method, the head-randomisation contract, localization on hand-made masks, the CLI and the experiment template end to end on a tiny trained run, and a tiny Qwen2.5-VL Profiler run explained through the same API and CLI."
import contextlib, io
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dflab.cli import run_cli
from dflab.detectors import create_detector
from dflab.explain import (Explainer, explain, list_methods, localization, iou_f1, pixel_auc, pointing_game,
                           randomize_head, uses_target, deletion_insertion, sanity_check)


@pytest.fixture(scope='module')
def probe(tiny_bench):
    torch.manual_seed(3)
    return create_detector('linear-probe', in_dim=tiny_bench[1].embed_dim).attach(tiny_bench[1]).eval()


@pytest.fixture(scope='module')
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def tiny_run(tiny_bench, tmp_path_factory):
    "A linear probe trained for a few epochs on the tiny benchmark's cached features."
    from dflab.core import RunConfig, setup_logging
    from dflab.train import DataConfig, ModelConfig, OptimConfig, TrainRunConfig, Trainer
    manifest, bb = tiny_bench
    out = tmp_path_factory.mktemp('runs')
    cfg = TrainRunConfig(run=RunConfig(name='probe', seed=0, threads=1, out_dir=str(out)), data=DataConfig(benchmark='tiny'),
                         model=ModelConfig(detector='linear-probe', backbone=bb.name),
                         train=OptimConfig(epochs=3, lr=0.01, batch_size=64, n_boot=0, plots=False, progress=False,
                                           tensorboard=False))
    with contextlib.redirect_stderr(io.StringIO()):
        tr = Trainer(cfg, manifest=manifest, backbone=bb); tr.fit(); tr.test()
    setup_logging(console=False)
    return tr.run.path


@pytest.mark.parametrize('method', list_methods())
def test_maps_have_grid_and_image_shapes(probe, images, method):
    e = Explainer(probe)(images, method)
    assert e.grid.shape == (3, 8, 8) and e.maps.shape == (3, 64, 64) and e.images.shape == (3, 64, 64, 3)
    assert e.maps.min() >= 0 and e.maps.max() <= 1 + 1e-6 and np.isfinite(e.grid).all()
    assert e.overlays().dtype == np.uint8


@pytest.mark.parametrize('method', [m for m in list_methods() if uses_target(m) and m != 'random'])
def test_gradient_maps_change_when_the_head_is_randomised(probe, images, method):
    a, b = Explainer(probe)(images, method).grid, Explainer(randomize_head(probe, seed=1))(images, method).grid
    assert np.abs(a - b).max() > 0.05, f"{method}'s map did not move with a random head"


def test_maps_that_ignore_the_score_do_not_change(probe, images):
    for m in ('eigencam', 'rollout'):
        np.testing.assert_allclose(Explainer(probe)(images, m).grid, Explainer(randomize_head(probe))(images, m).grid, atol=1e-5)
    sc = sanity_check(Explainer(probe), images, ['eigencam', 'random'], seeds=(0,)).set_index('method')
    assert not sc.passes.any() and np.allclose(sc.abs_rank_corr, 1)


def test_localization_on_hand_made_masks():
    mask = np.zeros((2, 8, 8), bool); mask[:, 2:6, 2:6] = True          # 16 of 64 pixels
    exact, outside = mask.astype(float), (~mask).astype(float)
    assert pixel_auc(exact, mask).tolist() == [1., 1.] and pixel_auc(outside, mask).tolist() == [0., 0.]
    assert pointing_game(exact, mask).all() and not pointing_game(outside, mask).any()
    quarter = np.zeros((1, 8, 8)); quarter[0, 2:4, 2:6] = 1                  # half of the mask, nothing else
    iou, f1 = iou_f1(quarter, mask[:1], [0.5])
    assert iou[0, 0] == pytest.approx(8 / 16) and f1[0, 0] == pytest.approx(2 * 8 / (2 * 8 + 8))
    # the threshold comes from the validation rows, the best one from the rows themselves, each reported as such
    val = exact * 0.3                                                          # on validation, only t <= 0.3 works
    test = exact * 0.9 + (~mask) * 0.5                                         # on test, only 0.5 < t <= 0.9 does
    loc = localization(test, mask, val, mask, thresholds=[0.2, 0.7])
    assert loc['threshold_val'] == 0.2 and loc['iou_val'] == pytest.approx(1 / 4)
    assert loc['threshold_best'] == 0.7 and loc['iou_best'] == 1.0 and loc['pixel_auc'] == 1.0
    with pytest.raises(Exception, match='differ in shape'): localization(np.zeros((1, 8, 8)), np.zeros((1, 4, 4)))


def test_deletion_insertion_prefers_the_map_on_the_evidence():
    from dflab.explain.metrics import _QuadrantScore       # P(fake) from the top-left quadrant's energy only
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    on, off = np.zeros((3, 16, 16)), np.zeros((3, 16, 16))
    on[:, :8, :8], off[:, 8:, 8:] = 1, 1
    a, b = deletion_insertion(_QuadrantScore(), x, on, steps=8), deletion_insertion(_QuadrantScore(), x, off, steps=8)
    assert (a.deletion_auc < b.deletion_auc).all() and (a.insertion_auc > b.insertion_auc).all()
    with pytest.raises(Exception, match='do not match the images'): deletion_insertion(_QuadrantScore(), x, on[:2])


def test_explain_api_on_a_run(tiny_run, tiny_bench, tmp_path):
    manifest, bb = tiny_bench
    from pathlib import Path
    from dflab.evaluate import predict_images
    files = [Path(manifest.attrs['root'])/p for p in manifest.path.iloc[[0, 250]]]
    e = explain(tiny_run, files, method='gradcam')
    assert e.grid.shape == (2, 8, 8) and e.errors == []
    np.testing.assert_allclose(e.scores, predict_images(tiny_run, files).score.to_numpy(), atol=1e-5)
    p = explain(tiny_run, files, method='gradcam', target='prompt:upsampled 2x with bilinear interpolation')
    assert p.target.startswith('prompt:') and not np.allclose(p.scores, e.scores)


def test_cli_end_to_end(tiny_run, tiny_bench, tmp_path):
    manifest, _ = tiny_bench
    from pathlib import Path
    src = tmp_path/'in'; (src/'a').mkdir(parents=True); (src/'b').mkdir()
    for d, p in zip(('a', 'b'), manifest.path.iloc[[0, 250]]):     # the same file name in two folders
        Image.open(Path(manifest.attrs['root'])/p).save(src/d/'img.png')
    (src/'b'/'broken.png').write_bytes(b'not a png')
    out = tmp_path/'out'
    rc, so, se = run_cli('explain', '--run', tiny_run, src, '--out', out, '--method', 'gradcam,random')
    assert rc == 1 and 'could not be read' in se and 'broken.png' in se
    df = pd.read_csv(out/'scores.csv')
    ok = df[df.error.isna()]
    assert len(ok) == 4 and set(ok.method) == {'gradcam', 'random'} and df.error.notna().sum() == 1
    assert ok.overlay.nunique() == 4
    for f in ok.overlay: assert Image.open(out/f).size == (64, 64)
    assert (ok.groupby('path').score.nunique() == 1).all()                # one score per image, whatever the method
    rc, so, se = run_cli('explain', '--run', tiny_run, src, '--out', tmp_path/'out2', '--skip-bad')
    assert rc == 0 and 'wrote 2 overlays' in so
    rc, so, se = run_cli('explain', '--run', tiny_run, src, '--out', tmp_path/'out3', '--method', 'gradkam')
    assert rc == 1 and "unknown method 'gradkam'" in se
    rc, so, se = run_cli('explain', '--run', tmp_path, src, '--out', tmp_path/'out4')
    assert rc == 1 and 'not a dflab run directory' in se
    rc, so, se = run_cli('explain', '--run', tiny_run, src)
    assert rc == 2 and '--out' in se


def test_experiment_template(tiny_run, tmp_path):
    from dflab.experiments import run_experiment
    r = run_experiment('explain', params={'run': str(tiny_run), 'methods': ['gradcam', 'eigencam', 'random'],
                                           'road_percentiles': [50], 'steps': 4, 'sanity_images': 4},
                       out=tmp_path/'exp', progress=False)
    assert r.status == 'ok'
    t = pd.read_csv(r.path/'explain.csv')
    assert list(t.method) == ['gradcam', 'eigencam', 'random'] and {'pixel_auc', 'iou_val', 'deletion_auc', 'road_combined'} <= set(t)
    assert (r.path/'figures'/'gallery-generator.png').is_file() and (r.path/'figures'/'gallery-outcome.png').is_file()
    assert r.metrics['sanity']['eigencam']['passes'] is False
    assert 'best localiser' in (r.path/'report.md').read_text()


@pytest.fixture(scope='module')
def profiler_run(tmp_path_factory):
    "The tiny random-init Qwen2.5-VL Profiler after a few optimiser steps on the tiny benchmark."
    from dflab.core import load_config, setup_logging
    from dflab.train import config_path
    from dflab.qwen.profiler import ProfilerRunConfig, train_profiler
    out = tmp_path_factory.mktemp('profiler-runs')
    cfg = load_config(ProfilerRunConfig, config_path('profiler-tiny'),
                      overrides=['stage1_training.epochs=1', 'stage1_training.max_steps=3', f'run.out_dir={out}'])
    with contextlib.redirect_stderr(io.StringIO()):
        run, _ = train_profiler(cfg, mode='train')
    setup_logging(console=False)
    return run.path


def test_profiler_run_explains_to_maps_of_the_right_shape(profiler_run, tiny_bench, tmp_path):
    from pathlib import Path
    manifest, _ = tiny_bench
    files = [Path(manifest.attrs['root'])/p for p in manifest.path.iloc[[0, 250, 399]]]
    for m in ('gradcam', 'layercam', 'eigencam'):
        e = explain(profiler_run, files, method=m)
        assert e.grid.shape == (3, 8, 8) and e.maps.shape == (3, 64, 64) and np.isfinite(e.grid).all()
        assert ((e.scores > 0) & (e.scores < 1)).all() and e.errors == []
    from dflab.qwen.profiler import profile_images
    np.testing.assert_allclose(e.scores, profile_images(profiler_run, files, device='cpu').score, atol=1e-5)
    g = explain(profiler_run, files, target=f'generator:{manifest.generator.iloc[250]}')
    assert g.grid.shape == (3, 8, 8) and not np.allclose(g.grid, explain(profiler_run, files).grid)
    with pytest.raises(Exception, match='this Profiler knows'): explain(profiler_run, files, target='generator:nope')
    with pytest.raises(Exception, match='no attention rollout'): explain(profiler_run, files, method='rollout')
    rc, so, se = run_cli('explain', '--run', profiler_run, *files[:2], '--out', tmp_path/'out', '--method', 'gradcam')
    assert rc == 0, se
    df = pd.read_csv(tmp_path/'out'/'scores.csv')
    assert len(df) == 2 and all(Image.open(tmp_path/'out'/f).size == (64, 64) for f in df.overlay)


def test_profiler_maps_change_when_its_detection_head_is_redrawn(profiler_run, images):
    from dflab.explain import load_explainer
    ex = load_explainer(profiler_run)
    head = ex.backbone.model.heads.detect.weight.detach().clone()
    rnd = Explainer(randomize_head(ex.detector, seed=1), ex.backbone)
    assert torch.equal(ex.backbone.model.heads.detect.weight, head)     # the trained head is left as it was
    x = images.clamp(-2, 2)
    for m in ('gradcam', 'hirescam'):
        a, b = ex(x, m).grid, rnd(x, m).grid
        assert a.shape == (3, 8, 8) and np.abs(a - b).max() > 0.05, f"{m}'s Profiler map did not move with a redrawn head"
    np.testing.assert_allclose(ex(x, 'eigencam').grid, rnd(x, 'eigencam').grid, atol=1e-5)   # it never reads the head


def test_profiler_tensors_round_trip_through_the_image_processor(profiler_run, tiny_bench):
    from pathlib import Path
    from dflab.explain import load_explainer
    manifest, _ = tiny_bench
    bb = load_explainer(profiler_run).backbone
    img = Image.open(Path(manifest.attrs['root'])/manifest.path.iloc[250]).convert('RGB')
    enc = bb.image_processor(img, return_tensors='pt')
    pv, thw = bb.patches(bb.preprocess(img)[None])
    assert torch.equal(pv, enc['pixel_values']) and thw.tolist() == enc['image_grid_thw'].tolist()
    with pytest.raises(Exception, match='multiples of 16'): bb.patches(torch.zeros(1, 3, 60, 64))
