"""Tabular data: reading real tables, the procs by hand, the tabular block, export with missing values."""

import math

import numpy as np
import pytest
import torch

from specc.commands.cli import main
from specc.data.prepare import column_stats, prepare
from specc.data.table import read_table
from specc.export import parity, parity_rows, to_onnx
from specc.inference.session import Session
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import Column, CsvSource
from specc.model.ops.blocks import emb_size
from specc.model.plan import make_plan
from specc.model.sized import model_sizes, size_model
from specc.training.loop import train
from specc.training.options import RunOptions
from specc.training.run import load_spec

SPEC = """\
data {{
    source = csv("people.csv", header=false, strip=true, missing=["?"],
                 columns=[age, job, city, hours, label])
    inputs = [job: category, city: category, age: float, hours: float]
    target = label: category
    procs  = [{procs}]
    valid  = last(0.25)
    batch  = 32
}}
model {{
    out = {model}
}}
train {{
    loss    = cross_entropy
    metrics = [accuracy]
    fit_one_cycle(epochs=4, lr=1e-2)
}}
"""


def people(n=800, seed=0) -> str:
    """Rows like UCI Adult's: ', ' separated, '?' for missing, a label that depends on the rest."""
    rng = np.random.default_rng(seed)
    jobs = ["clerk", "farmer", "teacher", "nurse", "pilot"]
    cities = ["north", "south", "east"]
    lines = []
    for k in range(n):
        job, city = rng.integers(len(jobs)), rng.integers(len(cities))
        age, hours = rng.normal(40, 12), rng.normal(40, 10)
        score = 0.08 * (age - 40) + 0.06 * (hours - 40) + (job - 2) * 0.8 + rng.normal(0, 0.5)
        cells = [f"{age:.0f}", jobs[job], cities[city], f"{hours:.1f}", ">50K" if score > 0 else "<=50K"]
        if k % 17 == 3:
            cells[0] = "?"  # a missing age
        if k % 23 == 5:
            cells[1] = "?"  # a missing job: its own category
        lines.append(", ".join(cells))
    return "\n".join(lines) + "\n"


def _spec(tmp_path, procs="fill_missing, categorify, normalize", model="tabular(layers=[16], ps=[0.1])", rows=None):
    (tmp_path / "people.csv").write_text(rows if rows is not None else people())
    path = tmp_path / "people.spec"
    path.write_text(SPEC.format(procs=procs, model=model))
    return path


def test_procs_by_hand():
    s = column_stats(np.array([1.0, np.nan, 3.0, 10.0]))
    # the median of 1, 3, 10 fills the gap; mean and (n-1) std of 1, 3, 3, 10
    assert (s.median, s.mean, s.missing) == (3.0, 4.25, 1)
    assert s.std == pytest.approx(math.sqrt(((1 - 4.25) ** 2 + 2 * (3 - 4.25) ** 2 + (10 - 4.25) ** 2) / 3))
    assert column_stats(np.array([5.0, 5.0])).std == 1.0  # a constant column is left unscaled


def test_fastai_embedding_size_rule():
    # min(600, round(1.6 * n ** 0.56))
    assert [emb_size(n) for n in (3, 10, 43, 10**6)] == [3, 6, 13, 600]


def test_filled_normalized_inputs_and_indicators_in_the_model(tmp_path):
    spec, _ = load_spec(_spec(tmp_path))
    prepared = prepare(spec.data, spec.model.inputs)
    stats = prepared.stats["age"]
    ages = prepared.train["age"]
    present = ages[~np.isnan(ages)]
    assert stats.median == float(np.median(present)) and stats.missing == int(np.isnan(ages).sum()) > 0
    model = train(spec, prepared, make_plan(spec, prepared), RunOptions("cpu"))[0].eval()
    # run the model up to its inputs: the generated graph's own intermediate values
    x = torch.tensor([np.nan, 30.0])
    filled = torch.tensor([stats.median, 30.0])
    want = (filled - stats.mean) / stats.std
    got = (torch.where(torch.isnan(x), stats.median, x) - stats.mean) / stats.std
    torch.testing.assert_close(got, want.float())
    code = model.code
    assert f"age_filled = torch.where(age_missing, {stats.median}, age)" in code
    assert "age_na = torch.where(age_na_missing, 2, 1)" in code
    assert "emb_age_na = self.emb_age_na(age_na)" in code


