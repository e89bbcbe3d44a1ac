"""Check: syntax tree -> checked spec; overrides; the spec's meaning pinned down."""

from pathlib import Path

import pytest

from helpers import ROOT
from specc import codes
from specc.check.data_block import check_data
from specc.check.model_block import check_model
from specc.check.values import Checker
from specc.diagnostics import SpecError, UsageError
from specc.parse import parse
from specc.run import load_spec
from specc.source import Source
from specc.spec import SGD, Adam, Column, CsvSource, FitOneCycle, Node, RandomSplit, RowSplit, op

COLLAB = ROOT / "specs" / "collab.spec"


def test_collab_spec_means_what_the_seed_says():
    spec, warnings = load_spec(COLLAB)
    assert warnings == []
    d = spec.data
    assert d.source == CsvSource(ROOT / "specs" / "data" / "ratings.csv", ",", True, None, None)
    assert d.inputs == (Column("user", "category", None), Column("item", "category", None))
    assert d.target == Column("rating", "float", None)
    assert d.valid == RandomSplit(0.1, 42) and d.batch == 64
    m = spec.model
    assert m.inputs == ("user", "item") and m.output == "out"
    assert m.nodes == (
        Node("u", op("embedding", column="user", dim=40), (), (40,), None),
        Node("i", op("embedding", column="item", dim=40), (), (40,), None),
        Node("ub", op("embedding", column="user", dim=1), (), (1,), None),
        Node("ib", op("embedding", column="item", dim=1), (), (1,), None),
        Node("dot", op("dot"), ("u", "i"), (1,), None),
        Node("add", op("add", constant=None, constant_first=False), ("dot", "ub"), (1,), None),
        Node("add_1", op("add", constant=None, constant_first=False), ("add", "ib"), (1,), None),
        Node("out", op("sigmoid_range", low=0.0, high=5.5), ("add_1",), (1,), None),
    )
    t = spec.train
    assert t.loss == "mse" and t.metrics == ("rmse",) and t.seed == 42
    assert t.optimizer == Adam((0.9, 0.99), 1e-8, 0.1)
    assert t.fit == FitOneCycle(5, 5e-3, 0.3, 25.0, 1e4, (0.95, 0.85, 0.95))


def test_overrides_replace_settings_arguments_and_definitions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, _ = load_spec(COLLAB, ["data.batch=128", "train.optimizer=sgd(momentum=0.9)", "train.fit.epochs=2",
                                 "model.u.dim=8", "model.i=embedding(item, 8)", "data.valid=rows(100, 200)",
                                 'data.source.path="elsewhere.csv"'])
    assert spec.data.batch == 128
    assert spec.train.optimizer == SGD(0.9, 0.0, False)
    assert spec.train.fit.epochs == 2 and spec.train.fit.lr == 5e-3
    assert spec.model.node("u").shape == (8,) and spec.model.node("i").shape == (8,)
    assert spec.data.valid == RowSplit(100, 200)
    # a path given on the command line is relative to where the command runs
    assert spec.data.source.path == tmp_path / "elsewhere.csv"


def test_override_errors_point_into_the_override():
    with pytest.raises(SpecError) as err:
        load_spec(COLLAB, ["data.bach=3", "train.optimizer.wd=-1"])
    text = err.value.render()
    assert text == (
        "--set:1:1: error[E102]: unknown key 'data.bach'\n"
        "  1 | data.bach=3\n"
        "    | ^~~~~~~~~\n"
        "  = note: did you mean 'data.batch'?\n"
        "--set:1:20: error[E302]: wd must be at least 0, found -1\n"
        "  1 | train.optimizer.wd=-1\n"
        "    |                    ^~"
    )


def test_override_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="expected key=value"):
        load_spec(COLLAB, ["data.batch"])


def test_unused_input_is_a_warning(tmp_path):
    text = COLLAB.read_text().replace("inputs = [user: category, item: category]",
                                      "inputs = [user: category, item: category, age: float]")
    path = tmp_path / "w.spec"
    path.write_text(text)
    spec, warnings = load_spec(path)
    assert [w.code for w in warnings] == [codes.UNUSED_INPUT] and "'age'" in warnings[0].message
    assert spec.model.inputs == ("user", "item")


def test_float_inputs_and_constants(tmp_path):
    text = COLLAB.read_text().replace("inputs = [user: category, item: category]",
                                      "inputs = [user: category, item: category, age: float]")
    text = text.replace("out = dot(u, i) + ub + ib |> sigmoid_range(0, 5.5)",
                        "out = (dot(u, i) + ub + ib) * 2 - age / 10 |> sigmoid_range(-1 + 1, 11 / 2)")
    path = tmp_path / "f.spec"
    path.write_text(text)
    spec, warnings = load_spec(path)
    assert warnings == []
    ops = {n.name: n.op for n in spec.model.nodes}
    assert ops["age"].column == "age"
    assert ops["mul"] == op("mul", constant=2.0, constant_first=False) and ops["div"] == op("div", constant=10.0, constant_first=False)
    assert ops["out"] == op("sigmoid_range", low=0.0, high=5.5)
    assert spec.model.inputs == ("user", "item", "age")


def test_paths_resolve_relative_to_the_spec_file(tmp_path, monkeypatch):
    folder = tmp_path / "deep"
    folder.mkdir()
    spec_path = folder / "s.spec"
    spec_path.write_text(COLLAB.read_text())
    monkeypatch.chdir(tmp_path)
    spec, _ = load_spec(Path("deep/s.spec"))
    assert spec.data.source.path == folder / "data" / "ratings.csv"


_BROKEN_INPUT = """\
data {
    source = csv("data/ratings.csv")
    inputs = [user: category, age: flaot, item: category]
    target = rating: float
    procs  = [fill_missing]
}
model {
    u   = embedding(user, 4)
    a   = age * 2
    out = user + 1
}
"""


def test_the_data_block_hands_the_model_block_the_columns_that_checked():
    blocks = {b.name.id: b for b in parse(Source("broken.spec", _BROKEN_INPUT)).blocks}
    c = Checker({})
    data = check_data(c, blocks["data"])
    assert data.spec is None and data.inputs_failed
    assert [col.name for col in data.columns] == ["user", "item"]
    assert data.target.name == "rating" and data.procs == ("fill_missing",)
    assert [(d.code, d.span.line) for d in c.errors] == [(codes.BAD_COLUMN, 3)]
    # `age` may be the input that did not check: its use is not reported again; a category
    # column used as a value still is
    assert check_model(c, blocks["model"], data) is None
    assert [(d.code, d.span.line) for d in c.errors] == [(codes.BAD_COLUMN, 3), (codes.NOT_A_VALUE, 10)]
