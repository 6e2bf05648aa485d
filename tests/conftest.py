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
# Under pytest-xdist (`pytest -n 2`) the workers inherit DFLAB_TEST_SESSION from the process that started them and
# share its folder: one benchmark build and one feature cache (both safe between processes), removed by that process.
_OWNER = 'DFLAB_TEST_SESSION' not in os.environ
_SESSION = Path(os.environ.get('DFLAB_TEST_SESSION') or tempfile.mkdtemp(prefix='dflab-tests-'))
os.environ['DFLAB_TEST_SESSION'] = str(_SESSION)
os.environ['DFLAB_CACHE'] = os.environ.get('DFLAB_TEST_CACHE') or str(_SESSION/'cache')
os.environ['DFLAB_RUNS'] = str(_SESSION/'runs')
os.environ['XDG_CACHE_HOME'] = str(_SESSION/'xdg')    # even code that drops DFLAB_CACHE stays out of ~/.cache
SESSION_ENV = {k: os.environ[k] for k in ('DFLAB_CACHE', 'DFLAB_RUNS', 'XDG_CACHE_HOME')}

# Offline is proved, not assumed: a connection (or a name lookup) beyond this machine raises an OSError, as it would
# offline, and is written to NET_LOG; any new line there fails the test that made it. Unix sockets and loopback
# (127.0.0.0/8, ::1, localhost) stay open: Jupyter kernels and accelerate's processes talk over them. The guard is
# a sitecustomize module on PYTHONPATH, so every Python subprocess (`dflab ...`, kernels, `accelerate launch`)
# installs it too; this process loads the same file.
_GUARD = """
import ipaddress, os, socket
_LOG = os.environ.get('DFLAB_TEST_NET_LOG')
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

class NetworkBlocked(ConnectionRefusedError):
    "A connection beyond this machine, attempted while the tests run offline."

def _local(host):
    if host is None: return True
    host = (host.decode() if isinstance(host, bytes) else str(host)).strip('[]').split('%')[0]
    if host in ('', 'localhost', socket.gethostname()) or host.endswith('.localhost'): return True
    try: ip = ipaddress.ip_address(host)
    except ValueError: return False
    return ip.is_loopback or ip.is_unspecified

def _block(what, exc=NetworkBlocked):
    if _LOG:
        with open(_LOG, 'a') as f: f.write(f"pid {os.getpid()}: {what}\\n")
    raise exc(f"network access blocked in tests: {what}")

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]): _block(f"connect to {address}")
    return _connect(self, address)

def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]): _block(f"connect to {address}")
    return _connect_ex(self, address)

def getaddrinfo(host, *args, **kw):
    if not _local(host): _block(f"look up {host}", socket.gaierror)
    return _getaddrinfo(host, *args, **kw)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""
_GUARD_DIR = _SESSION/'netguard'
_GUARD_DIR.mkdir(exist_ok=True)
if not (_GUARD_DIR/'sitecustomize.py').exists():
    (_GUARD_DIR/'.sitecustomize.tmp').write_text(_GUARD); os.replace(_GUARD_DIR/'.sitecustomize.tmp', _GUARD_DIR/'sitecustomize.py')
NET_LOG = _SESSION/f"network-attempts-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log"   # one per pytest-xdist worker
os.environ['DFLAB_TEST_NET_LOG'] = str(NET_LOG)
os.environ['PYTHONPATH'] = os.pathsep.join([str(_GUARD_DIR)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                                                                if p and p != str(_GUARD_DIR)])

def _install_guard():
    import importlib.util
    spec = importlib.util.spec_from_file_location('_dflab_test_netguard', _GUARD_DIR/'sitecustomize.py')
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
_install_guard()

def _net_log_size() -> int: return NET_LOG.stat().st_size if NET_LOG.exists() else 0

@pytest.fixture(autouse=True)
def offline_proved():
    "Fail the test if it (or any subprocess it started) tried to reach the network."
    start = _net_log_size()
    yield
    if _net_log_size() > start:
        with open(NET_LOG, 'rb') as f: f.seek(start); tried = f.read().decode(errors='replace').strip()
        pytest.fail(f"the test tried to reach the network (tests run offline):\n{tried}", pytrace=False)

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow_cells: a notebook with #| slow cells (run them with DFLAB_TEST_FLAGS=slow)')
    config.addinivalue_line('markers', 'xdist_group(name): tests run by one pytest-xdist worker (registered here too)')

def pytest_collection_modifyitems(config, items):
    "Under `pytest -n N --dist loadgroup`, a test file's tests share one worker (and its module fixtures); notebooks spread."
    for item in items:
        if item.path.name != 'test_notebooks.py': item.add_marker(pytest.mark.xdist_group(item.path.stem))

@pytest.fixture(scope='session')
def tiny_bench():
    "The embedded tiny benchmark's manifest and the tiny backbone, built and loaded once per session (read-only)."
    import torch
    torch.set_num_threads(1)
    from dflab.backbones import load_backbone
    from dflab.synth import benchmark_manifest
    return benchmark_manifest('tiny'), load_backbone('openclip:dflab-tiny')

@pytest.fixture(scope='session')
def world(tiny_bench):
    "The tiny benchmark, the tiny backbone, and features that carry a known, learnable real/fake signal (read-only)."
    import torch
    manifest, bb = tiny_bench
    g = torch.Generator().manual_seed(0)
    y = torch.tensor(manifest.label.to_numpy(), dtype=torch.float32)
    direction = torch.randn(bb.embed_dim, generator=g)
    feats = torch.randn(len(manifest), bb.embed_dim, generator=g) + 3.0 * (2 * y[:, None] - 1) * direction / direction.norm()
    return manifest, bb, feats

@pytest.fixture
def cli():
    "Run `dflab *args` in this process (no interpreter start-up); a CompletedProcess, as a subprocess would give."
    import subprocess
    from dflab.cli import run_cli
    def run(*args):
        rc, out, err = run_cli(*args)
        return subprocess.CompletedProcess(['dflab', *map(str, args)], rc, out, err)
    return run

@pytest.fixture
def root() -> Path: return ROOT

def pytest_sessionfinish(session, exitstatus):
    import shutil
    if _OWNER: shutil.rmtree(_SESSION, ignore_errors=True)
