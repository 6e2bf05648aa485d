"Runs last (by name): no notebook or test changed the session's private cache and runs settings for the rest of the process."
import os
from conftest import SESSION_ENV

def test_environment_was_left_as_set():
    assert {k: os.environ.get(k) for k in SESSION_ENV} == SESSION_ENV

def test_cache_dir_is_private():
    from dflab.core import cache_dir, runs_dir
    assert str(cache_dir()) == SESSION_ENV['DFLAB_CACHE'] and str(runs_dir()) == SESSION_ENV['DFLAB_RUNS']
