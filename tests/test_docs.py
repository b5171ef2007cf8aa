"""The docs site built from the notebooks, checked in headless Chromium.

The documented command (`python scripts/build_docs.py`, which `scripts/docs.sh` runs) builds the project's notebooks (01_optim_view executed for real,
the others with their stored outputs) and a small notebook with a plot that has no stored outputs (so its figure can
only come from execution). The sites are
served on localhost and every page is opened in Debian's `chromium`, driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: no driver, no extra package): every page loads, every image shows, every link inside the
site reaches a page or file that exists and, with a `#fragment`, an element with that id, and every page can be
reached from the home page. Without chromium the test is skipped, except under `CI=true` where it fails.
"""
import fcntl, importlib, json, os, queue, re, shutil, subprocess, sys, threading, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import nbformat, pytest
from build_docs import doc_pages, heading_id # scripts/build_docs.py (tests/conftest.py puts scripts/ on the path)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
EXECUTED = '01_optim_view.ipynb' # the project notebook run for real here: quick (two optimizer steps) but real

def _chromium():
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe: return exe
    if os.environ.get('CI', '').lower() in ('true', '1'): pytest.fail("chromium is missing: CI must install it (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); under CI=true this test fails instead")

class Browser:
    "Headless Chromium driven over the DevTools protocol on a pipe: fd 3 takes commands, fd 4 gives replies and events"
    def __init__(self, exe, profile, log):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (cmd_r, res_w)] # out of the way of fds 3 and 4
        for fd in (cmd_r, res_w): os.close(fd)
        script = f'exec "$@" 3<&{hi[0]} 4>&{hi[1]} {hi[0]}<&- {hi[1]}>&-'
        args = [exe, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--remote-debugging-pipe', 'about:blank']
        self.proc = subprocess.Popen(['bash', '-c', script, 'chromium', *args], pass_fds=hi,
                                     stdout=subprocess.DEVNULL, stderr=log)
        for fd in hi: os.close(fd)
        self._q, self._id, self.events = queue.Queue(), 0, []
        threading.Thread(target=self._read, daemon=True).start()
        tid = self.send('Target.createTarget', url='about:blank')['targetId']
        self.session = self.send('Target.attachToTarget', targetId=tid, flatten=True)['sessionId']
        for dom in ('Page', 'Network', 'Runtime'): self.send(f'{dom}.enable', session=self.session)

    def _read(self):
        buf = b''
        while chunk := os.read(self._res_r, 1 << 16):
            buf += chunk
            *msgs, buf = buf.split(b'\0')
            for m in msgs: self._q.put(json.loads(m))
        self._q.put(None)

    def _next(self, deadline):
        m = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
        if m is None: raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
        return m

    def send(self, method, session=None, timeout=60, **params):
        self._id += 1
        msg = dict(id=self._id, method=method, params=params, **({'sessionId': session} if session else {}))
        os.write(self._cmd_w, json.dumps(msg).encode() + b'\0')
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline)
            if m.get('id')==self._id:
                if 'error' in m: raise RuntimeError(f"{method}: {m['error']}")
                return m['result']
            self.events.append(m)

    def wait_event(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        while not any(e.get('method')==method for e in self.events): self.events.append(self._next(deadline))

    def visit(self, url):
        "Open `url`; what the page shows and what the browser fetched for it"
        self.events = []
        nav = self.send('Page.navigate', session=self.session, url=url)
        assert 'errorText' not in nav, (url, nav)
        self.wait_event('Page.loadEventFired')
        js = """(() => ({
            title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
            text: document.body.innerText,
            images: [...document.images].map(i => ({src: i.currentSrc || i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
            links: [...document.querySelectorAll('a[href]')].map(a => a.href),
            ids: [...document.querySelectorAll('[id]')].map(e => e.id),
            sidebar: document.querySelectorAll('nav.sidebar a').length,
            css_rules: [...document.styleSheets].map(s => { try { return s.cssRules.length } catch (e) { return -1 } }),
            outputs: document.querySelectorAll('.cell-output').length,
            maths: document.querySelectorAll('math').length,
        }))()"""
        info = self.send('Runtime.evaluate', session=self.session, expression=js, returnByValue=True)['result']['value']
        reqs = {e['params']['requestId']: e['params']['request']['url'] for e in self.events if e.get('method')=='Network.requestWillBeSent'}
        info['responses'] = [(e['params']['response']['url'], e['params']['response']['status'])
                             for e in self.events if e.get('method')=='Network.responseReceived']
        info['failed'] = [(reqs.get(e['params']['requestId']), e['params']['errorText'])
                          for e in self.events if e.get('method')=='Network.loadingFailed']
        info['js_errors'] = [e['params'] for e in self.events if e.get('method')=='Runtime.exceptionThrown']
        return info

    def close(self):
        try: self.send('Browser.close', timeout=10)
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        os.close(self._cmd_w); os.close(self._res_r)

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def _fixture_nb(path):
    "A notebook without stored outputs: its figure, `show_doc` and hidden cell can only come out of running it"
    cells = [nbformat.v4.new_markdown_cell("# Plot check\n\n> A page whose figure exists only if the builder runs the notebook"),
             nbformat.v4.new_code_cell("#| hide\nHIDDEN_MARKER = 'this cell must not be shown'"),
             nbformat.v4.new_markdown_cell("## A plot\n\nThe squares, $v_t = x_t^2$; [back to the top](#a-plot)."),
             nbformat.v4.new_code_cell("import matplotlib.pyplot as plt"),
             nbformat.v4.new_code_cell("fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([x*x for x in range(10)], 'o-')\nax.set_title('squares');"),
             nbformat.v4.new_code_cell("def twice(x:int, # The number\n         )->int:\n    \"Twice `x`\"\n    return 2*x"),
             nbformat.v4.new_code_cell("from nbdev.showdoc import show_doc\nshow_doc(twice)")]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, path)