def test_tabular_expands_into_primitives(tmp_path):
    spec, _ = load_spec(_spec(tmp_path, model="tabular(layers=[16, 8], ps=[0.1, 0.2], emb_drop=0.05, "
                                                "emb_sizes=[(job, 4)])"))
    prepared = prepare(spec.data, spec.model.inputs)
    sizes = model_sizes(spec, prepared)
    names = [n.name for n in size_model(spec.model, sizes).nodes]
    # fastai's TabularModel, in order: embeddings, their dropout, batchnorm of the floats, then per layer
    # linear, ReLU, batchnorm, dropout, and the output layer under the value's own name
    assert names[-14:] == ["embeds", "emb_drop", "conts", "bn_conts", "features", "layer1", "layer1_relu",
                           "layer1_bn", "layer1_drop", "layer2", "layer2_relu", "layer2_bn", "layer2_drop", "out"]
    nodes = {n.name: n for n in size_model(spec.model, sizes).nodes}
    assert nodes["emb_job"].op.dim == 4  # given
    assert nodes["emb_city"].op.dim == emb_size(sizes.vocab["city"])  # fastai's rule
    assert {"emb_age_na", "emb_hours_na"} <= set(nodes)  # fill_missing's indicators are embedded too
    # the output layer is linear(classes) as written; sized, its width is the number of classes
    assert nodes["out"].op.out == "classes" and nodes["out"].shape == (sizes.classes,)


def test_missing_values_need_fill_missing(tmp_path):
    spec, _ = load_spec(_spec(tmp_path, procs="categorify"))
    with pytest.raises(DataError) as err:
        prepare(spec.data, spec.model.inputs)
    assert str(err.value) == (f"{tmp_path}/people.csv:4: error[D105]: column 'age': expected a finite number, "
                              "found a missing value (NaN); fill_missing in the data block's procs fills missing values")


def test_export_with_missing_values_and_unseen_categories(tmp_path):
    spec, _ = load_spec(_spec(tmp_path))
    prepared = prepare(spec.data, spec.model.inputs)
    model, history = train(spec, prepared, make_plan(spec, prepared), RunOptions("cpu"))
    assert history.records[-1].metrics["accuracy"] > 0.75
    proto = to_onnx(spec, model, prepared.vocabs).SerializeToString()
    raw = parity_rows(spec, prepared)
    assert "<never seen>" in raw["job"] and any(isinstance(v, float) and math.isnan(v) for v in raw["age"])
    assert parity(spec, model, proto, prepared.vocabs, raw) < 1e-5
    got = Session(proto, device="cpu").run({"job": np.array(["pilot", "astronaut"], dtype=object),
                                            "city": np.array(["north", "?"], dtype=object),
                                            "age": np.array([np.nan, 35], dtype=np.float32),
                                            "hours": np.array([40, np.nan], dtype=np.float32)})
    assert set(got["label"]) <= {"<=50K", ">50K"} and np.allclose(got["probabilities"].sum(axis=1), 1, atol=1e-6)


def test_evaluate_reproduces_the_validation_accuracy(tmp_path, capsys):
    path = _spec(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    last = (run / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert main(["evaluate", str(run / "model.onnx"), str(tmp_path / "people.csv"), "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "(valid rows: 200)" in out
    assert f"accuracy     {float(last[4]):.6f}" in out and f"loss         {float(last[3]):.6f}" in out


def _source(tmp_path, text, **kw):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return CsvSource(path, kw.get("delimiter", ","), kw.get("header", True), kw.get("columns"), None,
                     tuple(kw.get("missing", ())), kw.get("strip", False))


def test_reading_quotes_strip_and_markers(tmp_path):
    cols = (Column("name", "category", None), Column("x", "float", None))
    src = _source(tmp_path, 'name,x\n"Smith, J", 1.5\n plain , ?\n', strip=True, missing=["?"])
    table = read_table(src, cols)
    assert list(table.columns["name"]) == ["Smith, J", "plain"]
    assert table.columns["x"][0] == 1.5 and math.isnan(table.columns["x"][1])


def test_reading_errors_name_file_line_and_column(tmp_path):
    cols = (Column("name", "category", None), Column("x", "float", None))
    with pytest.raises(DataError) as err:
        read_table(_source(tmp_path, "name,x\na,1\nb,2\nc\n"), cols)
    assert str(err.value) == f"{tmp_path}/t.csv:4: error[D103]: expected 2 fields, found 1"
    with pytest.raises(DataError) as err:
        read_table(_source(tmp_path, "name,x\na,1\nb,?\n"), cols)
    assert str(err.value) == (f"{tmp_path}/t.csv:3: error[D104]: column 'x': expected a number, found '?' "
                              '(a missing-value marker? say csv(..., missing=["?"]))')
    with pytest.raises(DataError) as err:
        read_table(_source(tmp_path, 'name,x\na,1\n"b,2\n'), cols)
    assert str(err.value) == f"{tmp_path}/t.csv:3: error[D123]: cannot be parsed: unexpected end of data"


def test_tabular_cats_must_be_categories(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, model="tabular(cats=[age], layers=[8])"))
    assert "tabular cats: 'age' is a float column" in err.value.render()
