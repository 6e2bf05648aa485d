"Shared pytest setup: offline, a private cache and runs directory for the whole session, and the repository root."
import os, tempfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

# Tests never touch the user's ~/.cache/dflab or ./runs: the embedded benchmark, the feature cache and every run
# directory of this session (notebooks and subprocesses inherit the environment) live in one temporary folder.
# DFLAB_TEST_CACHE keeps a cache across sessions on purpose (e.g. a developer's warm benchmark); never the default.
_SESSION = Path(tempfile.mkdtemp(prefix='dflab-tests-'))
os.environ['DFLAB_CACHE'] = os.environ.get('DFLAB_TEST_CACHE') or str(_SESSION/'cache')
os.environ['DFLAB_RUNS'] = str(_SESSION/'runs')
os.environ['XDG_CACHE_HOME'] = str(_SESSION/'xdg')    # even code that drops DFLAB_CACHE stays out of ~/.cache
SESSION_ENV = {k: os.environ[k] for k in ('DFLAB_CACHE', 'DFLAB_RUNS', 'XDG_CACHE_HOME')}

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow_cells: a notebook with #| slow cells (run them with DFLAB_TEST_FLAGS=slow)')

@pytest.fixture
def root() -> Path: return ROOT

def pytest_sessionfinish(session, exitstatus):
    import shutil
    shutil.rmtree(_SESSION, ignore_errors=True)
