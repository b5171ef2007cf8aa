"""Build the documentation website from the notebooks, processed the nbdev way and executed, as static HTML with
navigation and an API reference; and write README.md from nbs/index.ipynb. Developer tooling: not part of the package.

    python scripts/build_docs.py                         # runs every notebook, writes _docs/ (nbdev's doc_path)
    python scripts/build_docs.py --no-execute --out _site  # stored outputs: about a second per notebook
    python scripts/build_docs.py --readme                # only README.md from nbs/index.ipynb
    bash scripts/docs.sh [options]                       # the same, in the project's .venv (scripts/setup_env.sh)

Run it from a clone with the `dev` extra installed (nbdev, nbclient, latex2mathml), after `nbdev-export` so the API
reference matches the notebooks. `nbdev-docs` hands the notebooks to Quarto, a separate binary that cannot always be
installed; this script keeps nbdev's half of that pipeline and replaces Quarto's half:

1. nbdev's `add_show_docs` adds a `show_doc` cell after every exported function and class, as `nbdev-docs` does;
2. the notebook runs in a Jupyter kernel (`nbclient`), so its outputs and plots are the ones a reader gets in Jupyter.
   Cells flagged with `tst_flags` (`#| slow`, `#| notest`) keep their stored outputs, exactly the cells `nbdev-test`
   skips. Without execution only the cells `show_doc` needs run (exports, imports, `show_doc`), in this process with
   execnb's `CaptureShell` as `nbdev-docs` does, and every other cell shows its stored outputs;
3. nbdev's own doc processors (`FilterDefaults`) hide `#| hide` cells, strip directives, take the title and description
   from the `# Title` and `> description` cell, and link names written in backticks;
4. the result is rendered to HTML with markdown-it-py and Pygments: `$...$` math becomes MathML (latex2mathml, no
   script needed), Quarto's `::: {.callout-note}` blocks become `<div>`s, plots become PNG files next to the page,
   headings get pandoc's ids (so the anchors nbdev writes into `_modidx.py`, like `optimview.hypers`, work), and every
   page gets the sidebar, previous/next links and a link to the API reference (every name of each module's `__all__`
   and the methods `_modidx.py` indexes, with signature and docstring).

The sidebar lists the home page, the modules (notebooks with a `default_exp`), the guides and tutorials, the API
reference, and last the notebooks `nbs/sidebar.yml` lists under **Development**. The site is written to a temporary
folder first and then moved in place. Those who have Quarto can use `nbdev-docs` with `nbs/_quarto.yml` instead.
`README.md` is the home page's notebook as Markdown: its markdown cells, its code cells fenced, no hidden cells and no
outputs (`nbdev-readme` needs Quarto too); `tests/test_package.py` checks the two agree.
Tests: `tests/test_build_docs.py` (the parts) and `tests/test_docs.py` (both sites built and crawled in headless Chromium).
"""


from __future__ import annotations
import ast, base64, configparser, fnmatch, functools, html, importlib, inspect, json, os, posixpath, re, shutil, threading, time
import yaml
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters.html import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.python import PythonLexer
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from fastcore.nbio import read_nb, nb_frontmatter, fm_default_eval, does_cell_eval
from fastcore.script import call_parse, CliError
from fastcore.xtras import dict2obj, working_directory
from fastprogress.fastprogress import progress_bar
from nbdev.config import get_config, nbpath2html
from nbdev.doclinks import nbglob
from nbdev.process import NBProcessor
from nbdev.processors import FilterDefaults, add_show_docs, exec_show_docs, populate_language

@dataclass
class DocPage:
    "A notebook and the page of the site it becomes"
    nb: Path # The notebook
    url: str # Path of the page inside the site, e.g. `data.html`
    title: str # From the notebook's `# Title`
    description: str = '' # From the notebook's `> description`
    module: str|None = None # The module the notebook exports to (`#| default_exp`)

_re_default_exp = re.compile(r'^\s*#\|\s*default_exp\s+(\S+)', re.MULTILINE)

def _default_exp(nb):
    return next((m.group(1) for c in nb.cells if c.cell_type=='code' for m in [_re_default_exp.search(c.source)] if m), None)

def doc_pages(
    path:str|Path|None=None, # Folder of the notebooks (default: nbdev's `nbs_path`)
)->list[DocPage]:
    "The pages of the site, `index.ipynb` first, then in the order of the notebooks' file names"
    path = Path(path or get_config().nbs_path).absolute()
    if not path.is_dir(): raise ValueError(f"`path` must be a folder of notebooks, got {str(path)!r}")
    nbs = sorted((Path(p) for p in nbglob(path, as_path=True)),
                 key=lambda p: (p.relative_to(path).parent.parts, p.stem!='index', p.name))
    res = []
    for p in nbs:
        nb = read_nb(p)
        fm = nb_frontmatter(nb)
        rel = p.relative_to(path)
        res.append(DocPage(p, nbpath2html(rel).as_posix(), str(fm.get('title') or p.stem), str(fm.get('description') or ''),
                           _default_exp(nb)))
    return res

_doc_dirs = {'export', 'exports', 'exporti', 'exec_doc'}

def _imports_only(src):
    "The import statements of a cell that mixes imports and other code"
    tree = ast.parse(src)
    return '\n'.join(ast.get_source_segment(src, o) for o in tree.body if isinstance(o, (ast.Import, ast.ImportFrom)))

def _is_show_doc(node):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and getattr(node.value.func, 'id', None)=='show_doc'

