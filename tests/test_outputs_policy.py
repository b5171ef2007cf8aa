"The outputs policy of the notebooks (scripts/outputs_policy.py): outputs only where they are the record"
import json
from outputs_policy import NBS, check, is_module_nb, stray_outputs

def test_module_notebooks_store_outputs_only_in_cells_nothing_reruns():
    assert check() == {}, "run `python scripts/outputs_policy.py --fix`"

def test_index_and_guides_keep_their_outputs():
    guides = [f for f in NBS.glob('*.ipynb') if not is_module_nb(json.loads(f.read_text()))]
    assert {'index.ipynb', '10_tutorial_interpolation.ipynb'} <= {f.name for f in guides}
    tut = json.loads((NBS/'10_tutorial_interpolation.ipynb').read_text())
    assert any(c.get('outputs') for c in tut['cells'])

def test_the_rule():
    cell = lambda src, out=True: dict(cell_type='code', source=src, outputs=[{'output_type': 'stream'}] if out else [])
    nb = dict(cells=[cell('#| default_exp m', False), cell('x'), cell('#| slow\nfit()'), cell('#| eval: false\nrun()'), cell('y', False)])
    assert stray_outputs(nb) == [1]
    assert stray_outputs(dict(cells=nb['cells'][1:])) == []   # not a module notebook: everything stays
