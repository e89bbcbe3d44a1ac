"""The inputs of predict, evaluate and inspect, and reading the files a spec names: real exported
models (trained once per module), real onnxruntime, real files of every awkward kind."""

import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import MNIST_SAMPLE, ROOT, collab_over, collab_spec, copy_ratings, mnist_subset, ratings_rows
from specc.commands.cli import main
from specc.data.prepare import prepare, Vocab
from specc.inference.session import Session
from specc.language.diagnostics import SpecError
from specc.training.run import load_spec

HEADERLESS = ('csv("u.data", delimiter="\\t", header=false, columns=[user, item, rating, timestamp])')

PEOPLE = """\
data {
    source = csv("people.data", header=false, strip=true, missing=["?"],
                 columns=[age, job, hours, label])
    inputs = [job: category, age: float, hours: float]
    target = label: category
    procs  = [fill_missing, categorify, normalize]
    valid  = last(0.25)
    batch  = 32
}
model {
    out = tabular(layers=[16])
}
train {
    loss    = cross_entropy
    metrics = [accuracy]
    fit_one_cycle(epochs=1, lr=1e-2)
}
"""

DIGITS = """\
data {
    source = npz("digits.npz")
    inputs = [x: float(784) / 255]
    target = y: category
    batch  = 64
}
model {
    out = x |> linear(classes)
}
train {
    loss      = cross_entropy
    metrics   = [accuracy]
    optimizer = adam()
    fit_one_cycle(epochs=1, lr=5e-3)
    seed      = 1
}
"""


def _train(spec: Path) -> Path:
    run = spec.parent / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def collab(ratings_dir, tmp_path_factory):
    """A collab model trained on a CSV with a header (user,item,rating)."""
    folder = tmp_path_factory.mktemp("collab")
    copy_ratings(ratings_dir, folder)
    return _train(collab_spec(folder, fit="fit_one_cycle(epochs=1, lr=1e-2)"))


@pytest.fixture(scope="module")
def udata(ratings_dir, tmp_path_factory):
    """The same ratings as MovieLens' u.data has them: tab-separated, no header, a timestamp."""
    folder = tmp_path_factory.mktemp("udata")
    lines = (ratings_dir / "ratings.csv").read_text().splitlines()[1:]
    (folder / "u.data").write_text("".join(f"{line.replace(',', chr(9))}\t{881250949 + k}\n"
                                           for k, line in enumerate(lines)))
    spec = collab_spec(folder, fit="fit_one_cycle(epochs=1, lr=1e-2)")
    spec.write_text(spec.read_text().replace('csv("ratings.csv")', HEADERLESS))
    return _train(spec)


