"""The docs site and the JupyterLab explorer in a real browser: Debian's Chromium driven by Playwright.

The site is built in the background while JupyterLab runs the explorer (the two take about as long; two cores).

Screenshots go to $DFLAB_TEST_ARTIFACTS (default tests/artifacts/, ignored by git). Without Chromium, Playwright,
JupyterLab or mkdocs-material these tests skip and say what is missing; under CI=true they fail instead, because
.ci/run installs all of them.
"""
import contextlib, os, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get('DFLAB_TEST_ARTIFACTS', ROOT/'tests'/'artifacts'))

def _missing(what:str):
    "Skip (fail under CI=true) naming what is missing and how to install it."
    msg = f"{what} (CI installs it: see .ci/run)"
    if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'): pytest.fail(msg, pytrace=False)
    pytest.skip(msg)

def _chromium() -> str:
    exe = os.environ.get('DFLAB_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not exe: _missing("no Chromium: apt-get install chromium (or set DFLAB_CHROMIUM to a Chromium binary)")
    return exe

@pytest.fixture(scope='module')
def browser():
    "Chromium from the system (Playwright never downloads its own here)."
    try: from playwright.sync_api import sync_playwright
    except ImportError: _missing("Playwright is not installed: pip install -e '.[dev]'")
    exe = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()

@pytest.fixture
def page(browser):
    "A page that records every request it makes beyond 127.0.0.1 (in `pg.external`)."
    pg = browser.new_page(viewport={'width': 1400, 'height': 1000})
    pg.external = []
    pg.on('request', lambda r: None if r.url.startswith(('http://127.0.0.1', 'data:', 'blob:', 'about:'))
          else pg.external.append(r.url))
    yield pg
    pg.close()

def _shot(pg, name:str):
    pg.screenshot(path=str(ARTIFACTS/f'{name}.png'))

# ---------------------------------------------------------------- JupyterLab

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def lab():
    "JupyterLab on 127.0.0.1, a free port, a token; on a copy of the tutorial so nothing in the checkout changes."
    for mod in ('jupyterlab', 'ipywidgets'):
        try: __import__(mod)
        except ImportError: _missing(f"{mod} is not installed: pip install -e '.[lab]'")
    tmp = Path(tempfile.mkdtemp(prefix='dflab-lab-'))
    work = tmp/'work'; work.mkdir()
    shutil.copy2(ROOT/'nbs'/'tutorials'/'explorer.ipynb', work/'explorer.ipynb')
    settings = tmp/'settings'/'@jupyterlab'
    for ext, name, value in (('apputils-extension', 'notification', '{"fetchNews": "false", "checkForUpdates": false}'),
                             ('docmanager-extension', 'plugin', '{"autosave": false}')):
        (settings/ext).mkdir(parents=True, exist_ok=True)
        (settings/ext/f'{name}.jupyterlab-settings').write_text(value)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp/'config'), 'JUPYTER_RUNTIME_DIR': str(tmp/'runtime'),
           'MPLBACKEND': 'Agg'}
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--LabApp.news_url=',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate', '--LabApp.extension_manager=readonly',
           f'--LabServerApp.user_settings_dir={tmp/"settings"}', f'--LabServerApp.workspaces_dir={tmp/"workspaces"}']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
    log = open(tmp/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(240):
            if proc.poll() is not None: break
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            time.sleep(0.25)
        if proc.poll() is not None: pytest.fail(f"JupyterLab exited:\n{(tmp/'lab.log').read_text()[-3000:]}")
        with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(f'{url}/api/contents', timeout=5)
        assert e.value.code == 403                                    # token auth is on
        yield url, token, tmp
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
        shutil.copy2(tmp/'lab.log', ARTIFACTS/'jupyterlab.log') if ARTIFACTS.is_dir() else None
        shutil.rmtree(tmp, ignore_errors=True)

_RUN_STATE = """() => { const p = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')].map(e => e.innerText);
    const err = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(e => e.innerText).filter(t => /Error|Traceback/.test(t));
    return {done: p.length > 0 && !p.some(t => t.includes('*')) && /\\[\\d+\\]/.test(p[p.length - 1]), errors: err}; }"""

def _run_all(pg):
    "Run > Run All Cells once the kernel is connected (the status bar says Idle); again if nothing started."
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    pg.wait_for_function("() => /\\|\\s*Idle/.test(document.querySelector('.jp-StatusBar-Left')?.innerText || '')",
                         timeout=60000)
    for _ in range(4):
        pg.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
        pg.locator('.lm-Menu-itemLabel').get_by_text('Run All Cells', exact=True).click()
        try:
            pg.wait_for_function("""() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
                .some(e => /\\[(\\*|\\d+)\\]/.test(e.innerText))""", timeout=15000)
            return
        except PlaywrightTimeout: pass
    _shot(pg, 'lab-explorer-not-started'); pytest.fail("Run All Cells started nothing (screenshot lab-explorer-not-started.png)")

def _wait_for_run(pg, timeout:float=150):
    "Wait until every cell has run (no [*] left, the last one numbered); fail at once on an error output."
    end = time.time() + timeout
    while time.time() < end:
        st = pg.evaluate(_RUN_STATE)
        if st['errors']: _shot(pg, 'lab-explorer-error'); pytest.fail(f"the notebook failed:\n{st['errors'][0][-2000:]}")
        if st['done']: return
        time.sleep(1)
    _shot(pg, 'lab-explorer-timeout')
    pytest.fail(f"the notebook did not finish in {timeout:.0f}s (screenshot lab-explorer-timeout.png)")

def test_explorer_threshold_moves_the_confusion_matrix(lab, page):
    "Open the explorer notebook, run it, drag the threshold slider: the live confusion matrix follows it."
    url, token, _ = lab
    page.goto(f'{url}/lab/tree/explorer.ipynb?token={token}')
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=60000)
    with contextlib.suppress(Exception):                  # a kernel picker when the notebook names no kernel
        page.wait_for_selector('.jp-Dialog .jp-mod-accept', timeout=5000)
        page.click('.jp-Dialog .jp-mod-accept')
    _run_all(page)
    _wait_for_run(page)
    matrix = page.locator('.dflab-confusion')
    matrix.wait_for(timeout=30000)
    matrix.scroll_into_view_if_needed()
    readout = page.locator('.dflab-threshold .widget-readout')
    before, thr0 = matrix.inner_text(), readout.inner_text()
    _shot(page, 'lab-explorer-before')

    handle = page.locator('.dflab-threshold .noUi-handle')
    box = handle.bounding_box()
    page.mouse.move(box['x'] + box['width'] / 2, box['y'] + box['height'] / 2)
    page.mouse.down()
    page.mouse.move(box['x'] + box['width'] / 2 + 90, box['y'] + box['height'] / 2, steps=8)
    page.mouse.up()
    thr1 = readout.inner_text()
    assert float(thr1) > float(thr0), (thr0, thr1)
    # the kernel recomputes the matrix for the slider's last value
    page.wait_for_function("""t => document.querySelector('.dflab-confusion').innerText.includes(t)""", arg=thr1,
                           timeout=30000)
    after = matrix.inner_text()
    assert after != before
    cells = lambda text: [int(x) for x in text.split('images')[0].split() if x.isdigit()]
    b, a = cells(before), cells(after)                     # [TN, FP, FN, TP]
    assert len(a) == 4 and sum(a) == sum(b) and a[1] <= b[1] and a[3] <= b[3] and a != b, (b, a)
    _shot(page, 'lab-explorer-after')

