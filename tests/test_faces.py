"Face forensics: detection and crops on the offline photographs, evenly sampled video frames, the face dataset built and resumed, video-level metrics, FF++ protocols, and how MTCNN is installed."
import configparser, json, re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dflab.cli import run_cli
from dflab.core import DflabError
from dflab.data.manifest import manifest_root, read_manifest, write_manifest
from dflab.data.protocols import face_groups, make_split
from dflab.faces import (build_faces, face_crops, face_set, get_face_detector, offline_photos, read_frames, recrop,
                         sample_indices, video_metrics, video_scores, write_video)
from dflab.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def test_readme_installs_every_nodeps_requirement():
    "A pin that must be installed with --no-deps is in both README commands (CI runs the test one) exactly as settings.ini names it."
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    pins = cfg['DEFAULT']['nodeps_requirements'].split()
    assert 'facenet-pytorch==2.6.0' in pins
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT/'README.md').read_text(), flags=re.S)[:2]
    for pin in pins:
        for b in blocks: assert f"pip install --no-deps {pin}" in b, (pin, b)
    assert not any(p.split('==')[0] in cfg['DEFAULT']['requirements'] for p in pins)   # never resolved with its pins


@pytest.fixture(scope='module')
def photos(): return offline_photos(n_lfw=2)


def test_mtcnn_crops_and_no_face_report(photos):
    "MTCNN's object arrays come back as floats; every photo is cropped or reported; a crop row recomputes its crop."
    names = list(photos)
    crops, rows, misses = face_crops(list(photos.values()), 'mtcnn', size=96)
    assert set(rows.image) | set(misses.image) == set(range(len(names))) and set(rows.image).isdisjoint(misses.image)
    assert {names[i] for i in rows.image} == {'astronaut', 'camera', 'lfw-face-0', 'lfw-face-1'}
    assert set(misses.reason) == {'no face found by mtcnn'}
    assert rows.det_score.dtype == np.float64 and rows.box_x0.dtype == np.float64 and (rows.det_score > 0.9).all()
    for c, r in zip(crops, rows.to_dict('records')):
        assert c.shape == (96, 96, 3)
        np.testing.assert_array_equal(recrop(photos[names[r['image']]], r, 96), c)


