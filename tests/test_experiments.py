"`dflab run`, `dflab sweep` and `dflab collect` as a user runs them: subprocesses of the installed command."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import yaml
import nbformat

ROOT = Path(__file__).resolve().parents[1]
DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')

def sh(*args, cwd=None, env=None, timeout=600):
    e = {**os.environ, **(env or {})}
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=e)

def injected(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c.source for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1
    return cells[0]

def test_list_shows_templates_and_parameters():
    r = sh('run', '--list')
    assert r.returncode == 0, r.stderr
    assert 'hello  (' in r.stdout and 'classifier' in r.stdout and 'samples per class' in r.stdout

def test_parameter_injection_into_a_timestamped_run(tmp_path):
    "Default layout runs/<name>/<timestamp>/ under $DFLAB_RUNS; values typed from the defaults and injected."
    r = sh('run', 'hello', '-p', 'n', '40', '-p', 'lr', '1e-1', '-p', 'classifier', 'centroid', '--quiet',
           env={'DFLAB_RUNS': tmp_path/'runs'}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = [p for p in (tmp_path/'runs'/'hello').iterdir() if p.name != 'latest']
    assert len(runs) == 1
    run = runs[0]
    assert (tmp_path/'runs'/'hello'/'latest').resolve() == run.resolve()
    params = yaml.safe_load((run/'params.yaml').read_text())
    assert params['n'] == 40 and params['lr'] == 0.1 and isinstance(params['lr'], float) and params['classifier'] == 'centroid'
    src = injected(run/'hello.ipynb')
    assert 'n = 40' in src and 'lr = 0.1' in src and 'classifier = "centroid"' in src
    metrics = json.loads((run/'metrics.json').read_text())
    assert 0.5 < metrics['auc'] <= 1 and 'accuracy' in metrics
    assert json.loads((run/'run.json').read_text())['status'] == 'ok'
    assert 'Executing Cell' in (run/'run.log').read_text()
    assert f'auc = ' in r.stdout and str(run.name) in r.stdout
    assert not list((ROOT/'nbs').rglob('metrics.json'))        # nothing written beside the templates

def test_params_file_and_precedence(tmp_path):
    (tmp_path/'p.yaml').write_text('n: 30\nsteps: 5\n')
    r = sh('run', 'hello', '-f', tmp_path/'p.yaml', '-p', 'steps', '7', '--quiet', '--out', tmp_path/'run')
    assert r.returncode == 0, r.stderr
    params = yaml.safe_load((tmp_path/'run'/'params.yaml').read_text())
    assert (params['n'], params['steps']) == (30, 7)

def test_unknown_parameter_fails_before_running(tmp_path):
    r = sh('run', 'hello', '-p', 'learning_rate', '0.1', '--out', tmp_path/'run')
    assert r.returncode == 1
    assert r.stderr.strip() == ("dflab: error: unknown parameter 'learning_rate' for experiment 'hello'; "
                                "valid parameters: n, shift, lr, steps, classifier, seed")
    assert not (tmp_path/'run').exists()
    r = sh('run', 'hello', '-p', 'steps', 'many', '--out', tmp_path/'run')
    assert r.returncode == 1 and "parameter 'steps' expects int, got 'many'" in r.stderr
    assert not (tmp_path/'run').exists()
    r = sh('run', 'nosuchexperiment')
    assert r.returncode == 1 and "unknown experiment 'nosuchexperiment'; available: " in r.stderr

def test_failing_notebook_is_exit_1_with_its_error(tmp_path):
    r = sh('run', 'hello', '-p', 'classifier', 'forest', '--quiet', '--out', tmp_path/'run')
    assert r.returncode == 1
    assert "experiment 'hello' failed: ValueError: unknown classifier 'forest'" in r.stderr
    info = json.loads((tmp_path/'run'/'run.json').read_text())
    assert info['status'] == 'failed' and 'forest' in info['error']
    assert (tmp_path/'run'/'hello.ipynb').is_file()         # the executed notebook keeps the traceback

def test_collect_over_two_runs(tmp_path):
    for shift in ('0.5', '3'):
        r = sh('run', 'hello', '-p', 'shift', shift, '-p', 'n', '50', '--quiet', '--out', tmp_path/'runs'/f'shift{shift}')
        assert r.returncode == 0, r.stderr
    r = sh('collect', tmp_path/'runs', '--out', tmp_path/'table.csv')
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(tmp_path/'table.csv')
    assert len(t) == 2 and list(t['shift']) == [0.5, 3.0] and list(t['status']) == ['ok', 'ok']
    assert t.loc[1, 'auc'] > t.loc[0, 'auc']                   # clusters further apart separate better
    r = sh('collect', tmp_path/'runs')
    assert r.returncode == 0 and r.stdout.startswith('| experiment | run | status | n | shift |')
    r = sh('collect', tmp_path/'empty-and-missing')
    assert r.returncode == 1 and 'no such directory' in r.stderr

def test_sweep_with_a_failing_point_goes_on(tmp_path):
    r = sh('sweep', 'hello', '-p', 'classifier', 'logistic,forest,centroid', '-p', 'n', '40', '--quiet',
           '--out', tmp_path/'sweep')
    assert r.returncode == 1 and '1 of 3 sweep points failed' in r.stderr
    t = pd.read_csv(tmp_path/'sweep'/'results.csv')
    assert list(t['classifier']) == ['logistic', 'forest', 'centroid']
    assert list(t['status']) == ['ok', 'failed', 'ok']
    assert "unknown classifier 'forest'" in t.loc[1, 'error'] and pd.isna(t.loc[1, 'auc'])
    assert t.loc[2, 'auc'] > 0.5                                # the point after the failure ran
    assert (tmp_path/'sweep'/'results.md').read_text().count('\n') == 5
    assert 'forest' in r.stdout and 'failed' in r.stdout          # the table is printed too

def test_sweep_grid_is_checked_first(tmp_path):
    r = sh('sweep', 'hello', '-p', 'steps', '1,x', '--out', tmp_path/'sweep')
    assert r.returncode == 1 and "parameter 'steps' expects int, got 'x'" in r.stderr
    assert not (tmp_path/'sweep').exists()

def test_quickstart_tiny_end_to_end(tmp_path):
    "The main job at its CI size (the notebook's own defaults, without the preset): table, figures, report, metrics."
    figures = sorted(p.name for p in (ROOT/'figures').glob('*.png'))
    r = sh('run', 'quickstart', '--no-preset', '--quiet', '--out', tmp_path/'qs', timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'qs'
    assert yaml.safe_load((run/'params.yaml').read_text())['scale'] == 'tiny'
    t = pd.read_csv(run/'comparison.csv')
    assert set(t.protocol) == {'in-distribution', 'leave-one-generator-out', 'leave-one-family-out'}
    ref, zs = 'residual-spectrum (reference)', 'zero-shot prompts (no training)'
    assert set(t.detector) == {'linear-probe', 'mlp-head', 'prompt-adapter', zs, ref}
    assert len(t) == 15 and t.groupby('protocol')['n test'].nunique().eq(1).all()   # every row of a protocol on the same test rows
    # the forensic reference learns the benchmark (0.93-0.98 over benchmark seeds 0-4 at this size), and so do the
    # shipped pretrained tiny CLIP's features, trained or zero-shot (a random-weight backbone stays near 0.5)
    auc = t.set_index(['protocol', 'detector']).AUC
    assert auc['in-distribution', ref] > 0.85 and auc['leave-one-generator-out', ref] > 0.8
    assert auc['in-distribution', 'linear-probe'] > 0.7 and auc['in-distribution', zs] > 0.7
    assert auc['leave-one-generator-out', zs] > 0.65 and auc['leave-one-family-out', zs] > 0.7
    assert t[['AUC', 'AP', 'EER', 'acc @ val thr']].notna().all().all() and t.AUC.between(0, 1).all()
    assert sorted(p.name for p in (run/'figures').iterdir()) == ['confident_errors.png', 'per_generator_auc.png', 'robustness.png',
                                                                'roc.png', 'score_distributions.png']
    rob = pd.read_csv(run/'robustness.csv')
    assert set(rob.setting) == {'clean', 'jpeg 50', 'blur 1'} and set(rob.detector) == set(t.detector) - {zs}
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['id']) == set(m['logo']) == set(m['lofo']) == {'linear-probe', 'mlp-head', 'prompt-adapter', zs} and m['wall_seconds'] > 0
    assert m['reference']['id']['auc'] == pytest.approx(auc['in-distribution', ref], abs=1e-4)
    assert set(m['reference']['robustness']) == {'clean', 'jpeg 50', 'blur 1'}
    report = (run/'report.md').read_text()
    assert '| in-distribution | linear-probe |' in report and '![roc](figures/roc.png)' in report
    assert f'| in-distribution | {ref} |' in report
    assert f"the residual-spectrum reference reaches {auc['in-distribution', ref]:.3f}" in report   # the explanation quotes this run
    assert f"({'vq'}: a kind of generator never seen in training)" in report and 'leave-one-family-out over 1 held-out family' in report
    assert "dflab's own tiny CLIP" in report and f"zero-shot prompts score AUC {auc['in-distribution', zs]:.3f}" in report
    assert (run/'train'/'id-linear-probe'/'best'/'model.safetensors').is_file()
    assert sorted(p.name for p in (ROOT/'figures').glob('*.png')) == figures     # copy_figures is off by default

def test_quickstart_unknown_family_fails_clearly(tmp_path):
    "A held-out family the benchmark does not have is named in a one-line error before any training."
    r = sh('run', 'quickstart', '--no-preset', '--quiet', '-p', 'family_holdouts', '[diffusion]', '--out', tmp_path/'qs', timeout=600)
    assert r.returncode == 1
    assert "family_holdouts ['diffusion'] name no family of this benchmark; families: ['gan', 'ldm', 'pixdiff', 'vq']" in r.stderr

def test_fusion_ablation_runs_a_single_fusion_row(tmp_path):
    "One fusion row alone (no single stream to compare with): the grid is still chosen on validation, the streams are ablated."
    row = 'CoOp + LaRE (sum, MLP)'
    r = sh('run', 'fusion-ablation', '--no-preset', '--quiet', '-p', 'rows', json.dumps([row]), '-p', 'holdouts', '[gan-v1]',
           '-p', 'jpeg_qualities', '[]', '--out', tmp_path/'fa', timeout=600)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path/'fa'/'metrics.json').read_text())
    assert list(metrics['rows']) == [row] and metrics['fusion_grids'][row] in (1, 4)
    sel = pd.read_csv(tmp_path/'fa'/'fusion_selection.csv')
    assert sorted(sel.grid) == [1, 4] and sel.kept.sum() == 1
    abl = pd.read_csv(tmp_path/'fa'/'stream_ablation.csv')
    assert list(abl.columns) == ['row', 'AUC', 'without text', 'without image', 'without lare']
    assert abl['without image'].item() < -0.05        # the tiny benchmark's image features carry the decision
    assert f"The best fusion, {row}, reaches" in (tmp_path/'fa'/'report.md').read_text()