@pytest.fixture(scope='module')
def sites(tmp_path_factory):
    exe = _chromium()
    tmp = tmp_path_factory.mktemp('docs')
    nbs = tmp/'fixture_nbs'; nbs.mkdir()
    _fixture_nb(nbs/'plots.ipynb')
    project, fixture = tmp/'www'/'project', tmp/'www'/'fixture'
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT/'scripts'/'build_docs.py')]
    runs = [subprocess.Popen(cmd + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for args in (['--out', str(project), '--execute', EXECUTED], ['--out', str(fixture), '--path', str(nbs)])]
    for r in runs:
        out = r.communicate(timeout=600)[0]
        assert r.returncode==0, out
        assert out.strip().splitlines()[-1].startswith('Docs site: '), out
    build_s = time.perf_counter() - t0
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(_QuietHandler, directory=str(tmp/'www')))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{srv.server_address[1]}/'
    with open(tmp/'chromium.log', 'wb') as log:
        browser = Browser(exe, tmp/'profile', log)
        try: yield dict(project=project, fixture=fixture, base=base, browser=browser, build_s=build_s, tmp=tmp)
        finally:
            browser.close(); srv.shutdown(); srv.server_close()

def _crawl(browser, base, site, name):
    "Open every page reachable from the home page; check each loads, shows its images and has only working internal links"
    origin = urlsplit(base).netloc
    pages, links, todo = {}, [], ['index.html']
    while todo:
        page = todo.pop()
        if page in pages: continue
        info = pages[page] = browser.visit(f'{base}{name}/{page}')
        doc_status = dict(info['responses']).get(f'{base}{name}/{page}')
        assert doc_status==200, (page, doc_status)
        assert info['h1'].strip() and info['title'].strip() and info['sidebar'] >= 3, (page, info['h1'], info['sidebar'])
        assert info['css_rules'] and min(info['css_rules']) > 0, (page, 'stylesheet not loaded', info['css_rules'])
        assert not info['failed'], (page, info['failed'])
        assert not [r for r in info['responses'] if r[1] >= 400], (page, info['responses'])
        assert not info['js_errors'], (page, info['js_errors'])
        for img in info['images']: assert img['complete'] and img['w'] > 0 and img['h'] > 0, (page, img)
        for href in info['links']:
            u = urlsplit(href)
            if u.scheme not in ('http', 'https') or u.netloc!=origin: continue
            assert u.path.startswith(f'/{name}/'), (page, href, 'leaves the site')
            target = u.path[len(name)+2:] or 'index.html'
            links.append((page, target, u.fragment))
            if target.endswith('.html'): todo.append(target)
    for page, target, frag in links:
        if target.endswith('.html'):
            assert target in pages, (page, target)
            assert not frag or frag in pages[target]['ids'], (page, f'{target}#{frag}', 'no element with this id')
        else:
            with urlopen(f'{base}{name}/{target}') as r: assert r.status==200, (page, target)
    on_disk = {p.relative_to(site).as_posix() for p in site.rglob('*.html')}
    assert set(pages)==on_disk, ('pages not reachable from the home page', on_disk - set(pages))
    return pages

