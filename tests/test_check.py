"""Check: syntax tree -> checked spec; overrides; the spec's meaning pinned down."""

from pathlib import Path

import pytest

from helpers import ROOT
from specc.language import codes
from specc.language.check.data_block import check_data
from specc.language.check.model_block import check_model
from specc.language.check.values import Checker
from specc.language.diagnostics import SpecError, UsageError
from specc.language.parse import parse
from specc.language.source import Source
from specc.language.spec import Column, CsvSource, FitOneCycle, Node, RandomSplit, RowSplit, op
from specc.training.optimizers import make as optimizer
from specc.training.run import load_spec

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
    assert t.optimizer == optimizer("adam", betas=(0.9, 0.99), eps=1e-8, wd=0.1)
    assert t.fit == FitOneCycle(5, 5e-3, 0.3, 25.0, 1e4, (0.95, 0.85, 0.95))


def test_overrides_replace_settings_arguments_and_definitions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, _ = load_spec(COLLAB, ["data.batch=128", "train.optimizer=sgd(momentum=0.9)", "train.fit.epochs=2",
                                 "model.u.dim=8", "model.i=embedding(item, 8)", "data.valid=rows(100, 200)",
                                 'data.source.path="elsewhere.csv"'])
    assert spec.data.batch == 128
    assert spec.train.optimizer == optimizer("sgd", momentum=0.9, wd=0.0, nesterov=False)
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


# ---------------------------------------------------------------- the nesting bound (E306)
# check walks expressions recursively, some 5 Python frames a level; specc makes the room for
# MAX_DEPTH levels (ast.recursion_room), so the documented bound holds whatever the form, and one
# level more is an E306 diagnostic, never a RecursionError.

from specc.language import ast  # noqa: E402
from helpers import mnist_spec  # noqa: E402

_LEVELS = ast.MAX_DEPTH


def _chain(n: int) -> str:
    """n |> steps after x, every other one a call with an argument."""
    return "x" + "".join(" |> linear(8)" if k % 2 == 0 else " |> relu" for k in range(n))


_FORMS = {  # n levels of each form, as the value of `h = ...`
    "pipe": _chain,
    "call": lambda n: "relu(" * n + "x" + ")" * n,
    "neg": lambda n: "-" * n + "x",
    "sum": lambda n: " + ".join(["x"] * (n + 1)),
    "parentheses": lambda n: "(" * (50 * n) + "x |> linear(8)" + ")" * (50 * n),  # none of them a level
}


def _deep_spec(tmp_path: Path, h: str, lr: str = "1e-3", params: str = "") -> Path:
    path = tmp_path / "deep.spec"
    path.write_text(f"""{params}data {{
    source = npz("{ROOT / 'specs' / 'data' / 'mnist_sample.npz'}")
    inputs = [x: float(784) / 255]
    target = y: category
}}
model {{
    h   = {h}
    out = h |> linear(classes)
}}
train {{
    loss = cross_entropy
    fit(epochs=1, lr={lr})
}}
""")
    return path


def _too_deep(path: Path, sets=()) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(path, list(sets))
    (d,) = err.value.diagnostics
    assert d.code == codes.TOO_DEEP
    return d.render()


@pytest.mark.parametrize("form", _FORMS)
def test_each_form_nests_to_the_bound_and_not_one_level_more(tmp_path, form):
    spec, _ = load_spec(_deep_spec(tmp_path, _FORMS[form](_LEVELS)))
    assert spec.model.output == "out"
    if form != "parentheses":
        text = _too_deep(_deep_spec(tmp_path, _FORMS[form](_LEVELS + 1)))
        assert f"error[E306]: the expression is nested too deeply: {_LEVELS + 1} levels, at most {_LEVELS}" in text
        assert "deep.spec:7:11:" in text and "give parts of it names of their own" in text


def test_a_train_value_nests_to_the_bound_counting_its_call_and_argument_name(tmp_path):
    sum_of = lambda n: "1e-3" + " + 0" * n  # noqa: E731
    spec, _ = load_spec(_deep_spec(tmp_path, "x |> linear(8)", lr=sum_of(_LEVELS - 2)))
    assert spec.train.stages[0].fit.lr == pytest.approx(1e-3)
    text = _too_deep(_deep_spec(tmp_path, "x |> linear(8)", lr=sum_of(_LEVELS - 1)))
    assert "nested too deeply: 201 levels" in text and "= note" not in text


def test_a_param_counts_where_it_is_put_in(tmp_path):
    deep_param = lambda n: f"params {{\n    p = {' + '.join(['1'] * (n + 1))}\n}}\n"  # noqa: E731
    spec, _ = load_spec(_deep_spec(tmp_path, "x * p", params=deep_param(_LEVELS - 1)))
    assert spec.model.output == "out"
    text = _too_deep(_deep_spec(tmp_path, "x * p", params=deep_param(_LEVELS)))
    assert "nested too deeply once params and --set values are put in: 201 levels, at most 200" in text
    assert "deep.spec:10:11:" in text  # at `x * p`, where p was put in


def test_params_built_of_params_stay_within_the_bound(tmp_path):
    # each line 150 levels as written; p2 with p1 put in would be 300, p3 450, ...
    lines = "".join(f"    p{k} = p{k - 1}{' + 1' * 150}\n" for k in range(1, 6))
    path = _deep_spec(tmp_path, "x |> linear(8)", lr="p5", params=f"params {{\n    p0 = 1e-3\n{lines}}}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    # p1 holds (150 levels); p2 is reported, and the params built on it are not reported again
    assert [(d.code, d.span.line) for d in err.value.diagnostics] == [(codes.TOO_DEEP, 4)]
    assert "once the params it names are put in: 300 levels" in err.value.diagnostics[0].message


def test_set_values_nest_to_the_bound(tmp_path):
    path = _deep_spec(tmp_path, "x |> linear(8)")
    spec, _ = load_spec(path, ["model.h=" + _chain(_LEVELS)])
    assert sum(n.op.name == "linear" for n in spec.model.nodes) == _LEVELS // 2 + 1
    text = _too_deep(path, ["model.h=" + _chain(_LEVELS + 1)])
    assert text.startswith("--set:1:9: error[E306]")
    # each within the bound, not together: a 200-level value put one level deep
    text = _too_deep(_deep_spec(tmp_path, "x * p", params="params {\n    p = 1\n}\n"),
                     ["p=" + " + ".join(["1"] * 201)])
    assert "201 levels" in text


def test_the_bound_holds_deep_inside_a_program_and_the_recursion_limit_is_put_back(tmp_path):
    path = _deep_spec(tmp_path, _FORMS["call"](_LEVELS))
    limit = __import__("sys").getrecursionlimit()

    def from_frame(k: int):
        return load_spec(path) if k == 0 else from_frame(k - 1)

    spec, _ = from_frame(limit - 300)  # 200 levels need some 1,000 frames more than are left here
    assert spec.model.output == "out"
    assert __import__("sys").getrecursionlimit() == limit


def test_a_chain_of_200_steps_trains_and_exports(tmp_path):
    from specc.training.options import RunOptions
    from specc.training.run import train_run

    body = _chain(_LEVELS).removeprefix("x |> ")
    path = mnist_spec(tmp_path, body=body, train_rows=256, fit="fit(epochs=1, lr=1e-3)")
    spec, _ = load_spec(path)
    result = train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True))
    assert result.parity < 1e-4
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 0
    assert sum(isinstance(m, __import__("torch").nn.Linear) for m in result.model.modules()) == _LEVELS // 2 + 1
