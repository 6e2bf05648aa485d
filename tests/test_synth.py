"The embedded benchmark across processes: pool vs single-process builds, the CLI as a user runs it, cache races."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from dflab.synth import VERSION, build, tree_digest

DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')
FEW = 'gan-v2,gan-v3,ldm,pixdiff-v2,vq-v2'   # keep gan-v1, pixdiff-v1, vq-v1: a quick build with three families

def sh(*args, **kw):
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)

def test_process_pool_is_byte_identical(tmp_path):
    "Every image draws from its own seeded stream, so a 2-process pool writes exactly what one process writes."
    a = build(tmp_path/'a', 'tiny', seed=3, size=32, exclude_generators=FEW, workers=1)
    b = build(tmp_path/'b', 'tiny', seed=3, size=32, exclude_generators=FEW, workers=2)
    da = tree_digest(a)
    assert da == tree_digest(b) and len(da) > 250
    c = build(tmp_path/'c', 'tiny', seed=4, size=32, exclude_generators=FEW, workers=1)
    assert dict(tree_digest(c))['real/images/000000.png'] != dict(da)['real/images/000000.png']   # the seed matters

def test_cli_builds_a_layout_dflab_data_reads_clean(tmp_path):
    r = sh('synth', '--scale', 'tiny', '--seed', 1, '--size', 32, '--out', tmp_path/'b', '--exclude-generators', FEW)
    assert r.returncode == 0, r.stderr
    assert 'wrote 200 real and 60 fake images from 3 generators' in r.stdout
    meta = json.loads((tmp_path/'b'/'benchmark.json').read_text())
    assert meta['size'] == 32 and meta['seed'] == 1 and sorted(meta['excluded']) == sorted(
        ['gan-v2', 'gan-v3', 'ldm-v1', 'ldm-v1.5', 'ldm-v2', 'pixdiff-v2', 'vq-v2'])
    r = sh('data', 'build', '--layout', 'dflip3k', '--root', tmp_path/'b', '--out', tmp_path/'m.parquet', '--validate-images')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'m.parquet').exists() and not (tmp_path/'m.report.csv').exists()

def test_cli_errors(tmp_path):
    r = sh('synth', '--scale', 'huge', '--out', tmp_path/'x')
    assert r.returncode == 2 and 'invalid choice' in r.stderr
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'keep.txt').write_text('mine')
    r = sh('synth', '--out', tmp_path/'x')
    assert r.returncode == 1 and 'not empty' in r.stderr and (tmp_path/'x'/'keep.txt').read_text() == 'mine'

def test_get_benchmark_race(tmp_path):
    "Two processes asking for the same uncached benchmark both get the one complete copy; no temporary debris."
    code = "from dflab.synth import get_benchmark; print(get_benchmark('tiny', 5, size=32))"
    env = {**os.environ, 'DFLAB_CACHE': str(tmp_path)}
    ps = [subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in ps]
    assert all(p.returncode == 0 for p in ps) and outs[0] == outs[1]
    assert sorted(x.name for x in (tmp_path/'synth').iterdir()) == [f'{VERSION}-tiny-5-32px']
    assert (Path(outs[0])/'benchmark.json').exists()

@pytest.mark.parametrize('how', ['stdin', 'unguarded-script'])
def test_pool_needs_no_importable_main(tmp_path, how):
    "A 2-process build from a script read on stdin (no importable __main__) or from a script without a main guard."
    code = ("from dflab.synth import get_benchmark\n"
            "print(get_benchmark('tiny', 7, size=32, workers=2))\n")
    env = {**os.environ, 'DFLAB_CACHE': str(tmp_path/'cache')}
    if how == 'stdin': cmd, stdin = [sys.executable, '-'], code
    else:
        (tmp_path/'script.py').write_text(code)
        cmd, stdin = [sys.executable, str(tmp_path/'script.py')], None
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'BrokenProcessPool' not in r.stderr and 'Traceback' not in r.stderr, r.stderr
    out = Path(r.stdout.strip())
    assert out == tmp_path/'cache'/'synth'/f'{VERSION}-tiny-7-32px' and (out/'benchmark.json').is_file()
    assert len(list(out.rglob('*.png'))) == 450   # 400 images and 50 masks

def test_content_checks_on_tiny():
    "The content-shortcut table runs on tiny: one row per check, AUCs in [0, 1], the grey rates as counted by hand."
    import numpy as np
    from dflab.baseline import CONTENT_CHECKS, content_checks, load_arrays
    from dflab.synth import get_benchmark
    A = load_arrays(get_benchmark('tiny'))
    t = content_checks(A)
    assert list(t.index) == list(CONTENT_CHECKS)
    assert list(t.columns) == ['features', 'may see', 'auc', 'content_auc', 'statistic', 'real', 'fake']
    assert t.auc.between(0, 1).all() and t.content_auc.between(0, 1).all() and (t.features > 0).all()
    x, y = A['images'], A['label']
    grey = (x == x[..., :1]).all((1, 2, 3))
    assert 0 < grey[y == 1].mean() and 0 < grey[y == 0].mean()          # greyness is content in both classes
    assert np.isclose(t.loc['exact grey', 'real'], grey[y == 0].mean())
    assert np.isclose(t.loc['exact grey', 'fake'], grey[y == 1].mean())
    assert t.auc.max() <= .7, t.auc                                     # tiny: 400 images, a loose bound
    assert t.content_auc.max() > .7, t.content_auc                      # the same features do see content