def _doc_source(cell):
    "What `show_doc` needs to run from `cell`: all of it, its imports only, or nothing (`None`)"
    if cell.cell_type!='code' or not cell.source.strip() or not does_cell_eval(cell, True): return None
    if cell.directives_.keys() & _doc_dirs: return cell.source
    try: tree = ast.parse(cell.source)
    except SyntaxError: return None # IPython magics: not needed by `show_doc`
    imps = [isinstance(o, (ast.Import, ast.ImportFrom)) for o in tree.body]
    if any(_is_show_doc(o) for o in tree.body) or (imps and all(imps)): return cell.source
    return _imports_only(cell.source) if any(imps) else None

def _run_source(nb, full, skip_flags):
    "For each cell of `nb`: (source to run, keep its outputs?) or `None` to keep the stored outputs"
    dflt = fm_default_eval(nb_frontmatter(nb))
    res = []
    for c in nb.cells:
        if full:
            run = c.cell_type=='code' and does_cell_eval(c, dflt) and not (set(skip_flags) & c.directives_.keys())
            res.append((c.source, True) if run else None)
        else:
            src = _doc_source(c)
            res.append(None if src is None else (src, src==c.source))
    return res

def _as_outputs(outs):
    "Outputs as fastcore's `read_nb` gives them: attribute access, multi-line texts joined"
    res = []
    for o in json.loads(json.dumps(outs)):
        if isinstance(o.get('text'), list): o['text'] = ''.join(o['text'])
        for k,v in o.get('data', {}).items():
            if isinstance(v, list) and all(isinstance(x, str) for x in v) and not k.endswith('json'): o['data'][k] = ''.join(v)
        res.append(dict2obj(o))
    return res

def _execute(nb, nb_path, todo, timeout=None):
    "Run the sources in `todo` in a fresh Jupyter kernel started in the notebook's folder; store outputs back in `nb`"
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    idx = [i for i,t in enumerate(todo) if t is not None]
    if not idx: return
    enb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    enb.cells = [nbformat.v4.new_code_cell('from nbdev.showdoc import show_doc')] + [nbformat.v4.new_code_cell(todo[i][0]) for i in idx]
    client = NotebookClient(enb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(Path(nb_path).parent)}},
                            extra_arguments=['--IPKernelApp.log_level=ERROR']) # no warning about TCP per notebook
    try: client.execute()
    except CellExecutionError as e: raise RuntimeError(f"{nb_path} failed while building the docs:\n{e}") from None
    for i,ec in zip(idx, enb.cells[1:]):
        if not todo[i][1]: continue
        nb.cells[i].outputs = _as_outputs(ec.outputs)
        nb.cells[i].execution_count = ec.execution_count

def _run_here(nb, nb_path, todo, profile=True):
    "Run the sources in `todo` in this process, in execnb's `CaptureShell` as nbdev's `exec_show_docs` does"
    from execnb.shell import CaptureShell
    from IPython.core.interactiveshell import InteractiveShell
    prev = InteractiveShell._instance # a `CaptureShell` makes itself the current IPython: give it back afterwards
    k = CaptureShell(profile=profile, mpl_format=None)
    try:
        with working_directory(Path(nb_path).parent):
            k.run('from nbdev.showdoc import show_doc')
            for c,t in zip(nb.cells, todo):
                if t is None: continue
                outs = k.run(t[0])
                if k.exc: raise RuntimeError(f"{nb_path} failed while building the docs, in\n{t[0]}\n{type(k.exc).__name__}: {k.exc}")
                if t[1]: c.outputs = _as_outputs(outs)
    finally:
        k.close()
        InteractiveShell._instance = prev

_proc_lock = threading.RLock() # `ast.parse` in several threads at once fails on CPython 3.11.7 ("AST constructor recursion depth mismatch")

class _DocProcs(FilterDefaults):
    "nbdev's doc processors, less those that add and run `show_doc` cells and set the cells' language: done before execution here"
    def base_procs(self): return [p for p in super().base_procs() if p not in (populate_language, add_show_docs, exec_show_docs)]

def _drop_repeated_show_docs(nb):
    "Drop the `show_doc` cells `add_show_docs` added for names the notebook documents itself (it repeats `@patch`ed methods)"
    mine = {c.source.strip() for c in nb.cells if not c.get('has_sd') and _is_show_doc_src(c)}
    nb.cells = [c for c in nb.cells if not (c.get('has_sd') and c.source.strip() in mine)]

def process_nb(
    nb_path:str|Path, # The notebook
    execute:bool=True, # Run all the cells `nbdev-test` runs (`True`), or only those `show_doc` needs (`False`)
    skip_flags:list|None=None, # Flags of cells to leave unexecuted (default: nbdev's `tst_flags`)
    timeout:int|None=None, # Seconds a cell may run (default: nbdev's `cell_timeout`)
):
    "The notebook at `nb_path` processed like `nbdev-docs` does before Quarto, with fresh outputs"
    cfg = get_config()
    if skip_flags is None: skip_flags = str(cfg.get('tst_flags', '')).split()
    with _proc_lock:
        nb = read_nb(nb_path)
        NBProcessor(nb=nb, procs=[populate_language, add_show_docs], rm_directives=False, process=True)
        _drop_repeated_show_docs(nb)
        todo = _run_source(nb, execute, skip_flags)
        has_docs = any(c.get('has_sd') or _is_show_doc_src(c) for c in nb.cells)
    if execute: _execute(nb, nb_path, todo, timeout or cfg.get('cell_timeout'))
    with _proc_lock:
        if not execute and has_docs: _run_here(nb, nb_path, todo, bool(cfg.get('exec_profile', True)))
        _DocProcs()(nb)
    return nb

