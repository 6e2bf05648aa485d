"Backbone tests a notebook can't run: logging as a fresh process prints it, and the feature cache after weight edits."
import os, subprocess, sys
import pytest
import torch

@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A temporary DFLAB_CACHE, for this process and its children: nothing goes to ~/.cache."
    monkeypatch.setenv('DFLAB_CACHE', str(tmp_path/'cache'))
    return tmp_path/'cache'

def run_py(code:str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, 'DFLAB_CACHE': str(cache), 'DFLAB_THREADS': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)

def test_tiny_load_prints_no_open_clip_warning(cache):
    r = run_py("from dflab.backbones import load_backbone; load_backbone('openclip:dflab-tiny')", cache)
    assert r.returncode == 0, r.stderr
    assert 'No pretrained weights loaded' not in r.stderr and 'WARNING' not in r.stderr, r.stderr
    assert r.stdout == ''

def test_random_weights_said_once_in_dflab_words(cache):
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from dflab.backbones import load_backbone\n"
            "for n in ['openclip:dflab-tiny@random', 'openclip:dflab-tiny@random', 'openclip:dflab-small', 'openclip:ViT-B-32',\n"
            "          'openclip:ViT-B-32']:\n"
            "    load_backbone(n)\n"
            "logging.getLogger('open_clip').warning('No pretrained weights loaded: other records still pass')\n")
    r = run_py(code, cache)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert not [l for l in lines if "No pretrained weights loaded for model" in l], r.stderr
    tiny = [l for l in lines if 'openclip:dflab-tiny has random weights' in l]
    b32 = [l for l in lines if 'openclip:ViT-B-32 has random weights' in l]
    assert len(tiny) == 1 and tiny[0].startswith('INFO:dflab.backbones:') and 'as asked' in tiny[0], r.stderr
    assert len(b32) == 1 and b32[0].startswith('WARNING:dflab.backbones:') and 'ViT-B-32@TAG' in b32[0], r.stderr
    small = [l for l in lines if 'openclip:dflab-small has random weights' in l]
    assert len(small) == 1 and 'dflab ships none for it' in small[0] and small[0].startswith('INFO:'), r.stderr
    assert 'other records still pass' in r.stderr            # the filter drops one record, not open_clip's logging

def test_fingerprint_follows_the_weights(cache):
    from dflab.backbones import Backbone, load_backbone
    bb, ref = load_backbone('openclip:dflab-tiny'), load_backbone('openclip:dflab-tiny')
    original = {k: v.clone() for k, v in bb.model.state_dict().items()}
    fp0 = bb.fingerprint
    hashed = []
    bb._hash_weights = lambda: (hashed.append(1), Backbone._hash_weights(bb))[1]
    assert bb.fingerprint == fp0 and bb.fingerprint == ref.fingerprint and not hashed   # unchanged: memoised
    p = bb.model.visual.transformer.resblocks[0].mlp.c_fc.weight
    with torch.no_grad(): p.add_(1e-3)                                   # in place, through the parameter
    fp1 = bb.fingerprint
    assert fp1 != fp0 and len(hashed) == 1 and bb.fingerprint == fp1 and len(hashed) == 1
    bb.model.load_state_dict(original)                                   # load_state_dict: back to the same hash
    assert bb.fingerprint == fp0
    p.data.add_(1)                                                       # through .data: no version bump, sampled
    assert bb.fingerprint not in (fp0, fp1)
    bb.model.load_state_dict(original)
    bb.model.visual.proj.data = bb.model.visual.proj.data.clone() * 2   # a replaced .data: a new storage
    assert bb.fingerprint != fp0
    bb.model.load_state_dict(original); assert bb.fingerprint == fp0
    bb.model.visual.proj.data[3, 5] += 1                                 # one element off the samples, via .data
    assert bb.fingerprint == fp0 and bb.refresh_fingerprint() != fp0     # only a refresh sees it
    assert ref.fingerprint == fp0                                        # another instance is not affected