def test_project_site(sites):
    site = sites['project']
    pages = _crawl(sites['browser'], sites['base'], site, 'project')
    nb_pages = doc_pages(ROOT/'nbs')
    assert set(pages)=={p.url for p in nb_pages} | {'index.html', 'api.html'}
    manifest = json.loads((site/'.fastai_smith_docs').read_text())
    for p in nb_pages:
        info = pages[p.url]
        assert info['h1'].strip()==p.title.replace('`', ''), (p.url, info['h1'])
        assert not re.search(r'(?m)^\s*#\|', info['text']), (p.url, 'a directive is shown')
        assert len(info['images']) >= manifest[p.url]['images'], p.url # every figure of the notebook is on the page
        assert manifest[p.url]['executed']==(p.nb.name==EXECUTED), p.url
    executed = next(p for p in nb_pages if p.nb.name==EXECUTED)
    assert pages[executed.url]['outputs'] > 0, 'the executed notebook shows no output'
    # show_doc rendered: each function and class nbdev indexes has its anchor on its page (links to methods and
    # @patch'ed methods are checked by the crawl, which follows the API reference's links to their anchors);
    # the API reference lists every name of every module's __all__, linked to its page
    lib = importlib.import_module('fastai_smith._modidx').d['syms']
    api = pages['api.html']
    api_links = set(api['links'])
    for mod, syms in lib.items():
        for k, (url, _) in syms.items():
            name = k[len(mod)+1:]
            if '.' in name or name.startswith('_'): continue
            page, anchor = url.split('#')
            assert anchor in pages[page]['ids'], (mod, name, f'{page}#{anchor}')
            assert any(l.endswith(f'/{url}') for l in api_links), (mod, name, 'no link from the API reference')
        for name in importlib.import_module(mod).__all__:
            assert heading_id(f'{mod}.{name}') in api['ids'], (mod, name, 'missing from the API reference')
    print(f"built both sites in {sites['build_s']:.0f}s; {len(pages)} pages")

def test_executed_plot(sites):
    pages = _crawl(sites['browser'], sites['base'], sites['fixture'], 'fixture')
    page = pages['plots.html']
    assert len(page['images'])==1, page['images'] # the plot, which the notebook never stored
    img = page['images'][0]
    assert img['w'] >= 200 and img['h'] >= 150 and img['src'].endswith('.png'), img
    assert 'HIDDEN_MARKER' not in page['text'] and '#|' not in page['text'], page['text']
    assert 'twice' in page['ids'] and 'Twice x' in page['text'] # show_doc output, rendered as markdown
    assert page['maths']==1 and '$' not in page['text'] # the TeX became MathML, not emphasis
    assert 'a-plot' in page['ids']

def test_quarto_config(tmp_path):
    "The Quarto configuration `nbdev-docs` uses stays valid: the files it names exist, and nbdev.yml is what nbdev generates from pyproject.toml"
    import yaml
    from fastcore.xtras import working_directory
    from nbdev.quarto import refresh_quarto_yml
    q = yaml.safe_load((ROOT/'nbs'/'_quarto.yml').read_text())
    assert q['project']['type']=='website'
    assert (ROOT/'nbs'/q['format']['html']['css']).exists()
    for f in q['metadata-files']: assert f=='sidebar.yml' or (ROOT/'nbs'/f).exists(), f # nbdev-docs writes sidebar.yml
    shutil.copy(ROOT/'pyproject.toml', tmp_path); (tmp_path/'nbs').mkdir()
    with working_directory(tmp_path): refresh_quarto_yml()
    assert (tmp_path/'nbs'/'nbdev.yml').read_text()==(ROOT/'nbs'/'nbdev.yml').read_text(), "run nbdev's refresh_quarto_yml (nbdev-prepare)"
    nb = yaml.safe_load((ROOT/'nbs'/'nbdev.yml').read_text())
    assert nb['project']['output-dir']=='_docs' and nb['website']['title']=='fastai_smith'