def _is_show_doc_src(c):
    return c.cell_type=='code' and bool(re.search(r'^show_doc\(', c.source, re.MULTILINE))

def heading_id(
    text:str, # The heading's text, without markdown
    seen:set|None=None, # Ids already used on the page; updated
)->str:
    "The id pandoc (and so Quarto) gives a heading: `OptimView.hypers` -> `optimview.hypers`"
    s = re.sub(r'[^\w\s.-]', '', text.lower(), flags=re.UNICODE)
    s = re.sub(r'^[^a-z]+', '', re.sub(r'\s+', '-', s.strip())) or 'section'
    if seen is None: return s
    res, n = s, 0
    while res in seen: n += 1; res = f'{s}-{n}'
    seen.add(res)
    return res

_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')
_re_math = re.compile(r'(```.*?```|`[^`\n]*`)|\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)
_re_div_open = re.compile(r'^:::+\s*\{([^}]*)\}\s*$|^:::+\s*([\w-]+)\s*$', re.M)
_re_div_close = re.compile(r'^:::+\s*$', re.M)
_re_link_attrs = re.compile(r'\[([^\]\n]*)\]\(([^)\s]*)\)\{([^}\n]*)\}')
_re_html_attrs = re.compile(r'^(\s*[\w-]+="[^"]*")+\s*$')

def _link_attrs(m):
    "Quarto's `[text](url){target=\"_blank\"}` as an HTML link; attributes in other forms are dropped"
    txt, url, attrs = m.groups()
    return f'<a href="{html.escape(url)}" {attrs.strip()}>{txt}</a>' if _re_html_attrs.match(attrs) else f'[{txt}]({url})'

def _math_html(tex, display=False):
    "TeX as MathML, which browsers render without scripts; as TeX text if latex2mathml is missing or fails"
    cls, src = f'math {"display" if display else "inline"}', ('$$%s$$' if display else '$%s$') % tex
    try:
        from latex2mathml.converter import convert
        return f'<span class="{cls}" title="{html.escape(src)}">{convert(tex, display="block" if display else "inline")}</span>'
    except Exception: return f'<span class="{cls}">{html.escape(src)}</span>'

@functools.lru_cache(None)
def _md_parser():
    fence = lambda code, lang, attrs: _highlight(code, lang) if lang else ''
    return MarkdownIt('commonmark', {'html': True, 'highlight': fence}).enable(['table', 'strikethrough'])

def _plain(tok):
    "Text of an inline token without its markup"
    return ''.join(c.content for c in (tok.children or []) if c.type in ('text', 'code_inline'))

def _div_open(m):
    attrs = m.group(1) if m.group(1) is not None else '.' + m.group(2)
    cls = ' '.join(a[1:] for a in attrs.split() if a.startswith('.'))
    return f'\n<div class="{html.escape(cls)}">\n'

def md2html(
    text:str, # Markdown, as in a notebook's markdown cell
    seen:set|None=None, # Heading ids already used on the page; updated
    toc:list|None=None, # Appended with `(level, id, text)` for each heading
)->str:
    "HTML for notebook markdown: tables, math kept as TeX, Quarto divs, pandoc heading ids"
    maths, texs = [], []
    def _keep(m):
        if m.group(1): return m.group(1)
        disp = m.group(2) is not None
        tex = m.group(2) if disp else m.group(3)
        maths.append(_math_html(tex, disp))
        texs.append(tex)
        return f'MATHXX{len(maths)-1}XX'
    text = _re_math.sub(_keep, text)
    text = _re_div_close.sub('\n</div>\n', _re_div_open.sub(_div_open, text))
    text = _re_link_attrs.sub(_link_attrs, text)
    md = _md_parser()
    toks = md.parse(text)
    seen = set() if seen is None else seen
    for i,t in enumerate(toks):
        if t.type=='heading_open':
            title = re.sub(r'MATHXX(\d+)XX', lambda m: texs[int(m.group(1))], _plain(toks[i+1]))
            hid = heading_id(title, seen)
            t.attrSet('id', hid)
            if toc is not None: toc.append((int(t.tag[1]), hid, title))
    res = md.renderer.render(toks, md.options, {})
    return re.sub(r'MATHXX(\d+)XX', lambda m: maths[int(m.group(1))], res)

def _esc(s): return html.escape(_re_ansi.sub('', s if isinstance(s, str) else ''.join(s)))

def _cell_opts(src):
    "Quarto's `#| key: value` options at the top of a processed code cell, and the code after them"
    lines, opts = src.splitlines(), {}
    while lines and re.match(r'\s*#\|', lines[0]):
        m = re.match(r'\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$', lines.pop(0))
        if m: opts[m.group(1)] = m.group(2).strip('"\'')
    return opts, '\n'.join(lines).strip('\n')

_pyg_lock = threading.Lock() # Pygments loads lexers lazily, which is not thread-safe

def _highlight(src, lang='python'):
    "`src` as HTML highlighted by Pygments, in `<pre class=\"highlight\">`"
    with _pyg_lock:
        try: lexer = get_lexer_by_name(lang)
        except Exception: lexer = PythonLexer()
        return f'<pre class="highlight"><code>{highlight(src, lexer, HtmlFormatter(nowrap=True))}</code></pre>'


@dataclass
class _PageCtx:
    "What rendering a page needs and collects: where to write images, heading ids, table of contents"
    out: Path
    url: str
    n_img: int = 0
    seen: set = field(default_factory=set)
    toc: list = field(default_factory=list)

    def save_image(self, data, ext):
        self.n_img += 1
        rel = posixpath.join(posixpath.splitext(posixpath.basename(self.url))[0] + '_files', f'figure-{self.n_img}.{ext}')
        dest = self.out/posixpath.dirname(self.url)/rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data.encode() if ext=='svg' else base64.b64decode(data))
        return rel

