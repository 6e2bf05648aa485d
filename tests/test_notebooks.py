"Run every notebook in nbs/ with nbdev's own runner, one pytest item per notebook, honouring tst_flags."
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'

def _notebooks():
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts) or 'runs' in rel.parts: continue
        yield p

# Experiment templates that a dedicated test already runs end to end through papermill (with its parameters and
# asserting on what the run wrote): running them a second time here as plain notebooks would only repeat that work.
RUN_ELSEWHERE = {'experiments/explain.ipynb': 'tests/test_explain.py::test_experiment_template',
                 'experiments/quickstart.ipynb': 'tests/test_experiments.py::test_quickstart_tiny_end_to_end'}

def _skip_flags():
    "The flags in settings.ini's tst_flags, less any forced on with DFLAB_TEST_FLAGS (e.g. 'slow')."
    flags = get_config(path=ROOT).get('tst_flags', '').split()
    forced = os.environ.get('DFLAB_TEST_FLAGS', '').split()
    return [f for f in flags if f not in forced], forced

def _param(nb):
    "A notebook with `#| slow` cells is also marked `slow_cells`, so a job can run just those with their slow cells on."
    return pytest.param(nb, marks=[pytest.mark.slow_cells] if '#| slow' in nb.read_text() else [])

@pytest.mark.parametrize('nb', [_param(p) for p in _notebooks()], ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(nb):
    rel = nb.relative_to(NBS).as_posix()
    if rel in RUN_ELSEWHERE and not os.environ.get('DFLAB_TEST_FLAGS'):
        pytest.skip(f"run end to end by {RUN_ELSEWHERE[rel]}")
    skip, force = _skip_flags()
    ok, secs = run_notebook(nb, skip_flags=skip, force_flags=force, basepath=ROOT)
    assert ok, f"{nb.relative_to(ROOT)} failed (its traceback is in the captured stderr above)"
