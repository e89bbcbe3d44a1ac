"""The Python API (specc.load, check, train, Run, open_run, lr_find, sweep, the %%specc magic)
against the command line on the same specs: the same diagnostics text, the same weights bit for
bit, the same metrics; frames in place of a spec's source, and the hostile ones."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import specc
from specc.commands.cli import main

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")


def weights_equal(a, b) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def metrics_without_time(folder):
    return pd.read_csv(folder / "metrics.csv").drop(columns=["seconds"])


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- load and check


def test_check_gives_the_summary_and_diagnostics_the_cli_prints(tiny, capsys):
    code, out, _ = cli(capsys, "check", tiny)
    report = specc.check(tiny)
    assert code == 0 and report.ok and report.summary == out.rstrip("\n")
    bad = tiny.parent / "bad.spec"
    bad.write_text(tiny.read_text().replace("loss      = mse", "loss      = mes"))
    code, _, err = cli(capsys, "check", bad)
    report = specc.check(bad)
    assert code == 1 and not report.ok and report.render() == err.rstrip("\n")
    (d,) = report.errors
    assert (d.code.code, d.path, d.line, d.column) == ("E202", str(bad), 16, 17)
    assert d.notes and "mse" in d.notes[0]


def test_a_string_spec_names_string_in_its_diagnostics(tiny, capsys):
    text = tiny.read_text().replace("batch  = 32", "batch  = = 32")
    with pytest.raises(specc.SpecError) as caught:
        specc.load(text)
    (d,) = caught.value.diagnostics
    assert d.path == "<string>" and d.line == 6
    file = tiny.parent / "syntax.spec"
    file.write_text(text)
    _, _, err = cli(capsys, "check", file)
    assert caught.value.render() == err.rstrip("\n").replace(str(file), "<string>")
    with pytest.raises(specc.SpecError) as named:
        specc.load(text, name="mine.spec")
    assert named.value.diagnostics[0].path == "mine.spec"


def test_an_unknown_override_key_is_the_error_set_gives(tiny, capsys):
    _, _, err = cli(capsys, "check", tiny, "--set", "train.fit.epoch=2")
    with pytest.raises(specc.SpecError) as caught:
        specc.load(tiny, {"train.fit.epoch": 2})
    assert caught.value.render() == err.rstrip("\n")
    assert "did you mean 'train.fit.epochs'" in err


@pytest.mark.parametrize("epochs", [-1, 0, math.inf, math.nan, 10**30, 2.5, "fit"])
def test_absurd_overrides_are_refused_as_the_cli_refuses_them(tiny, capsys, epochs):
    from specc.api.spec import set_text

    text = set_text("train.fit.epochs", epochs)
    _, _, err = cli(capsys, "check", tiny, "--set", text)
    with pytest.raises(specc.SpecError) as caught:
        specc.load(tiny, {"train.fit.epochs": epochs, "data.batch": 32})
    assert caught.value.render() == err.rstrip("\n")


def test_a_huge_overrides_dict_reports_every_mistake(tiny):
    overrides = {f"train.fit.nope{k}": -k for k in range(500)}
    with pytest.raises(specc.SpecError) as caught:
        specc.load(tiny, overrides)
    assert len(caught.value.diagnostics) == 500
    with pytest.raises(specc.UsageError):
        specc.load(tiny, {"data.batch": object()})


def test_show_returns_what_specc_show_prints(tiny, capsys):
    spec = specc.load(tiny)
    for stage in ("code", "plan", "data"):
        _, out, _ = cli(capsys, "show", tiny, "--stage", stage)
        shown = spec.show(stage)
        assert out.startswith(shown)


# ---------------------------------------------------------------- train against the CLI


def test_train_writes_the_run_specc_train_writes(tiny, tmp_path, capsys):
    code, out, _ = cli(capsys, "train", tiny, "--out", tmp_path / "cli", "--device", "cpu", "--set", "data.batch=64")
    assert code == 0
    run = specc.train(tiny, out=tmp_path / "api", device="cpu", overrides={"data.batch": 64}, quiet=True)
    printed, _ = capsys.readouterr()
    assert printed == ""  # quiet: nothing
    assert weights_equal(tmp_path / "cli", run.folder)
    pd.testing.assert_frame_equal(metrics_without_time(tmp_path / "cli"), run.history.drop(columns=["seconds"]))
    last = pd.read_csv(tmp_path / "cli" / "metrics.csv").iloc[-1]
    assert run.metrics == {k: last[k] for k in ("train_loss", "valid_loss", "rmse", "mae")}
    reopened = specc.open_run(run.folder)
    assert reopened.metrics == run.metrics and reopened.onnx_path.is_file()


def test_a_second_train_into_the_folder_is_refused_unless_force(tiny, tmp_path, capsys):
    specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True, overrides={"train.fit.epochs": 1})
    with pytest.raises(specc.UsageError) as caught:
        specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True, overrides={"train.fit.epochs": 1})
    code, _, err = cli(capsys, "train", tiny, "--out", tmp_path / "r", "--set", "train.fit.epochs=1")
    assert code == 2 and err.rstrip("\n") == f"specc: error: {caught.value}"
    run = specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True, overrides={"train.fit.epochs": 1},
                      force=True)
    assert len(run.history) == 1


def test_predict_evaluate_and_inspect_match_the_commands(tiny, tmp_path, capsys):
    run = specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True)
    ratings = tiny.parent / "ratings.csv"
    _, out, _ = cli(capsys, "predict", run.onnx_path, ratings)
    from io import StringIO

    from_cli = pd.read_csv(StringIO(out))
    frame = run.predict(ratings)
    assert list(frame.columns) == list(from_cli.columns)
    assert np.array_equal(frame["rating_pred"].astype(np.float32), from_cli["rating_pred"].astype(np.float32))
    from_frame = run.predict(pd.read_csv(ratings))  # a frame is read with the rules a file is
    assert np.array_equal(from_frame["rating_pred"], frame["rating_pred"])
    _, out, _ = cli(capsys, "evaluate", run.onnx_path, ratings, "--split", "valid")
    scores = run.evaluate(ratings, split="valid")
    for line in out.splitlines()[1:]:
        name, value = line.split()
        assert f"{scores[name]:.6f}" == value
    _, out, _ = cli(capsys, "inspect", run.folder)
    found = run.inspect()
    lowest = found.biases.sort_values("ib", kind="stable").head(10)
    printed = out.split("bias 'ib': lowest\n")[1].splitlines()[:10]
    assert printed == [f"  {b:+.3f}  {label}" for b, label in zip(lowest["ib"], lowest["item"])]
    assert list(found.components.columns) == ["item", "i_pc1", "i_pc2", "i_pc3"]
    assert run.plot_loss().axes and run.plot_schedule().axes and specc.open_run(run.folder).plot_loss().axes


# ---------------------------------------------------------------- frames in place of the source


@pytest.mark.parametrize("kind", ["pandas", "pyarrow", "polars", "dict"])
def test_a_run_from_a_frame_equals_the_run_from_its_csv(tiny, tmp_path, kind):
    ratings = pd.read_csv(tiny.parent / "ratings.csv")
    if kind == "pandas":
        data = ratings
    elif kind == "pyarrow":
        data = pa.Table.from_pandas(ratings, preserve_index=False)
    elif kind == "polars":
        pl = pytest.importorskip("polars", reason="polars is a test extra; not installed here")
        data = pl.read_csv(tiny.parent / "ratings.csv")
    else:
        data = {c: ratings[c].to_numpy() for c in ratings.columns}
    from_csv = specc.train(tiny, out=tmp_path / "csv", device="cpu", quiet=True)
    from_frame = specc.train(tiny, data=data, out=tmp_path / "frame", device="cpu", quiet=True)
    assert weights_equal(from_csv.folder, from_frame.folder)
    pd.testing.assert_frame_equal(metrics_without_time(from_csv.folder), metrics_without_time(from_frame.folder))


def test_a_spec_whose_file_is_not_there_trains_on_a_frame(tiny, tmp_path):
    ratings = pd.read_csv(tiny.parent / "ratings.csv")
    text = tiny.read_text().replace('"ratings.csv"', '"nowhere.csv"')
    run = specc.train(text, data=ratings, out=tmp_path / "r", device="cpu", quiet=True, name="frame")
    assert run.record["spec"] == "frame" and len(run.history) == 3


def test_a_frame_with_a_wrong_dtype_gets_the_positioned_diagnostic(tiny, tmp_path):
    ratings = pd.read_csv(tiny.parent / "ratings.csv")
    ratings["rating"] = ratings["rating"].map(lambda r: "*" * int(r))
    with pytest.raises(specc.SpecError) as caught:
        specc.train(tiny, data=ratings, out=tmp_path / "r", device="cpu", quiet=True)
    (d,) = caught.value.diagnostics
    assert (d.path, d.line, d.column) == (str(tiny), 4, 14)
    assert d.message == "column 'rating' is declared float, but <pandas DataFrame> holds strings"
    assert "<pandas DataFrame>: column 'rating' has the Arrow type large_string" in d.notes or "<pandas DataFrame>: column 'rating' has the Arrow type string" in d.notes
    assert not (tmp_path / "r").exists()  # nothing written
    missing = ratings.drop(columns=["item"])
    with pytest.raises(specc.SpecError) as caught:
        specc.train(tiny, data=missing, out=tmp_path / "r", device="cpu", quiet=True)
    assert caught.value.diagnostics[0].message == "column 'item' is not in <pandas DataFrame>"


def test_a_frame_that_predict_or_evaluate_cannot_read_is_named_as_the_caller_knows_it(tiny, tmp_path, monkeypatch):
    # Run.predict and Run.evaluate read a frame through a Parquet file of their own: an error names the
    # frame, not that file, which is gone when the call ends
    import tempfile

    run = specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True, overrides={"train.fit.epochs": 1})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ratings = pd.read_csv(tiny.parent / "ratings.csv")
    cases = [(run.predict, ratings.drop(columns=["item"]), "<pandas DataFrame>: error[D107]: missing input column "
                                                             "'item' (the file has: user, rating)"),
             (run.evaluate, ratings.drop(columns=["rating"]), "<pandas DataFrame>: error[D107]: missing target "
                                                                "column 'rating' (the file has: user, item)"),
             (run.predict, ratings.assign(user=ratings["user"] + 0.5), "<pandas DataFrame>: error[D104]: column "
              "'user': holds floating-point numbers; the model's column 'user' takes ids or text")]
    for call, frame, message in cases:
        with pytest.raises(specc.DataError) as caught:
            call(frame)
        assert str(caught.value) == message and caught.value.path == "<pandas DataFrame>"
    assert list((tmp_path / "tmp").iterdir()) == []  # each call's file and folder removed
    with pytest.raises(specc.DataError) as caught:  # a file's error still names the file
        run.predict(tmp_path / "nothing.csv")
    assert "nothing.csv" in str(caught.value)


def test_hostile_frames_are_errors_that_name_what_is_wrong(tiny, tmp_path):
    ratings = pd.read_csv(tiny.parent / "ratings.csv")
    with pytest.raises(specc.DataError) as caught:  # no rows
        specc.train(tiny, data=ratings.head(0), out=tmp_path / "r", device="cpu", quiet=True)
    assert caught.value.code.code == "D122" and "<pandas DataFrame>" in str(caught.value)
    mixed = ratings.astype({"user": object})
    mixed.loc[3, "user"] = "someone"  # Python objects of two kinds
    with pytest.raises(specc.DataError) as caught:
        specc.train(tiny, data=mixed, out=tmp_path / "r", device="cpu", quiet=True)
    assert caught.value.code.code == "D131" and caught.value.column == "user"
    floats = ratings.astype({"user": float})
    floats.loc[3, "user"] = np.nan  # NaN in a category column: pandas' floats, which a category is not
    with pytest.raises(specc.SpecError) as caught:
        specc.train(tiny, data=floats, out=tmp_path / "r", device="cpu", quiet=True)
    assert "column 'user' is declared category, but <pandas DataFrame> holds floating-point numbers" in str(caught.value)
    # a missing text id is the category '', as an empty CSV field is (text ids: whole-number ids with a
    # missing one only among the validation rows fail the export's parity check, for Parquet files too)
    texts = ratings.assign(item="m" + ratings["item"].astype(str))
    texts.loc[3, "item"] = None
    run = specc.train(tiny, data=texts, out=tmp_path / "t", device="cpu", quiet=True,
                      overrides={"train.fit.epochs": 1})
    assert math.isfinite(run.metrics["valid_loss"])
    with pytest.raises(specc.DataError) as caught:
        specc.train(tiny, data={"user": np.arange(3), "item": np.arange(4)}, out=tmp_path / "r", quiet=True)
    assert caught.value.code.code == "D131" and caught.value.column == "item"
    with pytest.raises(specc.UsageError):
        specc.train(tiny, data=[1, 2, 3], out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


RECOMMENDER = """\
data {
    source = csv("clicks.csv")
    inputs = [user: category, item: category]
    target = implicit(user, item, negatives=2, top_k=4)
    valid  = per_user(0.25, seed=0)
    batch  = 16
}
model {
    out = dot(embedding(user, 4), embedding(item, 4)) + embedding(item, 1)
}
train {
    loss = bpr
    fit(epochs=2, lr=1e-2)
}
"""


def test_recommend_gives_the_commands_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "clicks.csv").write_text("user,item\n" + "".join(
        f"{u},{i}\n" for u in range(1, 21) for i in rng.permutation(np.arange(1, 13))[:int(rng.integers(3, 11))]))
    (tmp_path / "rec.spec").write_text(RECOMMENDER)
    run = specc.train(tmp_path / "rec.spec", out=tmp_path / "run", device="cpu", quiet=True)
    users = [1, 7, 20, 999]  # 999: never seen, the most popular items; user 7 may have fewer than 4 left
    code, out, _ = cli(capsys, "recommend", run.onnx_path, *[a for u in users for a in ("--user", u)])
    assert code == 0
    want = [line.split(",") for line in out.splitlines()[1:]]
    got = run.recommend(users)
    assert list(got.columns) == ["user", "rank", "item", "score"] and len(got) == len(want) > 12
    assert [[str(v) for v in row[:3]] + [str(np.float32(row[3]))] for row in got.itertuples(index=False)] == want
    assert run.recommend("7").equals(got[got.user == "7"].reset_index(drop=True))  # one id alone
    for bad, error, message in (([], specc.UsageError, "at least one user id"),
                                (b"7", specc.UsageError, "expected a list of user ids"),
                                ([7.5], specc.DataError, "user '7.5' (entry 1) is not a whole number")):
        with pytest.raises(error, match=re.escape(message)):
            run.recommend(bad)
    tiny_run = specc.open_run(run.folder)
    assert tiny_run.recommend([1]).equals(got[got.user == "1"].reset_index(drop=True))


# ---------------------------------------------------------------- searches


def test_sweep_and_lr_find_give_the_commands_numbers(tiny, tmp_path, capsys):
    code, out, _ = cli(capsys, "sweep", tiny, "--grid", "data.batch=16,64", "--out", tmp_path / "cli", "--device", "cpu")
    assert code == 0
    swept = specc.sweep(tiny, {"data.batch": [16, 64]}, out=tmp_path / "api", device="cpu", quiet=True)
    table = out.split("\n\n")[1].splitlines()[1:]
    assert [line.split()[0] for line in table] == list(swept.table["variant"])
    assert [line.split()[1] for line in table] == [f"{v:.6f}" for v in swept.table["valid_loss"]]
    for name, run in swept.runs.items():
        assert weights_equal(tmp_path / "cli" / name, run.folder)
    code, out, _ = cli(capsys, "lr-find", tiny, "--out", tmp_path / "lr-cli", "--steps", "30", "--device", "cpu")
    found = specc.lr_find(tiny, out=tmp_path / "lr-api", steps=30, device="cpu")
    assert found.table.shape == (len(pd.read_csv(tmp_path / "lr-cli" / "lr_find.csv")), 3)
    assert (tmp_path / "lr-cli" / "lr_find.csv").read_text() == (tmp_path / "lr-api" / "lr_find.csv").read_text()
    assert f"valley      {found.suggestions['valley']:.3g}" in out and found.figure.axes


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "--steps from 2 to 100,000; found --start 1e-07, --end 10, --steps 1"),
    (["--steps", "100001"], "--steps 100001"),
    (["--end", "inf"], "--end inf"),
    (["--start", "nan"], "--start nan"),
    (["--start", "1e-320", "--end", "1"], "their ratio a finite number"),  # 1 / 1e-320 overflows
    (["--start", "-1"], "--start -1"),
])
def test_lr_find_refuses_an_absurd_sweep_before_it_reads_or_writes_anything(tiny, tmp_path, capsys, argv, message):
    code, _, err = cli(capsys, "lr-find", tiny, "--out", tmp_path / "lr", "--device", "cpu", *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "lr").exists()
    with pytest.raises(specc.UsageError, match="lr-find needs"):
        specc.lr_find(tiny, out=tmp_path / "lr", steps=10**9)


def test_a_sweep_of_too_many_variants_is_refused_before_any_trains(tiny, tmp_path, capsys):
    import itertools

    from specc.api.search import grid_axes

    batches = ",".join(str(b) for b in range(8, 50))  # 42 values
    code, _, err = cli(capsys, "sweep", tiny, "--grid", f"data.batch={batches}", "--grid",
                       f"train.fit.epochs={','.join(str(e) for e in range(1, 31))}", "--out", tmp_path / "s")
    assert code == 2 and "a sweep of 1,260 variants (42 x 30): at most 1,000" in err
    assert not (tmp_path / "s").exists()
    with pytest.raises(specc.UsageError, match="more than 1,000 values"):  # an endless generator, read no further
        specc.sweep(tiny, {"data.batch": itertools.count(8)}, out=tmp_path / "s")
    assert grid_axes({"data.batch": (b for b in (16, 64))}) == [("data.batch", ["16", "64"])]  # read once


# ---------------------------------------------------------------- notebook display, the magic, the import


def test_html_of_an_error_and_of_a_run_is_escaped_and_shows_the_caret(tiny, tmp_path):
    with pytest.raises(specc.SpecError) as caught:
        specc.load("data { source = csv(\"<b>.csv\") }\nmodel { out = linaer(3) }")
    page = caught.value._repr_html_()
    assert "&lt;string&gt;:" in page and "<b>.csv" not in page and "^" in page
    run = specc.train(tiny, out=tmp_path / "r", device="cpu", quiet=True, overrides={"train.fit.epochs": 1})
    page = run._repr_html_()
    assert "<table" in page and f"{run.metrics['valid_loss']:.6f}" in page and "complete" in page
    with pytest.raises(specc.DataError, match="is not a recommender"):
        run.recommend([1])
    assert specc.check(tiny)._repr_html_().count("ok") >= 1


def test_the_cell_magic_checks_and_trains_a_cell(tiny, tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    monkeypatch.chdir(tiny.parent)
    shell.run_line_magic("load_ext", "specc")
    shell.run_cell_magic("specc", "check --as report", tiny.read_text())
    assert shell.user_ns["report"].ok
    shell.run_cell_magic("specc", f"train --set train.fit.epochs=1 --out {tmp_path / 'm'} --device cpu --quiet --as run",
                         tiny.read_text())
    assert weights_equal(shell.user_ns["run"].folder, shell.user_ns["run"].folder) and len(shell.user_ns["run"].history) == 1
    broken = shell.run_cell_magic("specc", "check --as broken", "data {")  # a Report of the mistake, bound too
    assert broken is shell.user_ns["broken"] and not broken.ok and broken.render().startswith("<cell>:1:7: error[E003]")
    shell.user_ns.pop("nothing", None)
    assert shell.run_cell_magic("specc", "train --as nothing", "data {") is None and "nothing" not in shell.user_ns


def test_import_specc_stays_light_until_training_starts():
    code = ("import sys, specc; assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
            "specc.check('specs/collab.spec', data=False); "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("helpers").ROOT))


def test_a_path_or_a_number_of_another_type_is_a_usage_error_naming_the_argument(tiny, tmp_path):
    """`out=5`, `open_run(None)`, `lr_find(steps="x")`, `load(..., name=5)` name what was wrong, as the CLI's
    argument parser would, where Python's own TypeError or ValueError came from deep inside."""
    cases = [(lambda: specc.train(tiny, out=5, quiet=True), "out: expected a folder's path"),
             (lambda: specc.open_run(None), "path: expected a folder's path"),
             (lambda: specc.open_run(5), "found int"),
             (lambda: specc.lr_find(tiny, out=tmp_path / "lr", steps="x"), "steps: expected a whole number, found 'x'"),
             (lambda: specc.lr_find(tiny, out=tmp_path / "lr", start=None), "start: expected a number, found None"),
             (lambda: specc.lr_find(tiny, out=3.5), "out: expected a folder's path"),
             (lambda: specc.sweep(tiny, {"data.batch": [16]}, out=[1]), "out: expected a folder's path"),
             (lambda: specc.load(tiny, name=5), "name: expected a str")]
    before = sorted(tmp_path.iterdir())
    for call, message in cases:
        with pytest.raises(specc.UsageError, match=re.escape(message)):
            call()
    assert sorted(tmp_path.iterdir()) == before
    found = specc.lr_find(tiny, out=tmp_path / "lr", steps=np.int64(12), start=np.float32(1e-6), device="cpu")
    assert len(found.table) <= 12  # numpy's numbers are numbers