def test_cascade_fallback_and_auto_without_facenet(photos, monkeypatch):
    "The cascade finds the astronaut behind the same interface; without facenet-pytorch, 'auto' is the cascade and 'mtcnn' says how to install it."
    _, rows, misses = face_crops([photos['astronaut'], photos['coffee']], 'cascade')
    assert list(rows.image) == [0] and rows.crop_angle[0] == 0 and np.isnan(rows.det_score[0])
    assert list(misses.reason) == ['no face found by cascade']
    import builtins, importlib.util
    real_import, real_find = builtins.__import__, importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'facenet_pytorch' else real_find(n, *a))
    def no_facenet(name, *a, **k):
        if name.startswith('facenet_pytorch'): raise ImportError("No module named 'facenet_pytorch'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', no_facenet)
    assert get_face_detector('auto').name == 'cascade'
    with pytest.raises(DflabError, match=r'pip install --no-deps facenet-pytorch==2.6.0'): get_face_detector('mtcnn')


def test_frames_are_evenly_spaced_with_exact_indices(tmp_path):
    "Sampled frames are the middles of equal segments, decoded exactly, with the stream's timestamps."
    assert list(sample_indices(10, 3)) == [1, 5, 8] and list(sample_indices(2, 5)) == [0, 1]
    clip = [np.full((16, 16, 3), 3 * i, np.uint8) for i in range(30)]
    write_video(tmp_path/'v.mkv', clip, fps=10)
    frames, idx, ts = read_frames(tmp_path/'v.mkv', 5)
    assert list(idx) == [3, 9, 15, 21, 27] and [int(f[0, 0, 0]) for f in frames] == [9, 27, 45, 63, 81]
    np.testing.assert_allclose(ts, idx / 10)
    (tmp_path/'bad.mp4').write_bytes(b'not a video')
    with pytest.raises(DflabError): read_frames(tmp_path/'bad.mp4', 2)


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    return face_set(4, frames=6, root=tmp_path_factory.mktemp('faceset'))


def test_face_set_parity_and_names(small_set):
    "Every identity has a pristine video and one per manipulation, named as FF++ does; a pair is one group."
    v = small_set
    assert len(v) == 20 and int(v.label.sum()) == 16
    assert set(v.video[v.label == 1]) == {'000_001', '001_000', '002_003', '003_002'}
    assert face_groups(v).nunique() == 2 and (face_groups(v).groupby(v.group.to_numpy()).nunique() == 1).all()


def test_build_faces_resume_and_report(small_set, tmp_path):
    "Crops keep frame, timestamp and box; a broken input is reported, not dropped; a killed build resumes to the same manifest."
    src = manifest_root(small_set)
    m = small_set.copy(); m.attrs = dict(small_set.attrs)
    (src/'broken').mkdir(exist_ok=True); (src/'broken/x.mkv').write_bytes(b'\0' * 64)
    extra = pd.DataFrame([{'path': 'broken/x.mkv', 'label': 1, 'generator': 'faceswap', 'video': '009_008'}])
    m = pd.concat([m, extra], ignore_index=True); m.attrs = dict(small_set.attrs)
    from dflab.data.manifest import as_manifest
    write_manifest(as_manifest(m, root=src), tmp_path/'in.parquet')
    faces, miss = build_faces(tmp_path/'in.parquet', tmp_path/'out', frames=3, size=64, progress=False)
    assert set(faces.origin) | set(miss.origin) == set(m.path)                                    # nothing lost
    assert miss.reason[miss.origin == 'broken/x.mkv'].str.startswith('unreadable').all()
    one = faces[faces.origin == 'real/000.mkv']
    assert list(one.frame) == [1, 3, 5] and np.allclose(one.time, one.frame / 25)
    assert set(faces.group.dropna()) == {'pair-000', 'pair-002'} and (faces.video[faces.label == 0] == faces.origin[faces.label == 0].str[5:8]).all()
    r = one.iloc[1]
    frames, _, _ = read_frames(src/'real/000.mkv', 3)
    np.testing.assert_array_equal(recrop(frames[1], r, 64), np.asarray(Image.open(tmp_path/'out'/r.path)))
    # a build killed mid-line three inputs before the end: the half line is ignored and those inputs are done again
    lines = (tmp_path/'out/journal.jsonl').read_text().splitlines()
    (tmp_path/'out/journal.jsonl').write_text('\n'.join(lines[:-3]) + '\n' + lines[-3][:40])
    again, miss2 = build_faces(tmp_path/'in.parquet', tmp_path/'out', frames=3, size=64, progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), faces.reset_index(drop=True))
    assert len(miss2) == len(miss)
    with pytest.raises(DflabError, match='size: 64 -> 32'): build_faces(tmp_path/'in.parquet', tmp_path/'out', frames=3, size=32)


def test_native_crops_are_source_pixels(small_set, tmp_path):
    "crop='native' copies the frame's own pixels around the face (no rotation, no resampling); a resized crop low-pass filters them; a build is not resumed with the other crop."
    from dflab.baseline import residual
    from dflab.faces.synth import NOISE
    src = manifest_root(small_set)/'videos.parquet'
    nat, _ = build_faces(src, tmp_path/'n', frames=1, size=64, crop='native', progress=False)
    res, _ = build_faces(src, tmp_path/'r', frames=1, size=64, progress=False)
    assert len(nat) == len(res) == 20 and (nat.crop_side == 64).all() and (nat.crop_angle == 0).all()
    assert (res.crop_angle != 0).any() and abs(res.crop_side.median() - 64) < 8      # the face set's scale: 1.3 x box ~ 64 px
    r = nat[nat.origin == 'real/001.mkv'].iloc[0]
    frames, _, _ = read_frames(manifest_root(small_set)/'real/001.mkv', 1)
    x0, y0 = int(r.crop_cx - 32), int(r.crop_cy - 32)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path/'n'/r.path)), frames[0][y0:y0 + 64, x0:x0 + 64])
    hp = lambda m, root: np.mean([np.median(np.abs(residual(np.asarray(Image.open(root/p), np.float64)))) for p in m.path[m.label == 0]])
    assert hp(nat, tmp_path/'n') > 1.2 * hp(res, tmp_path/'r') and hp(nat, tmp_path/'n') > 0.6 * NOISE   # the camera noise survives natively
    with pytest.raises(DflabError, match="crop: 'resize' -> 'native'"):
        build_faces(src, tmp_path/'r', frames=1, size=64, crop='native', progress=False)


