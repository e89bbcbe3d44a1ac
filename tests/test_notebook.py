"""examples/lesson5.ipynb, executed end to end on a real Jupyter kernel by nbclient (as a reader runs
it), its outputs checked: the runs it trains, the frame's run equal to the CSV's, the figures, the HTML
of a diagnostic and the cell magic. The notebook is stored without outputs."""

from __future__ import annotations

import json
import re

import pytest
from helpers import ROOT

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="the notebook test needs a Jupyter kernel: pip install -e '.[test]'")

NOTEBOOK = ROOT / "examples" / "lesson5.ipynb"


def _source_of(nb, start: str):
    """The code cell whose source starts with `start` (exactly one)."""
    found = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]
    assert len(found) == 1, start
    return found[0]


def _data(cell, kind: str) -> str:
    """The cell's result (or display) of that MIME type, as text."""
    for out in cell.outputs:
        if kind in out.get("data", {}):
            value = out["data"][kind]
            return value if isinstance(value, str) else json.dumps(value)
    raise AssertionError(f"no {kind} output in {cell.source[:60]!r}: {cell.outputs}")


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebook_runs_on_a_kernel_and_shows_what_the_lesson_needs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, at the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert "rmse" in _data(_source_of(nb, "run.metrics"), "text/plain")
    trained = _source_of(nb, "run = specc.train(")
    assert "<table" in _data(trained, "text/html")  # the history frame
    # training's progress on the kernel: tqdm's widget bar for each of the 2 epochs, and one epoch table that
    # was updated in place (a display whose last update holds both epochs' rows)
    bars = [o for o in trained.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    tables = [o for o in trained.outputs if o.output_type == "display_data" and "text/html" in o.get("data", {})]
    assert len(bars) == 2 and len(tables) == 1
    rows = tables[0]["data"]["text/html"].split("<tr>")[2:]  # after the header's row: one row per epoch
    assert [row.count("</td>") for row in rows] == [6, 6]
    rmse = re.findall(r">([0-9.]+)</td>", rows[1])[3]  # stage is text: epoch, train_loss, valid_loss, rmse
    assert f"'rmse': {float(rmse)}" in _data(_source_of(nb, "run.metrics"), "text/plain")  # the last epoch's, live
    # a run from the frame of the CSV the spec reads is the CSV's run
    assert _data(_source_of(nb, "from_frame = "), "text/plain") == "True"
    sweep = _data(_source_of(nb, "grid = specc.sweep("), "text/html")
    assert "n_factors=10" in sweep and "n_factors=40" in sweep
    assert "accuracy" in _data(_source_of(nb, "mnist = specc.train("), "text/plain")
    assert _data(_source_of(nb, "mnist.plot_loss()"), "image/png")
    tuned = _data(_source_of(nb, "pretrain = specc.train("), "text/plain")
    assert "head" in tuned and "all" in tuned  # both stages of the fine tuning
    # the diagnostic as HTML: position, code, message, the line and its caret
    html = _data(_source_of(nb, "specc.check(\"data {"), "text/html")
    assert "&lt;string&gt;:3:13: error[E002]: unexpected &#x27;=&#x27;: expected a value" in html
    assert "batch = = 32" in html and "^" in html
    assert _data(_source_of(nb, "checked.ok"), "text/plain") == "True"  # the magic bound its report
