"""Named values (the params block): substitution, --set and --grid overrides, what check shows and
run.json records. Errors in the params block itself are in the golden corpus (tests/data/errors/params_*)."""

import json

import pytest

from helpers import ROOT, copy_ratings
from specc.commands.cli import main
from specc.language.diagnostics import SpecError
from specc.training.run import load_spec

SPEC = """\
params {{
    n_factors = {factors}
    hidden    = n_factors * 2
    peak      = 1e-2
}}
data {{
    source = csv("{data}")
    inputs = [user: category, item: category]
    target = rating: float
    valid  = random(0.2, seed=1)
    batch  = 64
}}
model {{
    u   = embedding(user, n_factors)
    i   = embedding(item, n_factors)
    h   = concat(u, i) |> linear(hidden) |> relu
    out = h |> linear(1) |> sigmoid_range(0, 5.5)
}}
train {{
    loss = mse
    fit_one_cycle(epochs=1, lr=peak)
    seed = 3
}}
"""


@pytest.fixture
def spec_path(ratings_dir, tmp_path):
    path = tmp_path / "named.spec"
    path.write_text(SPEC.format(factors=8, data=ratings_dir / "ratings.csv"))
    return path


def _dims(spec):
    emb = {n.name: n.op.dim for n in spec.model.nodes if n.op.name == "embedding"}
    lin = [n.op.out for n in spec.model.nodes if n.op.name == "linear"]
    return emb, lin


def test_a_param_sizes_every_line_that_names_it(spec_path):
    spec, warnings = load_spec(spec_path)
    assert warnings == []
    assert _dims(spec) == ({"u": 8, "i": 8}, [16, 1])
    assert spec.train.stages[0].fit.lr == 1e-2
    assert [(p.name, p.value, p.overridden) for p in spec.params] == \
        [("n_factors", 8, False), ("hidden", 16, False), ("peak", 1e-2, False)]


@pytest.mark.parametrize("key", ["n_factors", "params.n_factors"])
def test_set_changes_a_param_and_what_depends_on_it(spec_path, key):
    spec, _ = load_spec(spec_path, [f"{key}=20"])
    assert _dims(spec) == ({"u": 20, "i": 20}, [40, 1])
    assert [(p.name, p.value, p.overridden) for p in spec.params][:2] == [("n_factors", 20, True), ("hidden", 40, False)]


def test_set_of_an_unknown_param_is_an_error_with_a_suggestion(spec_path, capsys):
    assert main(["check", "--no-data", str(spec_path), "--set", "n_factor=20"]) == 1
    assert capsys.readouterr().err == (
        "--set:1:1: error[E102]: unknown param 'n_factor'\n"
        "  1 | n_factor=20\n"
        "    | ^~~~~~~~\n"
        "  = note: did you mean 'n_factors'?\n")


def test_set_of_a_param_on_a_spec_without_params(tiny, capsys):
    assert main(["check", "--no-data", str(tiny), "--set", "n_factors=20"]) == 1
    err = capsys.readouterr().err
    assert "error[E102]: unknown param 'n_factors'" in err
    assert "the spec has no params block" in err


def test_a_bad_value_given_by_set_is_reported_where_it_is_used_with_a_note(spec_path, capsys):
    assert main(["check", "--no-data", str(spec_path), "--set", "n_factors=0"]) == 1
    err = capsys.readouterr().err
    assert err.count("error[E302]: embedding size must be at least 1, found 0") == 2
    assert err.count("= note: 'n_factors' is 0 (--set)") == 2
    # hidden = n_factors * 2 is 0 too: its use in linear(hidden) says where it came from
    assert "linear's output size must be at least 1, found 0" in err
    assert "= note: 'hidden' is 0 (n_factors * 2; params, line 3)" in err


def test_check_lists_the_params(spec_path, capsys):
    assert main(["check", str(spec_path), "--set", "n_factors=4"]) == 0
    out = capsys.readouterr().out
    assert "params: n_factors = 4 (--set), hidden = 8, peak = 0.01\n" in out
    assert "u             embedding(user, 4)" in out


def test_an_unused_param_is_a_warning(spec_path, capsys):
    spec_path.write_text(spec_path.read_text().replace("    peak      = 1e-2\n", "    peak = 1e-2\n    spare = 3\n"))
    spec, warnings = load_spec(spec_path)
    assert [(str(w.code), w.message, w.span.line) for w in warnings] == [("W202", "param 'spare' is not used", 5)]


