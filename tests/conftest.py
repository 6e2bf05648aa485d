"Shared pytest setup: offline, single-threaded torch where it helps, and the repository root."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

@pytest.fixture
def root() -> Path: return ROOT