def test_cli_faces(small_set, tmp_path):
    "dflab data faces: 0 on success with counts (native crops of --size source pixels), 1 on a missing input, 2 on a bad option; --help imports no torch."
    rc, out, err = run_cli('data', 'faces', '--in', manifest_root(small_set)/'videos.parquet', '--out', tmp_path/'f',
                           '--frames', '1', '--size', '32', '--crop', 'native', '--no-progress')
    assert rc == 0 and re.search(r'\d+ face crops from 20 inputs \(\d+ fake\)', out), out + err
    f = read_manifest(tmp_path/'f/manifest.parquet')
    assert f.frame.eq(3).all() and f.crop_side.eq(32).all()                                 # the middle of 6 frames, 32 source px
    assert run_cli('data', 'faces', '--in', tmp_path/'none', '--out', tmp_path/'g')[0] == 1
    assert run_cli('data', 'faces', '--in', 'x', '--out', 'y', '--frames', '0')[0] == 2
    assert run_cli('data', 'faces', '--in', 'x', '--out', 'y', '--crop', 'tight')[0] == 2


def test_video_metrics_pool_frames():
    "Video scores pool each video's frames; video AUC is the AUC of those scores; mixed labels are refused."
    rng = np.random.default_rng(1)
    p = pd.DataFrame({'video': np.repeat([f'v{i}' for i in range(20)], 5), 'label': np.repeat(np.arange(20) % 2, 5),
                      'generator': np.repeat(np.where(np.arange(20) % 2, 'fs', 'real'), 5)})
    p['score'] = rng.random(100) * 0.6 + 0.3 * p.label
    v = video_scores(p, 'topk', k=2)
    assert len(v) == 20 and (v.n_frames == 5).all()
    assert np.isclose(v.score[v.video == 'real/v0'].item(), np.sort(p.score[p.video == 'v0'])[-2:].mean())
    vm = video_metrics(p, p).set_index('level')
    assert vm.loc['video mean', 'n'] == 20 and vm.loc['frame', 'n'] == 100
    assert np.isclose(vm.loc['video max', 'auc'], roc_auc(video_scores(p, 'max').label, video_scores(p, 'max').score))
    with pytest.raises(DflabError, match='real and fake frames'): video_scores(p.assign(label=np.arange(100) % 2))


def test_ffpp_protocol_cli(small_set, tmp_path):
    "dflab data split --protocol ffpp keeps pairs whole and the named manipulations on their sides."
    write_manifest(small_set, tmp_path/'v.parquet')
    rc, out, err = run_cli('data', 'split', '--manifest', tmp_path/'v.parquet', '--protocol', 'ffpp', '--train', 'faceswap',
                           '--test', 'reenact', '--val-size', '0.5', '--out', tmp_path/'s.parquet')
    assert rc == 0, err
    s = read_manifest(tmp_path/'s.parquet')
    assert set(s.generator[s.split.isin(['train', 'val'])]) <= {'real', 'faceswap'} and set(s.generator[s.split == 'test']) <= {'real', 'reenact'}
    assert s.groupby('group').split.nunique(dropna=True).max() == 1
    with pytest.raises(DflabError, match='no rows of source'): make_split(small_set, 'ffpp', train_source='c40')


def test_evaluation_reports_video_level(tmp_path):
    "write_evaluation adds the video level when the rows have videos, and leaves image sets as they were."
    from dflab.report import write_evaluation
    rng = np.random.default_rng(2)
    def rows(prefix):
        p = pd.DataFrame({'video': np.repeat([f'{prefix}{i}' for i in range(12)], 4), 'label': np.repeat(np.arange(12) % 2, 4)})
        p['generator'] = np.where(p.label == 1, 'fs', 'real'); p['path'] = [f'{prefix}/{i}.png' for i in range(len(p))]
        return p.assign(score=(rng.random(len(p)) * 0.7 + 0.3 * p.label).round(6))
    test, val = rows('t'), rows('v')
    m = write_evaluation(tmp_path/'a', test, val=val, n_boot=0, plots=False)
    assert [r['level'] for r in m['video']] == ['frame', 'video mean', 'video max', 'video top-3 mean', 'video q0.9']
    assert json.loads((tmp_path/'a/metrics.json').read_text())['video'][1]['n'] == 12
    assert '## Video level (12 videos)' in (tmp_path/'a/report.md').read_text()
    m = write_evaluation(tmp_path/'b', test.drop(columns='video'), val=val.drop(columns='video'), n_boot=0, plots=False)
    assert 'video' not in m and not (tmp_path/'b/video_metrics.csv').exists()