_mimes = ('text/html', 'text/markdown', 'image/svg+xml', 'image/png', 'image/jpeg', 'image/gif', 'text/latex', 'text/plain')

def _render_output(o, ctx, asis=False):
    t = o.get('output_type')
    if t=='stream': return f'<pre class="output stream {o.get("name", "")}">{_esc(o.get("text", ""))}</pre>'
    if t=='error': return f'<pre class="output error">{_esc(chr(10).join(o.get("traceback", [])))}</pre>'
    data, meta = o.get('data', {}), o.get('metadata', {})
    get = lambda k: data[k] if isinstance(data[k], str) else ''.join(data[k])
    if asis and 'text/markdown' in data: return md2html(get('text/markdown'), ctx.seen, ctx.toc)
    mime = next((m for m in _mimes if m in data), None)
    if mime is None: return ''
    if mime=='text/html': return f'<div class="output html">{get(mime)}</div>'
    if mime=='text/markdown': return f'<div class="output markdown">{md2html(get(mime), ctx.seen)}</div>'
    if mime.startswith('image/'):
        ext = {'image/svg+xml': 'svg', 'image/jpeg': 'jpg'}.get(mime, mime[6:])
        src = ctx.save_image(get(mime), ext)
        w = (meta.get(mime) or {}).get('width')
        alt = html.escape(''.join(data.get('text/plain', 'figure')))
        return f'<div class="output figure"><img src="{src}" alt="{alt}"{f" width={int(w)}" if w else ""}></div>'
    return f'<pre class="output text">{_esc(get(mime))}</pre>'

def _render_cell(cell, ctx):
    if cell.cell_type=='markdown': return md2html(cell.source, ctx.seen, ctx.toc)
    if cell.cell_type!='code': return ''
    opts, src = _cell_opts(cell.source)
    if opts.get('include')=='false': return ''
    asis = opts.get('output')=='asis'
    res = ''
    if src.strip() and opts.get('echo')!='false':
        code = _highlight(src, cell.get('metadata', {}).get('language', 'python'))
        fold = opts.get('code-fold')
        if fold in ('true', 'show'):
            code = f'<details{" open" if fold=="show" else ""}><summary>{html.escape(opts.get("code-summary", "Code"))}</summary>{code}</details>'
        res += f'<div class="cell-code">{code}</div>'
    if opts.get('output')!='false':
        outs = ''.join(_render_output(o, ctx, asis) for o in cell.get('outputs', []))
        if outs: res += outs if asis else f'<div class="cell-output">{outs}</div>'
    return f'<div class="cell">{res}</div>' if res and not asis else res

def render_nb(
    nb, # A notebook from `process_nb`
    out:str|Path, # Folder of the site: images are written under it
    url:str, # Path of the page in the site, e.g. `data.html`
)->dict:
    "The body of the page for processed notebook `nb` as HTML, with its title, description, heading ids and table of contents"
    ctx = _PageCtx(Path(out), url)
    fm = {}
    if nb.cells and nb.cells[0].cell_type=='raw' and nb.cells[0].source.startswith('---'):
        fm = yaml.safe_load(nb.cells[0].source.strip().strip('-')) or {}
    body = '\n'.join(_render_cell(c, ctx) for c in nb.cells if c.cell_type!='raw')
    return dict(title=str(fm.get('title', '')), description=str(fm.get('description', '')), body=body,
                ids=ctx.seen, toc=ctx.toc, n_images=ctx.n_img)

@dataclass
class ApiEntry:
    "A public name of the package, for the API reference"
    module: str # e.g. `fastai_smith.data`
    name: str # Name inside the module, e.g. `digits_dls` or `OptimView.hypers`
    kind: str # 'function', 'class', 'method', 'property' or 'object'
    signature: str # e.g. `(bs:int=64, ...)`, '' when there is none
    doc: str # The docstring
    url: str|None # Page and anchor from `_modidx.py`, e.g. `data.html#digits_dls`

def _kind(o, owner):
    if isinstance(o, type): return 'class'
    if isinstance(o, property): return 'property'
    if callable(o): return 'method' if owner is not None else 'function'
    return 'object'

def _fmt_ann(a): return a if isinstance(a, str) else inspect.formatannotation(a)

def _fmt_param(p):
    s = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
    if p.annotation is not p.empty: s += ':' + _fmt_ann(p.annotation)
    if p.default is not p.empty: s += '=' + repr(p.default)
    return s

def _signature(o, kind):
    "`(a:int=1, *, b=2)->str`: annotations as written, also under `from __future__ import annotations`"
    if kind in ('property', 'object'): return ''
    try: sig = inspect.signature(o)
    except (TypeError, ValueError): return ''
    ps = list(sig.parameters.values())
    if kind=='method' and ps and ps[0].name=='self': ps = ps[1:]
    res = []
    for i,p in enumerate(ps):
        if p.kind==p.KEYWORD_ONLY and not any(q.kind in (q.KEYWORD_ONLY, q.VAR_POSITIONAL) for q in ps[:i]): res.append('*')
        res.append(_fmt_param(p))
        if p.kind==p.POSITIONAL_ONLY and (i+1==len(ps) or ps[i+1].kind!=p.POSITIONAL_ONLY): res.append('/')
    ret = '' if sig.return_annotation is sig.empty else '->' + _fmt_ann(sig.return_annotation)
    return f"({', '.join(res)}){ret}"