def test_params_may_hold_tuples_calls_and_strings(ratings_dir, tmp_path):
    path = tmp_path / "calls.spec"
    path.write_text(SPEC.format(factors=8, data=ratings_dir / "ratings.csv")
                    .replace("    peak      = 1e-2\n",
                             '    peak = slice(1e-3, 1e-2)\n    opt = adam(betas=(0.9, 0.99), wd=0.1)\n'
                             '    data_file = "ratings.csv"\n')
                    .replace(f'csv("{ratings_dir / "ratings.csv"}")', "csv(data_file)")
                    .replace("    loss = mse\n", "    loss = mse\n    optimizer = opt\n"))
    copy_ratings(ratings_dir, tmp_path)
    spec, _ = load_spec(path)
    assert spec.data.source.path == (tmp_path / "ratings.csv").resolve()
    assert spec.train.optimizer.wd == 0.1 and spec.train.optimizer.betas == (0.9, 0.99)
    assert (spec.train.stages[0].fit.lr.low, spec.train.stages[0].fit.lr.high) == (1e-3, 1e-2)
    values = {p.name: p.value for p in spec.params}
    assert values["data_file"] == "ratings.csv" and values["peak"] == "slice(1e-3, 1e-2)"


def test_names_that_are_not_values_are_left_alone(ratings_dir, tmp_path):
    # a param 'body' beside a group 'body': freeze body names the group, never the param
    text = SPEC.format(factors=8, data=ratings_dir / "ratings.csv").replace("    peak      = 1e-2\n",
                                                                            "    peak = 1e-2\n    body = 3\n")
    text = text.replace("    h   = concat(u, i) |> linear(hidden) |> relu\n",
                        "    group body { h = concat(u, i) |> linear(hidden) |> relu }\n    group head {\n")
    text = text.replace("    out = h |> linear(1) |> sigmoid_range(0, 5.5)\n",
                        "    out = h |> linear(1) |> sigmoid_range(0, 5.5)\n    }\n")
    text = text.replace("    u   = embedding(user, n_factors)\n    i   = embedding(item, n_factors)\n", "")
    text = text.replace("concat(u, i)", "concat(embedding(user, n_factors), embedding(item, n_factors))")
    text = text.replace("    fit_one_cycle(epochs=1, lr=peak)\n",
                        "    stage one { freeze body; fit_one_cycle(epochs=1, lr=peak) }\n"
                        "    stage two { unfreeze; fit(epochs=body, lr=peak) }\n")
    path = tmp_path / "groups.spec"
    path.write_text(text)
    spec, _ = load_spec(path)
    assert spec.train.stages[0].frozen == ("body",)
    assert spec.train.stages[1].fit.epochs == 3


def test_sweep_over_a_param_and_run_json_records_it(spec_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec_path), "--grid", "n_factors=2,6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "n_factors=2" in printed and "n_factors=6" in printed
    for factors in (2, 6):
        run = json.loads((out / f"n_factors={factors}" / "run.json").read_text())
        assert run["params"] == {"n_factors": factors, "hidden": 2 * factors, "peak": 0.01}
        assert run["overrides"] == [f"n_factors={factors}"]


def test_the_collab_example_sweeps_its_factors():
    # one embedding alone cannot change width (the README's old sweep example): the param moves both
    with pytest.raises(SpecError, match="dot needs two rows of the same width, found width 20 and width 40"):
        load_spec(ROOT / "specs" / "collab.spec", ["model.u.dim=20"])
    for factors in (10, 40, 80):
        spec, _ = load_spec(ROOT / "specs" / "collab.spec", [f"n_factors={factors}"])
        assert _dims(spec)[0] == {"u": factors, "i": factors, "ub": 1, "ib": 1}


def test_params_fold_arithmetic_lazily(spec_path):
    # once a ZeroDivisionError found by tests/fuzz_specs.py: every operator was evaluated, / by 0 too
    text = spec_path.read_text().replace("    peak      = 1e-2\n",
                                         "    peak = 1e-2\n    zero = 4 * 0\n    half = 1 / 2\n    big = 1e300 * 1e300\n")
    spec_path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(spec_path)
    assert "error[E302]" in err.value.render()  # big = inf is a value no slot can take, once used
    spec_path.write_text(text.replace("    big = 1e300 * 1e300\n", ""))
    spec, warnings = load_spec(spec_path)
    assert {p.name: p.value for p in spec.params}["zero"] == 0 and {p.name: p.value for p in spec.params}["half"] == 0.5
    assert sorted(w.message for w in warnings) == ["param 'half' is not used", "param 'zero' is not used"]
