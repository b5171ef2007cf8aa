"""The parts of the docs builder `scripts/build_docs.py`, quick and without a browser (`test_docs.py` builds whole
sites and crawls them in headless Chromium): pages, nbdev processing, Markdown to HTML, the API reference, the sidebar,
the README, and a one-notebook site. Run from `nbs/`, as `nbdev-test` runs notebooks."""
import importlib, shutil
from pathlib import Path

import nbformat, pytest
from build_docs import (doc_pages, process_nb, heading_id, md2html, api_entries, readme_text, build_docs,
                        _imports_only, _is_public, _signature, _sidebar_sections, _nav_items, sidebar_yml)

NBS = Path(__file__).resolve().parents[1]/'nbs'

@pytest.fixture(autouse=True)
def in_nbs(monkeypatch): monkeypatch.chdir(NBS)

def test_doc_pages():
    pages = doc_pages()
    assert pages[0].nb.stem=='index' and pages[0].url=='index.html'
    data = next(p for p in pages if p.nb.name=='00_data.ipynb')
    assert (data.url, data.title, data.module) == ('data.html', 'Digits data and reference models', 'data')
    with pytest.raises(ValueError, match='`path`'): doc_pages('no/such/folder')

def test_process_nb():
    nb = process_nb('00_data.ipynb', execute=False)
    assert nb.cells[0].cell_type == 'raw'
    assert not any('#| hide' in c.source or '#| export' in c.source for c in nb.cells)
    assert not any('test_eq(' in c.source for c in nb.cells)  # hidden test cells are gone
    sd = next(c for c in nb.cells if 'show_doc(digits_dls)' in c.source)
    assert 'digits_dls' in sd.outputs[0].data['text/markdown']
    assert _imports_only("import os\nx = 1\nfrom math import pi") == "import os\nfrom math import pi"

def test_patched_method_shown_once(tmp_path):
    "nbdev's add_show_docs repeats a `@patch`ed method the notebook documents itself: shown once"
    src = '#| export\nfrom fastcore.basics import patch\nclass Box: pass\n@patch\ndef twice(self:Box, x:int): "Twice `x`"; return 2*x'
    cells = [nbformat.v4.new_markdown_cell('# T'), nbformat.v4.new_code_cell(src), nbformat.v4.new_code_cell('show_doc(Box.twice)')]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path/'t.ipynb')
    tnb = process_nb(tmp_path/'t.ipynb', execute=False)
    assert sum('### Box.twice' in o.get('data', {}).get('text/markdown', '') for c in tnb.cells for o in c.get('outputs', [])) == 1

def test_heading_id():
    assert heading_id('OptimView.hypers') == 'optimview.hypers'
    assert heading_id("The question's Adam case") == 'the-questions-adam-case'
    seen = set()
    assert [heading_id('Setup', seen), heading_id('Setup', seen)] == ['setup', 'setup-1']

def test_md2html():
    h = md2html("## Adam's `v_hat`\n\nwith $m_t$ and $v_t$, `$HOME`\n\n::: {.callout-note}\nA *note*\n:::\n\n### Update of $v_t$")
    assert '<h2 id="adams-v_hat">' in h, h
    assert '<msub><mi>m</mi><mi>t</mi></msub>' in h and '<em>note</em>' in h and '$HOME' in h, h # math is not emphasis
    assert '<div class="callout-note">' in h and '</div>' in h, h
    assert '<h3 id="update-of-v_t">' in h, h

def test_api_entries():
    api = api_entries()
    names = {(e.module, e.name) for e in api}
    for m in ('fastai_smith.data', 'fastai_smith.optim_view'):
        for n in importlib.import_module(m).__all__: assert (m, n) in names, n
    assert all(_is_public(n) for _,n in names)
    assert not any(m=='fastai_smith.docs' for m,_ in names) # the docs tooling is not part of the package
    e = next(e for e in api if e.name=='digits_dls')
    assert (e.kind, e.url) == ('function', 'data.html#digits_dls')
    assert e.signature == '(bs:int=64, valid_pct:float=0.2, seed:int=42, device=None)'
    assert e.doc.startswith("scikit-learn's digits")
    def _f(a, /, b:int=1, *, c:str='x')->str: ...
    assert _signature(_f, 'function') == "(a, /, b:int=1, *, c:str='x')->str"

def test_sidebar_sections():
    secs = _sidebar_sections('.')
    dev = {u for u, s in secs.items() if s=='Development'}
    assert {'all.html', 'main.html'} <= dev, dev
    items = _nav_items(doc_pages(), secs)
    assert list(dict.fromkeys(s for s, _, _ in items)) == ['', 'Guides', 'Modules', 'Reference', 'Development']  # book order
    assert {u for s, u, _ in items if s=='Development'} == dev
    assert {'data.html', 'cli.html'} <= {u for s, u, _ in items if s=='Modules'}
    assert {p.url for p in doc_pages()} | {'api.html'} == {u for _, u, _ in items}  # every page once
    assert _sidebar_sections('no/such/folder') == {}
    assert 'Development' not in [s for s, _, _ in _nav_items(doc_pages())]  # without sections: no Development section

def test_sidebar_is_generated():
    "nbs/sidebar.yml is what `python scripts/build_docs.py --sidebar` writes: every notebook once, in book order"
    assert (NBS/'sidebar.yml').read_text() == sidebar_yml(NBS), "run `python scripts/build_docs.py --sidebar`"
    secs = _sidebar_sections(NBS)
    assert secs['tutorial_adam.html'] == 'Guides' and secs['snapshots.html'] == 'Modules' and secs['all.html'] == 'Development'

def test_readme_text():
    txt = readme_text()
    assert txt.startswith('# fastai_smith') and 'bash scripts/test.sh' in txt and '```python' in txt

def test_one_notebook_site(tmp_path):
    nbdir = tmp_path/'nbs'; nbdir.mkdir()
    shutil.copy('00_data.ipynb', nbdir)
    site = build_docs(tmp_path/'site', path=nbdir, execute=False, progress=False)
    assert {'index.html', 'data.html', 'api.html', 'style.css'} <= {p.name for p in site.iterdir()}
    page = (site/'data.html').read_text()
    assert 'id="digits_dls"' in page and 'Digits data and reference models' in page
    assert 'href="api.html"' in page and 'href="index.html"' in page
    with pytest.raises(ValueError, match='`out`'): build_docs(Path('.'), execute=False) # a folder with other files