def _people(n: int, seed: int = 0) -> str:
    """Rows like UCI Adult's: ', ' separated, '?' for a missing age, labels <=50K / >50K."""
    rng = np.random.default_rng(seed)
    jobs = ["clerk", "farmer", "teacher", "pilot"]
    lines = []
    for k in range(n):
        job, age, hours = rng.integers(len(jobs)), rng.normal(40, 12), rng.normal(40, 10)
        label = ">50K" if 0.08 * (age - 40) + 0.06 * (hours - 40) + (job - 1.5) + rng.normal(0, 0.5) > 0 else "<=50K"
        age_text = "?" if k % 13 == 5 else f"{age:.0f}"
        lines.append(f"{age_text}, {jobs[job]}, {hours:.1f}, {label}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """A tabular classifier that fills missing ages (fill_missing), with string labels."""
    folder = tmp_path_factory.mktemp("people")
    (folder / "people.data").write_text(_people(400))
    (folder / "people.spec").write_text(PEOPLE)
    return _train(folder / "people.spec")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """MNIST logistic regression on 600 + 200 rows of the shipped sample (x_train / x_valid arrays)."""
    folder = tmp_path_factory.mktemp("digits")
    mnist_subset(folder / "digits.npz", 600, 200)
    with np.load(MNIST_SAMPLE) as d:
        test = {"x": d["x_valid"][200:300], "y": d["y_valid"][200:300]}
    np.savez(folder / "test.npz", x_test=test["x"], y_test=test["y"])
    (folder / "digits.spec").write_text(DIGITS)
    run = _train(folder / "digits.spec")
    return run, test


def _predict(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _session_ratings(run, users, items) -> list[str]:
    """What onnxruntime itself gives for these ids, as predict writes it."""
    got = Session(run / "model.onnx", device="cpu").run({"user": np.array(users, dtype=np.int64),
                                                         "item": np.array(items, dtype=np.int64)})
    return [str(v) for v in got["rating"]]  # numpy's shortest text of each float32


# --- point 7: predict and evaluate read the documented forms --------------------------------------------------


def test_predict_takes_a_csv_with_a_header_from_a_model_trained_on_headerless_tsv(udata, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item\n1,2\n7,50\n")
    code, out, err = _predict(capsys, udata / "model.onnx", rows)
    assert (code, err) == (0, "")
    ratings = _session_ratings(udata, [1, 7], [2, 50])
    assert out == f"user,item,rating\n1,2,{ratings[0]}\n7,50,{ratings[1]}\n"


@pytest.mark.parametrize("text,options", [
    ("item;user\n2;1\n50;7\n", []),
    ("user\titem\n1\t2\n7\t50\n", []),
    ("user|item|note\n1|2|a\n7|50|b\n", []),
    ("user|item\n1|2\n7|50\n", ["--delimiter", "|"]),
    ("user\titem\n1\t2\n7\t50\n", ["--delimiter", "tab"]),
    ("1\t2\t5\t881250949\n7\t50\t3\t881250950\n", []),  # the training file's own layout
])
def test_predict_finds_the_delimiter_or_takes_the_training_layout(udata, tmp_path, capsys, text, options):
    rows = tmp_path / "rows.txt"
    rows.write_text(text)
    code, out, err = _predict(capsys, udata / "model.onnx", rows, *options)
    assert (code, err) == (0, "")
    ratings = _session_ratings(udata, [1, 7], [2, 50])
    assert [line.split(",")[-1] for line in out.splitlines()[1:]] == ratings


def test_predict_says_what_line_1_is_when_it_is_neither_form(udata, collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("1,2\n")
    assert _predict(capsys, udata / "model.onnx", rows)[:3:2] == (1, (
        f"{rows}:1: error[D107]: line 1 is neither a header naming the model's columns (user, item) nor a row laid "
        "out as the training data was: 4 tab-separated fields (user, item, rating, timestamp), no header; it has "
        "1 field\n"))
    rows.write_text("user,rating\n1,2\n")
    assert _predict(capsys, udata / "model.onnx", rows)[2].endswith(
        "it has 1 field; as a header it names user, rating, not 'item'\n")
    assert _predict(capsys, collab / "model.onnx", rows)[:3:2] == (1, (
        f"{rows}:1: error[D107]: missing input column 'item' (the header has: user, rating)\n"))
    rows.write_text("user,item\n1,2\n")
    assert _predict(capsys, collab / "model.onnx", rows, "--delimiter", ";")[2] == (
        f"{rows}:1: error[D107]: missing input columns 'user', 'item' (line 1 is not a header of column names)\n")


def test_predict_and_evaluate_read_npz_arrays_by_name(digits, tmp_path, capsys):
    run, test = digits
    session = Session(run / "model.onnx", device="cpu")
    probs = session.run({"x": test["x"].astype(np.float32)})["probabilities"]
    code, out, err = _predict(capsys, run / "model.onnx", run.parent / "test.npz")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 101 and lines[1].split(",")[1:] == [str(p) for p in probs[0]]
    accuracy = float((probs.argmax(axis=1) == test["y"]).mean())
    loss = float(-np.log(probs[np.arange(100), test["y"]]).mean())
    assert main(["evaluate", str(run / "model.onnx"), str(run.parent / "test.npz")]) == 0
    assert capsys.readouterr().out == (f"{run.parent / 'test.npz'} (all rows: 100; arrays x_test, y_test)\n"
                                       f"  loss         {loss:.6f}\n  accuracy     {accuracy:.6f}\n")
    other = tmp_path / "other.npz"  # any names, given with --array
    np.savez(other, images=test["x"], labels=test["y"].reshape(-1, 1))
    assert main(["evaluate", str(run / "model.onnx"), str(other), "--array", "x=images", "--array", "y=labels"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"  loss         {loss:.6f}", f"  accuracy     {accuracy:.6f}"]
    assert main(["evaluate", str(run / "model.onnx"), str(other)]) == 1
    assert capsys.readouterr().err == (
        f"{other}: error[D107]: has no array for the model's column 'x' (looked for 'x' or 'x_test' or 'x_valid'); "
        "it holds: images, labels; name it with --array x=NAME\n")


def test_evaluate_split_valid_takes_the_valid_arrays(digits, capsys):
    run, _ = digits
    valid_loss = float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[3])
    assert main(["evaluate", str(run / "model.onnx"), str(run.parent / "digits.npz"), "--split", "valid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("digits.npz (valid rows: 200; arrays x_valid, y_valid)")
    assert lines[1].startswith("  loss ") and float(lines[1].split()[1]) == pytest.approx(valid_loss, abs=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["--array", "x"], "--array 'x': expected COLUMN=NAME, e.g. x=x_test"),
    (["--array", "z=a"], "--array z=...: the model has no column 'z' (it reads x)"),
    (["--delimiter", ";;"], "--delimiter ';;': expected one character, e.g. ';' or tab"),
    (["--delimiter", ","], "--delimiter: {npz} is an .npz archive, not a CSV"),
])
def test_reading_options_that_do_not_fit_are_usage_errors(digits, capsys, argv, message):
    run, _ = digits
    npz = run.parent / "test.npz"
    assert main(["predict", str(run / "model.onnx"), str(npz), *argv]) == 2
    assert capsys.readouterr().err == f"specc: error: {message.format(npz=npz)}\n"


def test_array_option_on_a_csv_is_a_usage_error(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item\n1,2\n")
    assert _predict(capsys, collab / "model.onnx", rows, "--array", "user=u")[:3:2] == (2, (
        f"specc: error: --array names arrays of an .npz archive; {rows} is a CSV (its header names the columns)\n"))


# --- point 8: no silent wrong answers ------------------------------------------------------------------------


@pytest.mark.parametrize("user,message", [
    (np.array([1.0, 196.7, 3.0]), "array 'user', index 1: expected a whole number (the model's ids are integers), "
                                  "found 196.7"),
    (np.array([1.0, np.nan, 3.0]), "array 'user', index 1: expected a whole number (the model's ids are integers), "
                                   "found nan"),
    (np.array(["1", "x", "3"]), "array 'user', index 1: expected a whole number (the model's ids are integers), "
                                "found 'x'"),
    (np.array([True, False, True]), "array 'user' holds booleans of shape (3,); the model's input 'user' takes "
                                    "whole-number ids"),
])
def test_npz_ids_that_are_not_whole_numbers_are_errors(collab, tmp_path, capsys, user, message):
    rows = tmp_path / "rows.npz"
    np.savez(rows, user=user, item=np.array([1, 2, 3]))
    assert _predict(capsys, collab / "model.onnx", rows)[:3:2] == (1, f"{rows}: error[D104]: {message}\n")


def test_whole_float_ids_are_ids(collab, tmp_path, capsys):
    rows = tmp_path / "rows.npz"
    np.savez(rows, user=np.array([1.0, 7.0]), item=np.array([2, 50], dtype=np.uint16))
    code, out, _ = _predict(capsys, collab / "model.onnx", rows)
    assert code == 0 and out.splitlines()[1:] == [f"1,2,{r}" for r in _session_ratings(collab, [1], [2])] + \
        [f"7,50,{r}" for r in _session_ratings(collab, [7], [50])]


def test_ids_past_int64_are_unknown_ids_with_a_note(collab, tmp_path, capsys):
    """README: an id never seen in training maps to the unknown row; one past int64 cannot have
    been seen, so it predicts what any other unseen id does."""
    unseen = _session_ratings(collab, [10 ** 9, 10 ** 9], [2, 3])
    rows = tmp_path / "rows.csv"
    rows.write_text(f"user,item\n{2 ** 63},2\n{-(2 ** 63) - 1},3\n")
    code, out, err = _predict(capsys, collab / "model.onnx", rows)
    assert code == 0 and out == f"user,item,rating\n{2 ** 63},2,{unseen[0]}\n{-(2 ** 63) - 1},3,{unseen[1]}\n"
    assert err == (f"specc: note: column 'user': 2 ids past the int64 range (the first: {2 ** 63}) never seen in "
                   "training; the model reads them as an unknown id\n")
    arrays = tmp_path / "rows.npz"
    np.savez(arrays, user=np.array([2 ** 64 - 1], dtype=np.uint64), item=np.array([2]))
    code, out, err = _predict(capsys, collab / "model.onnx", arrays)
    assert (code, out) == (0, f"user,item,rating\n{2 ** 64 - 1},2,{unseen[0]}\n") and "1 id past" in err


def test_training_ids_past_int64_are_read_as_text(tmp_path):
    spec, _ = load_spec(collab_over(tmp_path, f"user,item,rating\n{2 ** 63},1,3\n" + ratings_rows(10, 10)))
    prepared = prepare(spec.data, spec.model.inputs)
    assert not prepared.vocabs["user"].integer and prepared.vocabs["item"].integer
    assert str(2 ** 63) in prepared.vocabs["user"].values + tuple(prepared.raw_valid["user"])
    assert Vocab.fit("u", np.array(["1", str(2 ** 63)], dtype=object)).integer is False


def test_nan_and_inf_inputs_are_errors_unless_the_model_fills_them(digits, people, tmp_path, capsys):
    run, test = digits
    x = test["x"][:5].astype(np.float32)
    x[3, 17] = np.nan
    rows = tmp_path / "nan.npz"
    np.savez(rows, x=x)
    assert _predict(capsys, run / "model.onnx", rows)[:3:2] == (1, (
        f"{rows}: error[D105]: array 'x', index (3, 17): expected a number, found a missing value (NaN); the model "
        "was not trained to fill missing values of 'x' (fill_missing)\n"))
    x[3, 17] = -np.inf
    np.savez(rows, x=x)
    assert _predict(capsys, run / "model.onnx", rows)[2] == (
        f"{rows}: error[D105]: array 'x', index (3, 17): expected a finite number, found -inf\n")
    # the people model fills a missing age ('?' as in its training data, or nan): predictions, exit 0
    csv_rows = tmp_path / "people.csv"
    csv_rows.write_text("age,job,hours\n?,clerk,40\nnan,pilot,41.5\n30,farmer,inf\n")
    assert _predict(capsys, people / "model.onnx", csv_rows)[:3:2] == (1, (
        f"{csv_rows}:4: error[D105]: column 'hours': expected a finite number, found inf\n"))
    csv_rows.write_text("age,job,hours\n?,clerk,40\nnan,pilot,41.5\n")
    code, out, err = _predict(capsys, people / "model.onnx", csv_rows)
    assert (code, err) == (0, "")
    want = Session(people / "model.onnx", device="cpu").run({
        "job": np.array(["clerk", "pilot"], dtype=object), "age": np.array([np.nan, np.nan], dtype=np.float32),
        "hours": np.array([40, 41.5], dtype=np.float32)})
    got = [line.split(",") for line in out.splitlines()[1:]]
    assert [g[3] for g in got] == list(want["label"]) and all(np.isfinite(float(v)) for g in got for v in g[4:])
    csv_rows.write_text("age,job,hours\n1e39,clerk,40\n")
    assert _predict(capsys, people / "model.onnx", csv_rows)[2] == (
        f"{csv_rows}:2: error[D105]: column 'age': 1e+39 is too large for the model's float32 input\n")


def test_evaluate_names_classes_never_seen_in_training(people, tmp_path, capsys):
    """UCI's adult.test: a first line that is no row, and labels ending in '.'."""
    data = _people(40, seed=5).replace("K\n", "K.\n")
    test = tmp_path / "people.test"
    test.write_text("|1x3 Cross validator\n" + data)
    assert main(["evaluate", str(people / "model.onnx"), str(test)]) == 1
    assert capsys.readouterr().err == (
        f"{test}:1: error[D107]: line 1 is neither a header naming the model's columns (job, age, hours, label) nor a "
        "row laid out as the training data was: 4 ','-separated fields (age, job, hours, label), no header; it "
        "has 1 field\n")
    test.write_text(data)
    counts = {label: data.count(f" {label}\n") for label in ("<=50K.", ">50K.")}
    first = ">50K." if data.splitlines()[0].endswith(">50K.") else "<=50K."
    other = "<=50K." if first == ">50K." else ">50K."
    assert main(["evaluate", str(people / "model.onnx"), str(test)]) == 1
    assert capsys.readouterr().err == (
        f"{test}:1: error[D109]: column 'label': 2 classes the model never saw in training: "
        f"'{first}' ({counts[first]} rows), '{other}' ({counts[other]} rows); its classes are <=50K, >50K "
        f"(did you mean '{first[:-1]}' for '{first}', '{other[:-1]}' for '{other}'?)\n")
    fixed = tmp_path / "fixed.data"  # with the labels as in training, it scores
    fixed.write_text(data.replace("K.\n", "K\n"))
    assert main(["evaluate", str(people / "model.onnx"), str(fixed)]) == 0
    assert capsys.readouterr().out.startswith(f"{fixed} (all rows: 40)\n  loss ")


def test_evaluate_an_integer_class_that_is_not_one(digits, tmp_path, capsys):
    run, test = digits
    np.savez(tmp_path / "t.npz", x=test["x"][:3], y=np.array(["7", "7.5", "12"]))
    assert main(["evaluate", str(run / "model.onnx"), str(tmp_path / "t.npz")]) == 1
    assert capsys.readouterr().err == (
        f"{tmp_path / 't.npz'}: error[D109]: array 'y', index 1: 2 classes the model never saw in training: "
        "'7.5' (1 row), '12' (1 row); its classes are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\n")


def test_evaluate_a_missing_rating(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item,rating\n1,2,3\n1,3,nan\n")
    assert main(["evaluate", str(collab / "model.onnx"), str(rows)]) == 1
    assert capsys.readouterr().err == (f"{rows}:3: error[D105]: column 'rating': expected a finite number, "
                                       "found a missing value (NaN)\n")


# --- point 9: errors, not tracebacks ------------------------------------------------------------------------


def test_a_bad_byte_is_reported_at_its_line(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    body = "".join(f"{k % 50 + 1},{k % 70 + 1}\n" for k in range(299))
    rows.write_bytes(b"user,item\n" + body.encode() + b"3,\xe9\n")
    assert _predict(capsys, collab / "model.onnx", rows)[:3:2] == (1, (
        f"{rows}:301: error[D121]: column 'item': byte 0xe9 is not UTF-8 text; specc reads text files as UTF-8: "
        "convert it (e.g. iconv -f latin1 -t utf-8)\n"))
    # a column the model does not read may hold any bytes
    rows.write_bytes(b"user,item,note\n" + b"1,2,caf\xe9\n")
    assert _predict(capsys, collab / "model.onnx", rows)[0] == 0


def test_a_bad_byte_in_a_specs_data_is_reported_at_its_line(tmp_path, capsys):
    body = ratings_rows(20, 15)
    spec = collab_over(tmp_path, b"user,item,rating\n" + body.encode() + b"3,4,\xff\n" + body.encode())
    assert main(["check", str(spec)]) == 1
    assert capsys.readouterr().err == (f"{tmp_path / 'r.csv'}:302: error[D121]: column 'rating': byte 0xff is not "
                                       "UTF-8 text; specc reads text files as UTF-8: convert it (e.g. iconv -f latin1 "
                                       "-t utf-8)\n")
    (tmp_path / "r.csv").write_bytes(b"us\xe9r,item,rating\n" + body.encode())
    assert main(["check", str(spec)]) == 1
    assert capsys.readouterr().err.endswith("r.csv:1: error[D121]: byte 0xe9 is not UTF-8 text; specc reads text "
                                            "files as UTF-8: convert it (e.g. iconv -f latin1 -t utf-8)\n")


def test_a_byte_order_mark_is_not_part_of_the_first_name(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"\xef\xbb\xbfuser,item\n1,2\n")
    assert _predict(capsys, collab / "model.onnx", rows)[:2] == (0, f"user,item,rating\n1,2,"
                                                                    f"{_session_ratings(collab, [1], [2])[0]}\n")
    body = ratings_rows(10, 10)
    spec, _ = load_spec(collab_over(tmp_path, b"\xef\xbb\xbfuser,item,rating\n" + body.encode()))
    assert prepare(spec.data, spec.model.inputs).n_train == 80
    # a file without a header: the mark is not part of the first id either
    (tmp_path / "u.data").write_bytes(b"\xef\xbb\xbf" + body.replace(",", "\t").encode())
    headerless = collab_spec(tmp_path, name="headerless")
    headerless.write_text(headerless.read_text().replace('csv("ratings.csv")', HEADERLESS.replace(", timestamp", "")))
    spec, _ = load_spec(headerless)
    prepared = prepare(spec.data, spec.model.inputs)
    assert prepared.vocabs["user"].integer and prepared.vocabs["user"].values == tuple(str(u) for u in range(1, 11))


@pytest.mark.parametrize("make,message", [
    (lambda: np.array(["a", "b"]), "D103]: array 'x' holds strings of shape (2,): one value per row, but the model's "
                                   "column 'x' takes rows of shape (784,)"),
    (lambda: np.zeros((2, 28, 28)), "D103]: array 'x' holds float64 numbers of shape (2, 28, 28): rows of shape "
                                    "(28, 28), but the model's column 'x' takes rows of shape (784,)"),
    (lambda: np.array(3.0), "D103]: array 'x' is a single value (float64 numbers of shape ()); the model's column "
                            "'x' needs one row per example"),
    (lambda: np.full((2, 784), "a"), "D104]: array 'x' holds strings of shape (2, 784); the model's input 'x' takes "
                                     "numbers"),
])
def test_npz_arrays_of_the_wrong_kind(digits, tmp_path, capsys, make, message):
    run, _ = digits
    rows = tmp_path / "rows.npz"
    np.savez(rows, x=make())
    assert _predict(capsys, run / "model.onnx", rows)[:3:2] == (1, f"{rows}: error[{message}\n")


def test_npz_files_that_are_not_archives(digits, tmp_path, capsys):
    run, test = digits
    model = run / "model.onnx"
    cases = {
        "pickle.npz": (np.savez, {"x": np.array([{"a": 1}] * 2, dtype=object)},
                       "array 'x' holds Python objects; specc never unpickles data", "D124"),
        "garbage.npz": (None, b"not an archive", "is not an .npz archive of arrays (numpy's format, as np.savez writes)",
                        "D102"),
        "single.npy": (np.save, test["x"], "is a single .npy array (shape (100, 784)), not an .npz archive of named "
                                           "arrays: save it with np.savez(file, name=array)", "D102"),
    }
    for name, (write, data, message, code) in cases.items():
        path = tmp_path / name
        if write is None:
            path.write_bytes(data)
        elif isinstance(data, dict):
            write(path, **data)
        else:
            write(path, data)
        assert _predict(capsys, model, path)[:3:2] == (1, f"{path}: error[{code}]: {message}\n"), name
    whole = (run.parent / "test.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
    assert _predict(capsys, model, tmp_path / "cut.npz")[2] == (
        f"{tmp_path / 'cut.npz'}: error[D102]: is not a readable .npz archive (File is not a zip file)\n")


def test_models_that_onnxruntime_cannot_load(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item\n1,2\n")
    garbage, cut = tmp_path / "garbage.onnx", tmp_path / "cut.onnx"
    garbage.write_bytes(b"\x00\x01garbage")
    cut.write_bytes((collab / "model.onnx").read_bytes()[:500])
    for model in (garbage, cut):
        code, _, err = _predict(capsys, model, rows)
        assert code == 1 and err.startswith(f"{model}: error[D108]: is not an ONNX model onnxruntime can load (")
        assert main(["evaluate", str(model), str(rows)]) == 1 and "error[D108]" in capsys.readouterr().err
    assert _predict(capsys, tmp_path / "none.onnx", rows)[:3:2] == (2, f"specc: error: {tmp_path / 'none.onnx'}: "
                                                                       "no such model file\n")


def test_predict_out_must_be_a_file_in_a_folder_that_is_there(collab, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item\n1,2\n")
    model = collab / "model.onnx"
    assert _predict(capsys, model, rows, "--out", tmp_path)[:3:2] == (2, (
        f"specc: error: --out {tmp_path}: is a folder; give a file name, e.g. {tmp_path / 'predictions.csv'}\n"))
    assert _predict(capsys, model, rows, "--out", tmp_path / "no" / "p.csv")[:3:2] == (2, (
        f"specc: error: --out {tmp_path / 'no' / 'p.csv'}: the folder {tmp_path / 'no'} does not exist\n"))
    assert _predict(capsys, model, rows, "--out", rows)[:3:2] == (2, (
        f"specc: error: --out {rows}: is the file being read; the predictions would replace it\n"))
    assert rows.read_text() == "user,item\n1,2\n"
    assert _predict(capsys, model, rows, "--out", tmp_path / "p.csv")[0] == 0
    assert (tmp_path / "p.csv").read_text().startswith("user,item,rating\n1,2,")


# --- inspect: crafted weights and names files -----------------------------------------------------------------


@pytest.fixture
def crafted(collab, tmp_path):
    """A writable copy of the collab run's weights: (folder, tensors, metadata) to spoil and save."""
    from safetensors.numpy import load_file
    from safetensors import safe_open

    with safe_open(str(collab / "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    run = tmp_path / "run"
    run.mkdir()
    return run, load_file(collab / "model.safetensors"), meta


def _inspect_error(capsys, run, tensors, meta) -> str:
    save_file(tensors, run / "model.safetensors", metadata=meta)
    assert main(["inspect", str(run)]) == 1
    return capsys.readouterr().err.replace(str(run / "model.safetensors"), "W")


def test_inspect_refuses_crafted_weights(crafted, capsys):
    run, tensors, meta = crafted
    save_file(tensors, run / "model.safetensors", metadata=meta)
    assert main(["inspect", str(run), "--show", "2"]) == 0  # the copy as it is
    capsys.readouterr()
    i = tensors.pop("i.weight")
    assert _inspect_error(capsys, run, tensors, meta) == (
        "W: error[D108]: has no tensor 'i.weight' for embedding 'i' (it holds: ib.weight, u.weight, ub.weight)\n")
    tensors["i.weight"] = i[:40]
    assert _inspect_error(capsys, run, tensors, meta) == (
        "W: error[D108]: tensor 'i.weight' (embedding 'i' of 'item') has shape (40, 8), but 80 ids and the unknown "
        "row of width 8 make (81, 8)\n")
    tensors["i.weight"] = i.astype(np.int32)
    assert _inspect_error(capsys, run, tensors, meta) == (
        "W: error[D108]: tensor 'i.weight' (embedding 'i' of 'item') holds int32 numbers of shape (81, 8); an "
        "embedding is a 2-d table of floats\n")
    bad = i.copy()
    bad[5, 3] = np.nan
    tensors["i.weight"] = bad
    err = _inspect_error(capsys, run, tensors, meta)
    assert err.startswith("W: error[D108]: tensor 'i.weight' (embedding 'i' of 'item') holds NaN or infinite values "
                          "(in the row of id ") and err.endswith("): the file is damaged, or training diverged\n")
    tensors["i.weight"] = i
    for key, value, what in (
        ("specc.vocabs", "{not json", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                                      "(char 1))"),
        ("specc.embeddings", '{"i": {"column": "item"}}', "the entry of 'i' is not a column and a width"),
        ("specc.embeddings", '{"i": {"column": "genre", "dim": 8}}',
         "embedding 'i' is over 'genre', which has no vocabulary"),
        ("specc.vocabs", '{"item": {"values": ["1"], "counts": [], "integer": true}}',
         "the counts of 'item' are not a count per value"),
    ):
        assert _inspect_error(capsys, run, tensors, {**meta, key: value}) == (
            f"W: error[D108]: metadata '{key}' is not what `specc train` writes: {what}\n")


def test_inspect_files_that_are_not_weights(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert main(["inspect", str(run)]) == 1
    assert capsys.readouterr().err.startswith(f"{run / 'model.safetensors'}: error[D108]: is not a readable "
                                              "safetensors file (")
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"specc: error: {tmp_path / 'nowhere'}: no such run folder\n"


def test_inspect_names_file_options(collab, ratings_dir, tmp_path, capsys):
    """MovieLens' own u.item: '|'-separated, Latin-1, no header."""
    titles = [line.split(",")[:2] for line in (ratings_dir / "items.csv").read_text().splitlines()[1:]]
    item = tmp_path / "u.item"
    cafe = "Caf\u00e9"
    item.write_bytes("".join(f"{i}|{t.replace('Winter', cafe)}|01-Jan-1995||http://x/|0|1\n"
                             for i, t in titles).encode("latin-1"))
    assert main(["inspect", str(collab), "--names", str(item)]) == 1
    line = next(k for k, (_, t) in enumerate(titles, start=1) if "Winter" in t)
    assert capsys.readouterr().err == (f"{item}:{line}: error[D121]: byte 0xe9 is not utf-8 text; give the file's "
                                       "encoding with --names-encoding (MovieLens' u.item is latin-1)\n")
    assert main(["inspect", str(collab), "--names", str(item), "--names-encoding", "latin-1", "--show", "80"]) == 0
    named = {t.replace("Winter", cafe) for _, t in titles}
    assert _names_shown(capsys.readouterr().out) == named  # every item, the first line's too: it starts with an id
    assert main(["inspect", str(collab), "--names", str(item), "--names-encoding", "latin-1",
                 "--names-delimiter", ","]) == 1
    assert capsys.readouterr().err == (f"{item}:1: error[D103]: expected an id and a name on each line, split by ','; "
                                       "line 1 has one field (another delimiter? --names-delimiter)\n")
    assert main(["inspect", str(collab), "--names", str(item), "--names-encoding", "utf-99"]) == 2
    assert "--names-encoding 'utf-99': not an encoding Python knows" in capsys.readouterr().err
    bom = tmp_path / "items.csv"
    bom.write_bytes(b"\xef\xbb\xbfitem,title\n" + "".join(f"{i},{t}\n" for i, t in titles).encode())
    assert main(["inspect", str(collab), "--names", str(bom), "--show", "80"]) == 0
    assert _names_shown(capsys.readouterr().out) == {t for _, t in titles}


def test_inspect_names_files_that_name_no_item(collab, tmp_path, capsys):
    """A names file of no rows, one csv cannot parse, one whose ids are none of the model's: each
    its own sub-code of D102, which all three were."""
    blank, huge, others = tmp_path / "blank.csv", tmp_path / "huge.csv", tmp_path / "others.csv"
    blank.write_text("\n\n")
    huge.write_text("item,title\n1," + "x" * 140_000 + "\n")
    others.write_text("item,title\n100001,Toy Story\n100002,Jumanji\n")
    expected = {
        blank: "error[D122]: the file is empty",
        huge: "2: error[D123]: cannot be parsed: field larger than field limit (131072)",
        others: "error[D126]: none of its ids is an id of 'item' in the model (read with the delimiter ',', a "
                "header, the id in field 1): see --names-delimiter and --names-header",
    }
    for path, error in expected.items():
        assert main(["inspect", str(collab), "--names", str(path)]) == 1
        assert capsys.readouterr().err == (f"{path}:{error}\n" if error[0] == "2" else f"{path}: {error}\n")


def _names_shown(out: str) -> set[str]:
    """The names in `specc inspect` lines such as '    +0.270  Engine Island (Sci-Fi) [item 5]'."""
    return set(re.findall(r"^ +[+-]\d+\.\d{3}  (.*) \[item \d+\]$", out, re.M))


# --- point 13: say where, and nothing secret ---------------------------------------------------------------


def test_e205_notes_show_parsed_names_never_the_raw_line(tmp_path):
    def rendered(first_line: str) -> str:
        spec, _ = load_spec(collab_over(tmp_path, first_line + "\n1,2,3\n"))
        with pytest.raises(SpecError) as err:
            prepare(spec.data, spec.model.inputs)
        return err.value.render()

    secret = "password=hunter2 token=abc123"
    text = rendered(secret)
    assert "hunter2" not in text and "  = note: the first line of r.csv is not a header of column names" in text
    text = rendered("196\t242\t3\t881250949")
    assert "881250949" not in text and ("  = note: the first line of r.csv holds numbers, not column names: for a "
                                        "file without a header say csv(..., header=false, columns=[...])") in text
    text = rendered("user;film;rating")
    assert "  = note: r.csv has the columns: user, film, rating" in text
    text = rendered(",".join(f"c{k}" for k in range(30)) + ",user," + "x" * 60)
    assert "c19 and 12 more" in text and "x" * 41 not in text


# --- point 10: regular files only -------------------------------------------------------------------------


def _spec_naming(tmp_path, path) -> Path:
    return collab_spec(tmp_path, data=str(path))


def _loop(tmp_path):
    a, b = tmp_path / "loop_a", tmp_path / "loop_b"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def test_spec_data_that_is_not_a_regular_file_is_an_e208_at_the_path(tmp_path):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    cases = [("/dev/zero", "it is a character device; specc reads data from regular files only"),
             (fifo, "it is a FIFO (named pipe); specc reads data from regular files only"),
             (tmp_path, "it is a folder; specc reads data from regular files only")]
    for path, note in cases:
        spec, _ = load_spec(_spec_naming(tmp_path, path))
        with pytest.raises(SpecError) as err:
            prepare(spec.data, spec.model.inputs)
        lines = err.value.render().splitlines()
        assert lines[0] == f"{tmp_path / 'tiny.spec'}:2:18: error[E208]: data file is not a regular file: {path}"
        assert lines[3:] == [f"  = note: {note}"]
    loop = _loop(tmp_path)
    spec, _ = load_spec(_spec_naming(tmp_path, loop))
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    lines = err.value.render().splitlines()
    assert lines[0] == f"{tmp_path / 'tiny.spec'}:2:18: error[E208]: data file is a symbolic link loop: {loop}"
    assert lines[3:] == ["  = note: its links lead back to themselves and never to a file"]


def test_npz_spec_data_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "digits.npz"
    os.mkfifo(fifo)
    (tmp_path / "digits.spec").write_text(DIGITS)
    spec, _ = load_spec(tmp_path / "digits.spec")
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    assert err.value.render().splitlines()[0] == (f"{tmp_path / 'digits.spec'}:2:18: error[E208]: data file is not "
                                                  f"a regular file: {fifo}")


def test_predict_evaluate_inspect_read_regular_files_only(collab, tmp_path, capsys):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    loop = _loop(tmp_path)
    model = collab / "model.onnx"
    for rows, what in ((fifo, "is a FIFO (named pipe), not a regular file"),
                       (Path("/dev/zero"), "is a character device, not a regular file"),
                       (loop, "is a symbolic link loop")):
        assert _predict(capsys, model, rows)[:3:2] == (1, f"{rows}: error[D101]: {what}\n")
        assert main(["evaluate", str(model), str(rows)]) == 1
        assert capsys.readouterr().err == f"{rows}: error[D101]: {what}\n"
        assert main(["inspect", str(collab), "--names", str(rows)]) == 1
        assert capsys.readouterr().err == f"{rows}: error[D101]: {what}\n"
    assert _predict(capsys, loop, Path("/dev/null"))[:3:2] == (1, f"{loop}: error[D101]: is a symbolic link loop\n")
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "model.safetensors")
    assert main(["inspect", str(run)]) == 1
    assert capsys.readouterr().err == f"{run / 'model.safetensors'}: error[D101]: is a FIFO (named pipe), not a " \
                                      "regular file\n"


def test_unreadable_data_file(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n1,2,3\n")
    data.chmod(0)
    spec, _ = load_spec(collab_spec(tmp_path))
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    assert f"error[E208]: data file cannot be read: {data}" in err.value.render()



# --- predict's numbers are the model's float32s; a column named as the target is kept ---------------------------


def _wsgi_predict(model: Path, body: dict) -> dict:
    """specc serve's answer to POST /predict, from its WSGI app in-process, its floats kept as the texts it wrote."""
    from specc.inference.serve import App

    app = App(Session(model, device="cpu"), model.name)
    data = json.dumps(body).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
    try:
        answer = b"".join(app(environ, lambda status, headers: None))
    finally:
        app.close()
    return json.loads(answer, parse_float=str)


def test_predict_writes_the_float32_outputs_bit_for_bit_as_serve_answers(digits, collab, ratings_dir, capsys):
    run, test = digits
    probs = Session(run / "model.onnx", device="cpu").run({"x": test["x"].astype(np.float32)})["probabilities"]
    code, out, err = _predict(capsys, run / "model.onnx", run.parent / "test.npz")
    rows = list(csv.reader(io.StringIO(out)))
    got = np.array([[np.float32(v) for v in row[1:]] for row in rows[1:]], dtype=np.float32)
    assert (code, err) == (0, "") and got.tobytes() == probs.tobytes()  # every bit of every probability
    assert any(np.float32(f"{p:.6g}") != p for p in probs.ravel())  # which 6 digits would not give
    served = _wsgi_predict(run / "model.onnx", {"x": test["x"][:30].tolist()})
    assert [[served[f"probability_{d}"][k] for d in range(10)] for k in range(30)] == [row[1:] for row in rows[1:31]]

    ratings = ratings_dir / "ratings.csv"  # user,item,rating: its ratings kept, the predictions beside them
    code, out, err = _predict(capsys, collab / "model.onnx", ratings)
    table = list(csv.DictReader(io.StringIO(out)))
    assert (code, err) == (0, "") and list(table[0]) == ["user", "item", "rating", "rating_pred"]
    given = list(csv.DictReader(io.StringIO(ratings.read_text())))
    assert [r["rating"] for r in table] == [r["rating"] for r in given]
    users, items = (np.array([int(r[c]) for r in given], dtype=np.int64) for c in ("user", "item"))
    want = Session(collab / "model.onnx", device="cpu").run({"user": users, "item": items})["rating"]
    assert np.array([np.float32(r["rating_pred"]) for r in table]).tobytes() == want.tobytes()
    served = _wsgi_predict(collab / "model.onnx", {"user": users[:200].tolist(), "item": items[:200].tolist()})
    assert served["rating"] == [r["rating_pred"] for r in table[:200]]


def test_predict_keeps_a_column_named_as_the_target(people, tmp_path, capsys):
    """UCI's adult.test has its label, with a '.' after it: predict writes it back as given."""
    data = _people(30, seed=9).replace("K\n", "K.\n")
    labels = [line.rsplit(",", 1)[1].strip() for line in data.splitlines()]
    layouts = {"people.test": data,  # the training file's layout, no header
               "with_header.csv": "label,hours,job,age\n" + "".join(
                   f"{f[3]},{f[2]},{f[1]},{f[0]}\n" for f in (line.split(", ") for line in data.splitlines()))}
    outputs = {}
    for name, text in layouts.items():
        (tmp_path / name).write_text(text)
        code, out, err = _predict(capsys, people / "model.onnx", tmp_path / name)
        assert (code, err) == (0, "")
        table = list(csv.DictReader(io.StringIO(out)))
        assert list(table[0]) == ["job", "age", "hours", "label", "label_pred", "probability_<=50K", "probability_>50K"]
        assert [r["label"] for r in table] == labels and {r["label_pred"] for r in table} <= {"<=50K", ">50K"}
        outputs[name] = [(r["label_pred"], r["probability_>50K"]) for r in table]
    assert outputs["people.test"] == outputs["with_header.csv"]
    (tmp_path / "no_label.csv").write_text("job,age,hours\nclerk,40,38.5\n")  # no such column: the name is free
    code, out, err = _predict(capsys, people / "model.onnx", tmp_path / "no_label.csv")
    assert (code, err) == (0, "") and out.splitlines()[0] == "job,age,hours,label,probability_<=50K,probability_>50K"


def test_onnxruntime_writes_nothing_under_the_home_folder(collab, ratings_dir, tmp_path):
    """onnxruntime (1.29 on) writes a device id and a SQLite file under ~/.cache/Microsoft/DeveloperTools
    from a process that loads it, unless ORT_DISABLE_TELEMETRY=1: specc sets it, a user's own value wins."""
    probe = ("import sys; from specc.commands.cli import main; "
             "sys.exit(main(['predict', sys.argv[1], sys.argv[2], '--out', 'p.csv']) "
             "or main(['evaluate', sys.argv[1], sys.argv[2]]))")

    def run(name: str, **env) -> list[str]:
        home, cwd = tmp_path / name / "home", tmp_path / name / "cwd"
        home.mkdir(parents=True)
        cwd.mkdir()
        clean = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
        done = subprocess.run([sys.executable, "-c", probe, str(collab / "model.onnx"), str(ratings_dir / "ratings.csv")],
                              cwd=cwd, env=clean | {"HOME": str(home), "PYTHONPATH": str(ROOT)} | env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in cwd.iterdir()) == ["p.csv"]
        return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())

    assert run("specc") == []
    if not run("opted-in", ORT_DISABLE_TELEMETRY="0"):
        pytest.skip("this onnxruntime writes no telemetry files, so their absence above shows nothing")
