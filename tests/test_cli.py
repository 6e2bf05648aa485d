"The installed `dflab` command, as a user runs it."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
DFLAB = shutil.which('dflab', path=str(Path(sys.executable).parent)) or shutil.which('dflab')

def sh(*args, **kw):
    return subprocess.run([DFLAB, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)

def test_console_script_installed():
    assert DFLAB, "the dflab console script is not installed; run pip install -e ."

def test_version_and_help():
    import dflab
    r = sh('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'dflab {dflab.__version__}'
    r = sh('--help')
    assert r.returncode == 0 and 'commands:' in r.stdout and 'info' in r.stdout

def test_help_does_not_import_torch():
    "The lazy dispatcher keeps `dflab --help` instant: torch is not imported."
    code = "import sys; from dflab.cli import main; main(['--help']); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.strip().endswith('False'), r.stdout

def test_info_json():
    r = sh('info', '--json')
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d['packages']['torch'] and d['runs_dir'] and d['cache_dir']
    assert d['tools']['papermill']

def _targets(table, prefix='dflab'):
    for k, v in table.items():
        if isinstance(v, dict): yield from _targets(v, f'{prefix} {k}')
        else: yield f'{prefix} {k}', v[0]

def test_every_command_resolves():
    "Every `module:function` of the command table imports and is callable (a typo must not hide a command)."
    import importlib
    from dflab.cli import COMMANDS
    seen = []
    for cmd, target in _targets(COMMANDS):
        mod, fn = target.split(':')
        f = getattr(importlib.import_module(mod), fn, None)
        assert callable(f), f"{cmd}: {target} does not resolve"
        seen.append(cmd)
    assert {'dflab train', 'dflab eval', 'dflab predict', 'dflab bench train', 'dflab bench features'} <= set(seen)

def test_every_command_is_listed_in_help():
    from dflab.cli import COMMANDS
    out = sh('--help').stdout
    for cmd, _ in _targets(COMMANDS): assert cmd.split(' ', 1)[1] in out, cmd

def test_usage_error_exit_2():
    r = sh('nonsense')
    assert r.returncode == 2 and "unknown command 'nonsense'" in r.stderr
    r = sh('info', '--nope')
    assert r.returncode == 2

def test_failure_is_one_line_without_traceback(tmp_path):
    "A DflabError becomes exit 1 and one line on stderr; --debug adds the traceback."
    (tmp_path/'boom.py').write_text("from dflab.core import DflabError\n"
                                    "def main(argv): raise DflabError('the thing is broken')\n")
    code = ("import sys; from dflab import cli\n"
            "cli.COMMANDS['info'] = ('boom:main', 'x')\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    r = subprocess.run([sys.executable, '-c', code, 'info'], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == 'dflab: error: the thing is broken'
    r = subprocess.run([sys.executable, '-c', code, '--debug', 'info'], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and 'Traceback' in r.stderr

def _bash_blocks(text):
    import re
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)

def test_readme_and_index_give_the_same_two_commands():
    import nbformat
    readme = _bash_blocks((ROOT/'README.md').read_text())[:2]
    nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    index = _bash_blocks('\n'.join(c.source for c in nb.cells if c.cell_type == 'markdown'))[:2]
    assert len(readme) == 2 and readme == index, (readme, index)
    assert readme[1].rstrip().endswith(' tests') and 'pytest ' in readme[1]

def test_config_error_is_a_usage_error(tmp_path):
    "A value out of range in a config is a usage error (exit 2) naming the key, and leaves no run directory."
    cfg = tmp_path/'c.yaml'
    cfg.write_text(f"run: {{name: bad, out_dir: {tmp_path}}}\ntrain: {{epochs: -1}}\n")
    r = sh('train', '--config', cfg)
    assert r.returncode == 2 and 'train.epochs' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'bad').exists()