def _lookup(mod, name):
    owner, o = None, mod
    for part in name.split('.'):
        owner, o = o, inspect.getattr_static(o, part) if isinstance(o, type) else getattr(o, part)
    if isinstance(o, (staticmethod, classmethod)): o = o.__func__
    return o, (owner if owner is not mod else None)

def _is_public(name): return not any(p.startswith('_') for p in name.split('.'))

def api_entries(
    lib:str|None=None, # The package (default: nbdev's `lib_path`)
)->list[ApiEntry]:
    "The public names of `lib`: `__all__` of its modules and the public symbols of its `_modidx.py`"
    lib = lib or get_config().lib_path.name
    syms = importlib.import_module(f'{lib}._modidx').d['syms']
    res = []
    for modname, d in syms.items():
        mod = importlib.import_module(modname)
        urls = {k[len(modname)+1:]: v[0] for k,v in d.items()}
        names = list(getattr(mod, '__all__', [])) + [n for n in urls if n not in getattr(mod, '__all__', [])]
        for n in names:
            if not _is_public(n): continue
            try: o, owner = _lookup(mod, n)
            except AttributeError: continue
            kind = _kind(o, owner)
            doc = inspect.cleandoc(getattr(o, '__doc__', None) or '') if kind!='object' else ''
            res.append(ApiEntry(modname, n, kind, _signature(o, kind), doc, urls.get(n)))
    return res

_css = """
body{margin:0;font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212529;display:flex;min-height:100vh}
nav.sidebar{width:250px;flex:none;background:#f7f7f9;border-right:1px solid #e3e3e3;padding:1.2rem 1rem;box-sizing:border-box}
nav.sidebar .brand{font-weight:700;font-size:1.15rem;color:#212529;text-decoration:none;display:block;margin-bottom:1rem}
nav.sidebar h4{margin:1rem 0 .3rem;font-size:.8rem;text-transform:uppercase;color:#6c757d}
nav.sidebar ul{list-style:none;margin:0;padding:0}
nav.sidebar li a{display:block;padding:.2rem .4rem;border-radius:4px;color:#2c3e50;text-decoration:none;font-size:.93rem}
nav.sidebar li a:hover{background:#e9ecef}
nav.sidebar li a.active{background:#2780e3;color:#fff}
main{flex:1;min-width:0;max-width:960px;padding:1.5rem 2.5rem 4rem}
header h1{margin-bottom:.2rem} header .description{color:#555;font-size:1.1rem;margin-top:.2rem}
nav.toc{font-size:.88rem;border-left:3px solid #e3e3e3;padding-left:.8rem;margin:1rem 0 2rem}
nav.toc a{color:#2c3e50;text-decoration:none} nav.toc ul{list-style:none;padding-left:.8rem;margin:0}
a{color:#2780e3} h2 a{text-decoration:none}
.output.markdown pre,main>pre{background:#f8f9fa;padding:.4rem .8rem;overflow-x:auto}
pre,code{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
.cell{margin:1rem 0}
pre.highlight{background:#f8f9fa;padding:.5rem .8rem;overflow-x:auto}
.cell-code pre.highlight{border-left:3px solid #2780e3}
.cell-output{padding-left:.8rem;overflow-x:auto}
pre.output{white-space:pre-wrap;margin:.4rem 0}
pre.output.error,pre.output.stderr{color:#a94442}
.output.figure img{max-width:100%;height:auto}
table{border-collapse:collapse;margin:.6rem 0} th,td{border:1px solid #dee2e6;padding:.25rem .6rem;text-align:left}
.math{white-space:nowrap} math{font-size:1.1em}
.math.display{display:block;text-align:center;margin:.6rem 0}
.api-entry{margin:1.2rem 0 1.6rem} .api-entry code.sig{display:block;white-space:pre-wrap;background:#f8f9fa;padding:.4rem .6rem}
.api-entry .kind{color:#6c757d;font-size:.85rem;margin-left:.4rem}
div[class^="callout"]{border-left:4px solid #2780e3;background:#f3f8fd;padding:.2rem 1rem;margin:1rem 0}
footer.pager{display:flex;justify-content:space-between;margin-top:3rem;border-top:1px solid #e3e3e3;padding-top:1rem}
"""

def _project_meta(cfg):
    "Site title, description and repository from nbdev's config, `setup.cfg` filling what a missing `[project]` table leaves empty"
    meta = dict(title=cfg.get('title') or cfg.lib_name or cfg.lib_path.name, description=cfg.get('description', ''),
                git_url=cfg.get('git_url', ''), doc_url=cfg.get('doc_url', ''), branch=cfg.get('branch', 'main'))
    setup = cfg.config_path/'setup.cfg'
    if setup.exists():
        sc = configparser.ConfigParser(); sc.read(setup)
        md = sc['metadata'] if sc.has_section('metadata') else {}
        urls = dict(l.split('=', 1) for l in md.get('project_urls', '').strip().splitlines() if '=' in l)
        urls = {k.strip(): v.strip() for k,v in urls.items()}
        meta['description'] = meta['description'] or md.get('description', '')
        meta['git_url'] = meta['git_url'] or urls.get('Repository', md.get('url', ''))
        meta['doc_url'] = meta['doc_url'] or urls.get('Documentation', '')
    return meta