def test_feature_cache_follows_weight_changes(cache, tmp_path):
    "extract() keys on the fingerprint: after an in-place weight change it computes anew instead of serving stale rows."
    torch.set_num_threads(1)
    from dflab.backbones import load_backbone
    from dflab.features import extract
    from dflab.synth import benchmark_manifest
    full = benchmark_manifest('tiny', 0, 32)
    df = full.iloc[:12].reset_index(drop=True); df.attrs = dict(full.attrs)
    bb = load_backbone('openclip:dflab-tiny')
    original = {k: v.clone() for k, v in bb.model.state_dict().items()}
    kw = dict(layers=['final', 'cls:1'], cache=tmp_path/'features', num_workers=0, progress=False)
    a = extract(df, bb, **kw)
    assert a.stats['computed'] == 12 and extract(df, bb, **kw).stats['hits'] == 12
    with torch.no_grad(): bb.model.visual.proj.mul_(2)                  # an in-place edit of the loaded model
    b = extract(df, bb, **kw)
    assert b.stats['computed'] == 12 and b.stats['hits'] == 0 and b.stats['key'] != a.stats['key']
    torch.testing.assert_close(b['final'], 2 * a['final'], rtol=2e-3, atol=2e-3)   # the projection doubled
    torch.testing.assert_close(b['cls:1'], a['cls:1'], rtol=2e-3, atol=2e-3)       # blocks before it did not
    with torch.no_grad(): bb.model.visual.transformer.resblocks[0].attn.in_proj_weight.data.mul_(1.5)
    c = extract(df, bb, **kw)                                            # a whole-tensor write through .data
    assert c.stats['computed'] == 12 and c.stats['key'] not in (a.stats['key'], b.stats['key'])
    assert not torch.allclose(c['cls:1'], a['cls:1'], atol=1e-3)
    bb.model.load_state_dict(original)                                   # the original weights: the original rows
    d = extract(df, bb, **kw)
    assert d.stats['hits'] == 12 and d.stats['key'] == a.stats['key']
    torch.testing.assert_close(d['final'], a['final'], rtol=2e-3, atol=2e-3)

def test_default_tiny_is_the_shipped_pretrained_model(cache):
    "openclip:dflab-tiny loads the package's pretrained weights (recorded sha256), @random the seeded initialisation."
    import hashlib, json
    from dflab.backbones import load_backbone, shipped_weights
    p = shipped_weights('dflab-tiny')
    rec = json.loads(p.with_suffix('.json').read_text())
    assert rec['sha256'] == hashlib.sha256(p.read_bytes()).hexdigest() and p.stat().st_size < 15e6
    a, r = load_backbone('openclip:dflab-tiny'), load_backbone('openclip:dflab-tiny@random')
    assert a.weights == 'dflab' and r.weights is None and a.fingerprint != r.fingerprint
    assert load_backbone('openclip:dflab-tiny@dflab').fingerprint == a.fingerprint

def test_shipped_tiny_clip_reads_processing(cache):
    "On corpus contents it never trained on, the pretrained text tower tells an original from its processed twin."
    import numpy as np
    from dflab.backbones import load_backbone
    from dflab.pretrain import _to_tensor, corpus_pair
    torch.set_num_threads(1)
    bb = load_backbone('openclip:dflab-tiny')
    pairs = [corpus_pair(7, 10**6 + i) for i in range(400)]
    pairs = [p for p in pairs if p[0]['ops'] == [] and p[1]['ops']][:40]     # an original and a processed twin
    assert len(pairs) >= 30
    imgs = np.stack([v['image'] for p in pairs for v in p])
    with torch.no_grad():
        f = torch.nn.functional.normalize(bb.encode_image(_to_tensor(imgs, bb.model)), dim=-1)
        t = torch.nn.functional.normalize(bb.encode_text([v['caption'] for p in pairs for v in p]), dim=-1)
    s = (f @ t.T).reshape(len(pairs), 2, len(pairs), 2)
    i = torch.arange(len(pairs))
    right = s[i, 0, i, 0] + s[i, 1, i, 1] > s[i, 0, i, 1] + s[i, 1, i, 0]     # each image nearer its own caption
    assert right.float().mean() > .8, right.float().mean()