# ---------------------------------------------------------------- the docs site

def _docs_missing() -> str|None:
    for mod in ('mkdocs', 'material', 'nbconvert'):
        try: __import__(mod)
        except ImportError: return f"{mod} is not installed: pip install -e '.[docs]'"

@pytest.fixture(scope='module', autouse=True)
def docs_build():
    "`dflab docs build` of this checkout, started at once in the background: it builds while JupyterLab runs."
    if _docs_missing(): yield None; return
    out = Path(tempfile.mkdtemp(prefix='dflab-site-'))/'site'
    dflab = shutil.which('dflab', path=os.path.dirname(sys.executable)) or shutil.which('dflab')
    log = open(out.parent/'build.log', 'w+')
    proc = subprocess.Popen([dflab, 'docs', 'build', '--out', str(out)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield proc, out, log
    if proc.poll() is None: proc.kill()
    log.close()
    shutil.rmtree(out.parent, ignore_errors=True)

@pytest.fixture(scope='module')
def site(docs_build):
    "The built site, served on 127.0.0.1."
    if docs_build is None: _missing(_docs_missing())
    proc, out, log = docs_build
    rc = proc.wait(300)
    log.seek(0)
    assert rc == 0, f"dflab docs build failed:\n{log.read()[-3000:]}"
    from dflab.docs import serve_docs
    srv = serve_docs(out, port=0, block=False)
    yield srv.url, out
    srv.shutdown(); srv.server_close()

def _images_loaded(pg) -> tuple[int, list]:
    "(number of images on the page, the sources of those that did not load)."
    return pg.evaluate("""() => { const im = [...document.querySelectorAll('article img')];
        return [im.length, im.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))]; }""")

def test_docs_front_api_and_report_pages(site, page):
    "The front page has the README's quick start; an API page shows show_doc's signatures; the report shows its figures."
    url, _ = site
    page.goto(url + 'index.html')
    assert 'dflab run quickstart' in page.inner_text('article')
    assert page.locator('nav').get_by_text('API', exact=True).first.is_visible()
    _shot(page, 'docs-front')

    page.goto(url + 'train.html#trainer.fit')
    fit = page.locator('h3#trainer\\.fit')
    assert fit.is_visible() and 'Trainer.fit' in fit.inner_text()
    assert 'def fit(' in page.inner_text('article')
    _shot(page, 'docs-api-train')

    page.goto(url + 'reports/index.html')
    page.wait_for_load_state('load')
    n, broken = _images_loaded(page)
    assert n >= 3 and not broken, (n, broken)
    assert 'Detectors compared' in page.inner_text('article')
    _shot(page, 'docs-report-quickstart')
    assert not page.external, page.external                # the site needs no network

def test_docs_search_finds_a_symbol(site, page):
    "Full-text search, typed into the search box, returns the API section of a known symbol."
    url, _ = site
    page.goto(url + 'index.html')
    page.locator('label.md-search__icon, .md-search__input').first.click()
    page.locator('input.md-search__input').fill('load_run')
    hit = page.locator('.md-search-result__item a[href*="evaluate.html"][href$="#load_run"]').first
    hit.wait_for(timeout=20000)
    _shot(page, 'docs-search')
    hit.click()
    page.wait_for_url('**/evaluate.html*#load_run')
    assert page.locator('h3#load_run').is_visible()

def test_docs_widget_snapshot_shows_without_kernel(site, page):
    "The explorer tutorial's page shows the widgets' static snapshot: the confusion matrix and thumbnails."
    url, _ = site
    page.goto(url + 'tutorials/explorer.html')
    page.wait_for_load_state('load')
    snap = page.locator('.dflab-static').first
    assert 'truth \\ called' in snap.inner_text()
    n, broken = _images_loaded(page)
    assert n >= 6 and not broken, (n, broken)
    snap.scroll_into_view_if_needed()
    _shot(page, 'docs-explorer-snapshot')