def _rel(target, page_url):
    "Link from the page at `page_url` to `target`, both paths inside the site"
    return posixpath.relpath(target, posixpath.dirname(page_url) or '.')

def _anchor(frag, ids):
    "The id that `frag` should link to: itself, else its last part (`show_doc` may name a patched method without its class), else its class"
    if not frag or frag in ids: return frag
    if (last := frag.rpartition('.')[2]) in ids: return last
    while frag and frag not in ids: frag = frag.rpartition('.')[0]
    return frag

def _fix_href(href, page_url, site, meta):
    "Relative links to this site's own pages (falling back to the class when a method has no anchor), repository links for nbdev's source links"
    u = urlsplit(html.unescape(href))
    path, frag = u.path, u.fragment
    doc_url = meta['doc_url'].rstrip('/')
    if doc_url and href.startswith(doc_url + '/'): path = '/' + href[len(doc_url):].split('#')[0].lstrip('/')
    elif u.scheme or (u.netloc and u.netloc not in site['urls']): return href
    elif u.netloc: path = '/' + u.netloc + path # nbdev's `//data.html` when `doc_host` is empty
    if path.startswith('/blob/') and meta['git_url']:
        return html.escape(meta['git_url'].rstrip('/') + path + (f'#{frag}' if frag and frag!='LNone' else ''))
    if not path: return href # a link inside the page
    if path.startswith('/'): target = path.lstrip('/') or 'index.html'
    else: target = posixpath.normpath(posixpath.join(posixpath.dirname(page_url), path))
    if target not in site['urls']: return href
    frag = _anchor(frag, site['ids'].get(target, set()))
    return html.escape(_rel(target, page_url) + (f'#{frag}' if frag else ''))

_re_res = re.compile(r'(?:src|href)="([^"#?]+)[^"]*"')

def _copy_resources(body, page, dest):
    "Copy the files next to the notebooks that a page links to or shows (`![](images/x.png)`) into the site"
    for m in _re_res.finditer(body):
        u = html.unescape(m.group(1))
        if urlsplit(u).scheme or u.startswith('/') or '..' in u.split('/'): continue
        src = page.nb.parent/u
        rel = posixpath.normpath(posixpath.join(posixpath.dirname(page.url), u))
        if src.is_file() and src.suffix!='.ipynb' and not (dest/rel).exists():
            (dest/rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest/rel)

def _fix_links(body, page_url, site, meta):
    return re.sub(r'href="([^"]*)"', lambda m: f'href="{_fix_href(m.group(1), page_url, site, meta)}"', body)

def _inline(text):
    "A title or description as inline HTML: `code` spans and *emphasis* rendered, any HTML in it escaped"
    return _md_parser().renderInline(html.escape(text, quote=False))

def _sidebar(items, current):
    "`items`: (section, url, title); sections in order of first appearance"
    res, sec = [], None
    for s,url,title in items:
        if s!=sec:
            if sec is not None: res.append('</ul>')
            if s: res.append(f'<h4>{html.escape(s)}</h4>')
            res.append('<ul>'); sec = s
        act = ' class="active"' if url==current else ''
        res.append(f'<li><a href="{_rel(url, current)}"{act}>{_inline(title)}</a></li>')
    return '\n'.join(res + ['</ul>'])

def _toc(toc, current):
    items = [(l, i, t) for l,i,t in toc if l in (2, 3)]
    if len(items) < 2: return ''
    lis = ''.join(f'<li style="margin-left:{(l-2)*0.8}rem"><a href="#{i}">{html.escape(t)}</a></li>' for l,i,t in items)
    return f'<nav class="toc"><strong>On this page</strong><ul>{lis}</ul></nav>'

