"""Tests that catch a wrong result: every detector learns a known signal through the real Trainer, every prediction
row is the image it names, and one threshold, chosen on validation only, flows to metrics, `pred`, eval and predict."""
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from dflab.core import RunConfig
from dflab.detectors import Detector, list_detectors, load_detector, read_detector_meta
from dflab.metrics import THRESHOLD_CRITERIA, choose_threshold
from dflab.train import DataConfig, ModelConfig, OptimConfig, TrainRunConfig, make_splits, train

def run_cfg(tmp, name, detector="linear-probe", epochs=10, threshold='balanced', **data):
    return TrainRunConfig(run=RunConfig(name=name, out_dir=str(tmp), threads=1),
                          data=DataConfig(**data), model=ModelConfig(detector=detector),
                          train=OptimConfig(epochs=epochs, lr=1e-2, n_boot=0, plots=False, progress=False,
                                            tensorboard=False, threshold=threshold))

@pytest.mark.parametrize('detector', list_detectors())
def test_every_detector_learns_a_known_signal(world, tmp_path, detector):
    "Through the real Trainer, each registered detector separates features that carry the label (fails on inverted labels)."
    manifest, bb, feats = world
    # learnt prompts reach the signal's direction only through the frozen text tower: twice the epochs of a head
    epochs = 20 if detector in ('coop', 'cocoop') else 10
    run, m = train(run_cfg(tmp_path, detector, detector, epochs=epochs), manifest=manifest, features=feats, backbone=bb)
    assert m['test']['auc'] >= 0.9, (detector, m['test']['auc'])
    assert m['test']['acc_val'] >= 0.75, (detector, m['test']['acc_val'])

def test_prediction_rows_are_the_images_they_name(world, tmp_path):
    "Every row of the prediction files is manifest.iloc[index], the splits are the protocol's, and scores match their rows."
    manifest, bb, feats = world
    data = dict(protocol='leave-one-out', holdout='gan-v1')
    run, m = train(run_cfg(tmp_path, 'aligned', **data), manifest=manifest, features=feats, backbone=bb)
    splits = make_splits(manifest, DataConfig(**data))
    allp = pd.read_csv(run/'predictions.csv')
    for name in ('test_predictions.csv', 'predictions.csv'):
        p = pd.read_csv(run/name)
        ref = manifest.iloc[p['index'].to_numpy()]
        for col in ('path', 'label', 'generator'):
            assert (p[col].astype(str).to_numpy() == ref[col].astype(str).to_numpy()).all(), (name, col)
    for split in ('val', 'test'):
        assert sorted(allp['index'][allp.split == split]) == sorted(splits[split]), split
    det = load_detector(run/'best')
    test = pd.read_csv(run/'test_predictions.csv')
    with torch.no_grad(): s = Detector.scores(det(feats[test['index'].to_numpy().copy()])).numpy()
    np.testing.assert_allclose(test.score.to_numpy(), s, atol=1e-5)            # each score is its own row's image

@pytest.mark.parametrize('criterion', THRESHOLD_CRITERIA)
def test_one_threshold_chosen_on_validation_flows_everywhere(world, tmp_path, criterion):
    "The stored, reported and applied thresholds are one number, equal to the criterion applied to validation rows only."
    manifest, bb, feats = world
    feats = feats.clone()
    sp = make_splits(manifest, DataConfig())
    feats[sp['test']] *= 40          # poison: test scores pile up at 0 and 1, so any threshold picked on them would differ
    run, m = train(run_cfg(tmp_path, f'thr-{criterion}', threshold=criterion, epochs=3), manifest=manifest,
                   features=feats, backbone=bb)
    stored = read_detector_meta(run/'best')['threshold']
    det = load_detector(run/'best')
    with torch.no_grad(): vs = Detector.scores(det(feats[sp['val']])).numpy()
    expected = choose_threshold(manifest.label.to_numpy()[sp['val']], vs, criterion)
    assert stored == pytest.approx(expected, abs=1e-6)                            # chosen on validation, by the criterion
    tm = json.loads((run/'test_metrics.json').read_text())
    assert tm['val_threshold'] == pytest.approx(stored, abs=1e-12)                # reported
    for name in ('test_predictions.csv', 'predictions.csv'):
        p = pd.read_csv(run/name)
        assert ((p.score >= stored).astype(int) == p.pred).all(), name            # applied to `pred`
    test = pd.read_csv(run/'test_predictions.csv')
    assert tm['acc_val'] == pytest.approx((test.pred == test.label).mean(), abs=1e-9)
    from dflab.evaluate import evaluate_run, predict_images
    ev = evaluate_run(run.path, n_boot=0, plots=False)                            # dflab eval: the same number
    assert ev['test']['val_threshold'] == pytest.approx(stored, abs=1e-12)
    files = [Path(manifest.attrs['root'])/p for p in manifest.path.iloc[sp['test'][:6]]][::-1]
    pr = predict_images(run.path, files)                                          # dflab predict: the same number
    assert pr.path.tolist() == [str(f) for f in files]                            # rows in input order
    assert ((pr.score >= stored) == (pr.label == 'fake')).all()
