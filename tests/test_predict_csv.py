"""specc predict's CSV writer (specc.inference.infer.write_csv): its fast path, which joins a chunk's texts
itself where none needs quoting, writes exactly what Python's csv module writes, on columns of every kind
and texts with delimiters, quotes, line breaks, tabs, spaces and empty fields (the oracle: csv.writer over the
same cell texts)."""

from __future__ import annotations

import csv
import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specc.inference import infer

TEXTS = st.text(alphabet=st.sampled_from(list('ab,"\n\r\t é')), max_size=4)
COLUMN = st.one_of(
    st.lists(st.sampled_from([1.5, 0.1, float("nan"), float("inf"), 1e-8, 3.0, -0.0]), min_size=1, max_size=5).map(
        lambda v: np.array(v, np.float32)),
    st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=5).map(lambda v: np.array(v, np.int64)),
    st.lists(TEXTS, min_size=1, max_size=5).map(lambda v: np.array(v, dtype=object)),
    st.lists(st.one_of(st.integers(-9, 9), TEXTS, st.none(), st.booleans()), min_size=1, max_size=5).map(
        lambda v: np.array(v, dtype=object)),
)


def _by_the_csv_module(names, columns, n) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(zip(*(infer.cell_texts(c[:n]) for c in columns)))
    return out.getvalue()


@settings(max_examples=400, deadline=None)
@given(st.lists(COLUMN, min_size=1, max_size=3))
def test_predict_writes_what_the_csv_module_writes(columns):
    n = min(len(c) for c in columns)
    names = [f"c{k}" for k in range(len(columns))]
    out = io.StringIO()
    infer.write_csv(out, names, columns, n)
    assert out.getvalue() == _by_the_csv_module(names, columns, n)


def test_the_fast_path_is_taken_where_nothing_needs_quoting_and_not_elsewhere(monkeypatch):
    """Where no text needs quoting the chunk is joined without the csv module's writerows; one text that needs
    it sends its chunk through the csv module."""
    calls = []
    real = csv.writer

    class Counting:
        def __init__(self, out, **kw):
            self.inner = real(out, **kw)

        def writerow(self, row):
            self.inner.writerow(row)

        def writerows(self, rows):
            calls.append(1)
            self.inner.writerows(rows)

    monkeypatch.setattr(infer.csv, "writer", Counting)
    plain = [np.array(["1", "2"], dtype=object), np.array([0.5, 2.0], np.float32)]
    infer.write_csv(io.StringIO(), ["a", "b"], plain, 2)
    assert calls == []
    infer.write_csv(io.StringIO(), ["a", "b"], [np.array(["1", "x,y"], dtype=object), plain[1]], 2)
    assert calls == [1]