def _page_html(meta, items, url, title, description, body, toc=()):
    urls = [u for _,u,_ in items]
    i = urls.index(url)
    prev = f'<a href="{_rel(urls[i-1], url)}">&larr; {_inline(items[i-1][2])}</a>' if i>0 else '<span></span>'
    nxt = f'<a href="{_rel(urls[i+1], url)}">{_inline(items[i+1][2])} &rarr;</a>' if i+1<len(urls) else '<span></span>'
    desc = f'<p class="description">{_inline(description)}</p>' if description else ''
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title.replace('`', ''))} – {html.escape(meta['title'])}</title>
<meta name="description" content="{html.escape(description.replace('`', ''))}">
<link rel="icon" href="data:,"><link rel="stylesheet" href="{_rel('style.css', url)}"></head>
<body><nav class="sidebar"><a class="brand" href="{_rel('index.html', url)}">{html.escape(meta['title'])}</a>
{_sidebar(items, url)}</nav>
<main><header><h1 class="title">{_inline(title)}</h1>{desc}</header>
{_toc(toc, url)}
{body}
<footer class="pager">{prev}{nxt}</footer></main></body></html>
"""

def _api_body(entries, pages):
    "The API reference, linking only to pages of this site"
    inline = MarkdownIt('commonmark').renderInline
    in_site = {p.url for p in pages}
    entries = [e if e.url is None or e.url.split('#')[0] in in_site else ApiEntry(**{**e.__dict__, 'url': None}) for e in entries]
    lib = entries[0].module.split('.')[0] if entries else ''
    mod_page = {f'{lib}.{p.module}': p.url for p in pages if p.module}
    res, seen = [], set()
    for mod in dict.fromkeys(e.module for e in entries):
        page = mod_page.get(mod) or next((e.url.split('#')[0] for e in entries if e.module==mod and e.url), None)
        title = f'<a href="{page}">{html.escape(mod)}</a>' if page else html.escape(mod)
        res.append(f'<h2 id="{heading_id(mod, seen)}">{title}</h2>')
        doc = (importlib.import_module(mod).__doc__ or '').strip().splitlines()
        if doc: res.append(f'<p>{inline(doc[0])}</p>')
        for e in (e for e in entries if e.module==mod):
            url = e.url or page
            name = f'<a href="{url}">{html.escape(e.name)}</a>' if url else html.escape(e.name)
            res.append(f'<div class="api-entry" id="{heading_id(mod + "." + e.name, seen)}"><strong><code>{name}</code></strong>'
                       f'<span class="kind">{e.kind}</span>'
                       + (f'<code class="sig">{html.escape(e.name.split(".")[-1] + e.signature)}</code>' if e.signature else '')
                       + ''.join(f'<p>{inline(p)}</p>' for p in e.doc.split('\n\n') if p.strip()) + '</div>')
    return '\n'.join(res), seen

def _home_body(pages):
    lis = ''.join(f'<li><a href="{p.url}">{_inline(p.title)}</a>' + (f': {_inline(p.description)}' if p.description else '')
                  + '</li>' for p in pages)
    return f'<ul class="pages">{lis}<li><a href="api.html">API reference</a>: every public name with its signature</li></ul>'

_dev_section = 'Development'

def _sidebar_sections(path):
    "Page url -> section, for the pages listed under a `section` of Quarto's `sidebar.yml` in the folder `path` (empty without one)"
    f = Path(path)/'sidebar.yml'
    if not f.exists(): return {}
    sb = ((yaml.safe_load(f.read_text()) or {}).get('website') or {}).get('sidebar') or {}
    if isinstance(sb, list): sb = sb[0] if sb else {} # several sidebars: the first
    res = {}
    def _walk(items, sec):
        for it in items or []:
            if isinstance(it, dict) and 'section' in it: _walk(it.get('contents'), it['section'])
            else:
                href = it.get('href') if isinstance(it, dict) else it
                if sec is not None and isinstance(href, str) and href.endswith(('.ipynb', '.qmd', '.md')):
                    res[nbpath2html(Path(href)).as_posix()] = sec
    _walk(sb.get('contents') if isinstance(sb, dict) else None, None)
    return res

def _nav_items(pages, sections=None):
    "Sidebar entries `(section, url, title)` in book order: home, the guides and tutorials, the modules, the API reference, then the plumbing"
    dev = [p for p in pages if (sections or {}).get(p.url) == _dev_section]
    user = [p for p in pages if p not in dev]
    home = [('', p.url, p.title) for p in user if p.url=='index.html'] or [('', 'index.html', 'Home')]
    mods = [('Modules', p.url, p.title) for p in user if p.module]
    guides = [('Guides', p.url, p.title) for p in user if not p.module and p.url!='index.html']
    return home + guides + mods + [('Reference', 'api.html', 'API reference')] + [(_dev_section, p.url, p.title) for p in dev]

def _is_plumbing(page):
    "Pages for developers: notebooks numbered 90 and up, and private modules (`_checks`)"
    num = re.match(r'(\d+)', page.nb.name)
    return bool(num and int(num.group(1)) >= 90) or (page.module or '').startswith('_')

def sidebar_yml(
    path:str|Path|None=None, # Folder of the notebooks (default: nbdev's `nbs_path`)
)->str:
    "Quarto's `sidebar.yml` for the notebooks in `path`, in book order: home, Guides (tutorials), Modules, then Development (the plumbing)"
    pages = [p for p in doc_pages(path) if p.url != 'index.html']
    plumbing = [p for p in pages if _is_plumbing(p)]
    sections = [('Guides', [p for p in pages if not p.module and p not in plumbing]),
                ('Modules', [p for p in pages if p.module and p not in plumbing]), (_dev_section, plumbing)]
    root = Path(path or get_config().nbs_path).absolute()
    lines = ['website:', '  sidebar:', '    contents:', '      - index.ipynb']
    for name, ps in sections:
        if ps: lines += [f'      - section: {name}', '        contents:'] + [f'          - {p.nb.relative_to(root).as_posix()}' for p in ps]
    return '\n'.join(lines) + '\n'

def _want_exec(page, execute):
    if isinstance(execute, bool): return execute
    return any(fnmatch.fnmatch(page.nb.name, g) for g in str(execute).split(','))

def _build_pages(pages, tmp, execute, n_workers, progress):
    "Process and render every notebook; the kernels run in parallel, the processing in turns (`_proc_lock`)"
    def _one(p):
        t0 = time.perf_counter()
        nb = process_nb(p.nb, _want_exec(p, execute))
        with _proc_lock: r = render_nb(nb, tmp, p.url)
        return dict(r, seconds=time.perf_counter()-t0, executed=_want_exec(p, execute))
    with ThreadPoolExecutor(n_workers) as ex:
        futs = [ex.submit(_one, p) for p in pages]
        try: return [f.result() for f in progress_bar(futs, display=progress, leave=False)]
        except BaseException:
            for f in futs: f.cancel() # the first failure stops the build: notebooks not started yet are not run
            raise

def _write_site(tmp, pages, bodies, entries, meta, sections=None):
    "Pages with their links fixed, the API reference, a home page if there is no `index.ipynb`, the style sheet"
    items = _nav_items(pages, sections)
    api_body, api_ids = _api_body(entries, pages)
    site = dict(urls={u for _,u,_ in items}, ids={p.url: b['ids'] for p,b in zip(pages, bodies)} | {'api.html': api_ids})
    for p,b in zip(pages, bodies):
        body = _fix_links(b['body'], p.url, site, meta)
        _copy_resources(body, p, tmp)
        (tmp/p.url).parent.mkdir(parents=True, exist_ok=True)
        (tmp/p.url).write_text(_page_html(meta, items, p.url, b['title'] or p.title, b['description'] or p.description, body, b['toc']))
    (tmp/'api.html').write_text(_page_html(meta, items, 'api.html', 'API reference',
        f"Every public name of {meta['title']}, with its signature and docstring", _fix_links(api_body, 'api.html', site, meta)))
    if not (tmp/'index.html').exists():
        (tmp/'index.html').write_text(_page_html(meta, items, 'index.html', meta['title'], meta['description'], _home_body(pages)))
    (tmp/'style.css').write_text(_css + HtmlFormatter().get_style_defs('.highlight'))
    (tmp/'.nojekyll').touch()
    (tmp/'.fastai_smith_docs').write_text(json.dumps({p.url: dict(notebook=str(p.nb), executed=b['executed'], images=b['n_images'],
        seconds=round(b['seconds'], 1)) for p,b in zip(pages, bodies)}, indent=1))

def build_docs(
    out:str|Path|None=None, # Folder for the site (default: nbdev's `doc_path`, `_docs`); replaced if built here before
    path:str|Path|None=None, # Folder of the notebooks (default: nbdev's `nbs_path`)
    execute:bool|str=True, # Run the notebooks (`True`), use stored outputs (`False`), or run those whose file name matches these comma-separated globs
    n_workers:int=2, # Notebooks processed at the same time, each in its own kernel
    progress:bool=True, # Show a progress bar
)->Path:
    "Build the docs site from the notebooks in `path` into `out`, without Quarto; returns `out`"
    cfg = get_config()
    out = Path(out or cfg.doc_path).absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out/'.fastai_smith_docs').exists())):
        raise ValueError(f"`out` must be a new or empty folder, or one built by `build_docs`; {out} holds other files")
    if not isinstance(n_workers, int) or n_workers < 1: raise ValueError(f"`n_workers` must be an integer >= 1, got {n_workers!r}")
    pages = doc_pages(path)
    if not pages: raise ValueError(f"`path` holds no notebooks: {path or cfg.nbs_path}")
    tmp = out.with_name(f'.{out.name}.tmp')
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    try:
        with working_directory(cfg.config_path): # nbdev's processors look for pyproject.toml from the working directory
            bodies = _build_pages(pages, tmp, execute, n_workers, progress)
            entries = api_entries()
        _write_site(tmp, pages, bodies, entries, _project_meta(cfg), _sidebar_sections(path or cfg.nbs_path))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists(): shutil.rmtree(out)
    tmp.rename(out)
    return out

def readme_text(
    nb_path:str|Path|None=None, # The home page notebook (default: nbdev's `nbs_path/readme_nb`)
)->str:
    "`README.md` as Markdown from the notebook: markdown cells, fenced code cells, no hidden cells and no outputs"
    cfg = get_config()
    nb = read_nb(nb_path or cfg.nbs_path/cfg.get('readme_nb', 'index.ipynb'))
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if not src or re.search(r'^#\|\s*(hide|export)', src, re.MULTILINE): continue
        parts.append(src if c.cell_type == 'markdown' else f"```python\n{src}\n```")
    return '\n\n'.join(parts) + '\n'

def write_readme(
    dest:str|Path|None=None, # Where to write (default: `README.md` next to `pyproject.toml`)
)->Path:
    "Write `readme_text()` to `dest`"
    dest = Path(dest or get_config().config_path/'README.md')
    dest.write_text(readme_text())
    return dest

@call_parse
def main(
    out:str=None, # Folder for the site (default: nbdev's `doc_path`, `_docs`)
    path:str=None, # Folder of the notebooks (default: nbdev's `nbs_path`)
    no_execute:bool=False, # Use the outputs stored in the notebooks instead of running them
    execute:str='*', # Run only the notebooks whose file name matches these comma-separated globs; the others keep their stored outputs
    n_workers:int=2, # Notebooks processed at the same time, each in its own kernel
    readme:bool=False, # Only write README.md from index.ipynb
    sidebar:bool=False, # Only write the notebooks' sidebar.yml (book order: home, guides, modules, plumbing)
):
    "Build the docs site from the notebooks without Quarto, and say where it is"
    out, path = [Path(o).absolute() if o else None for o in (out, path)]
    os.chdir(Path(__file__).resolve().parents[1]) # the project's nbdev config (pyproject.toml), wherever this runs from
    if readme: return print(f"Written {write_readme()}")
    if sidebar:
        f = Path(path or get_config().nbs_path)/'sidebar.yml'
        f.write_text(sidebar_yml(path)); return print(f"Written {f}")
    try: res = build_docs(out, path=path, execute=False if no_execute else execute, n_workers=n_workers)
    except ValueError as e: raise CliError(f"build_docs.py: {e}") from None # bad option: its message, exit status 1
    print(f"Docs site: {res/'index.html'}  (serve it with: python -m http.server -d {res})")
