"""The split registry's coverage (specc.data.splits): the rows each kind picks against hand-computed
ones for small tables, the recommender splits' promises (every user in training, no row in both
sets, the same rows for a seed), the file split's second file and its hostile cases, the check-time
errors at the argument, every declared kind through check -> read -> JSON -> the same rows, a
spec trained and evaluated end to end with each new kind, the docs' table against the
declarations, and a kind nobody declared raising at every lookup."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import ROOT
from specc.commands.cli import main
from specc.data.read import read_rows
from specc.data.split import split_columns, split_from_json, split_rows, split_to_json, valid_file
from specc.data.splits import SPLITS, UndeclaredSplit, split_def, validates
from specc.data.splits.base import DataColumn, FileName
from specc.inference.evaluate import evaluate_file
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import FileSplit, LastSplit, LeaveLastSplit, NoSplit, PerUserSplit, RandomSplit, RowSplit
from specc.model.ops.base import Int, Real
from specc.training.run import load_spec

SPEC = """\
data {{
    source = {source}
    inputs = [{inputs}]
    target = rating: float
    valid  = {valid}
    batch  = 16
}}
model {{
    out = dot(embedding({user}, 4), embedding(item, 4))
}}
train {{
    loss    = mse
    metrics = [rmse]
    fit(epochs=1, lr=1e-2)
    seed    = 1
}}
"""

# 8 rows of 3 users in file order: a has 1 row, b 2, c 5; a time for leave_last with a tie in c (rows 3, 4)
USERS = np.array(["c", "a", "b", "c", "c", "b", "c", "c"])
TIMES = np.array([5.0, 9.0, 1.0, 7.0, 7.0, 2.0, 3.0, 0.0])
# numpy's default_rng(3).random(8), the keys per_user sorts each user's rows by:
# [0.086 0.237 0.801 0.582 0.094 0.433 0.479 0.160]


def write_spec(folder: Path, valid: str, source: str = 'csv("rows.csv")', inputs: str = "user: category, "
               "item: category", user: str = "user", name: str = "split") -> Path:
    path = folder / f"{name}.spec"
    path.write_text(SPEC.format(source=source, inputs=inputs, valid=valid, user=user))
    return path


def write_rows(path: Path, n: int, seed: int, users: int = 12, times: bool = True) -> dict[str, np.ndarray]:
    """A ratings table of n rows: user and item ids, a rating, and (with `times`) a timestamp."""
    rng = np.random.default_rng(seed)
    table = {"user": rng.integers(1, users + 1, n), "item": rng.integers(1, 9, n),
             "rating": rng.integers(1, 6, n).astype(float)}
    if times:
        table["timestamp"] = rng.integers(0, 50, n)  # ties, so that file order decides some
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table)
        writer.writerows(zip(*table.values()))
    return table


def wanted_of(spec) -> tuple:
    return (*spec.data.inputs, spec.data.target)


# ---------------------------------------------------------------- hand-computed rows


def test_per_user_takes_each_users_share_of_its_rows_by_a_random_key():
    # At 0.5: a's 1 row stays (0.5 rounds half up to 1, but a user keeps one row); b: 1 of 2, its
    # lower key (row 5: 0.433 < 0.801); c: 2.5 rounds to 3, its three lowest keys (rows 0, 4, 7).
    train, valid = split_rows(8, PerUserSplit(0.5, 3, "user"), "f.csv", {"user": USERS})
    assert valid.tolist() == [0, 4, 5, 7] and train.tolist() == [1, 2, 3, 6]
    # At 0.2: a 0.2 and b 0.4 round to none, c's 1.0 to one: its lowest key (row 0).
    train, valid = split_rows(8, PerUserSplit(0.2, 3, "user"), "f.csv", {"user": USERS})
    assert valid.tolist() == [0] and train.tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_per_user_rounds_half_up_on_the_decimal_product():
    # 50 x 0.29 is 14.4999... in binary floats: rounded to 9 decimals it is 14.5, which rounds up to 15
    one_user = {"user": np.zeros(50, dtype=np.int64)}
    assert len(split_rows(50, PerUserSplit(0.29, 0, "user"), "f.csv", one_user)[1]) == 15
    assert len(split_rows(5, PerUserSplit(0.5, 0, "user"), "f.csv", {"user": np.zeros(5, np.int64)})[1]) == 3
    two = {"user": np.array([0, 0, 0, 0, 1, 1])}  # 4 x 0.35 = 1.4: 1; 2 x 0.35 = 0.7: 1
    assert split_rows(6, PerUserSplit(0.35, 0, "user"), "f.csv", two)[1].size == 2


def test_per_user_keeps_every_user_in_training_no_row_in_both_the_same_rows_for_a_seed():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 5000).astype(str)  # text ids, as a CSV of names gives them
    train, valid = split_rows(5000, PerUserSplit(0.3, 7, "by"), "f.csv", {"by": users})
    assert set(users[train]) == set(users)
    assert not set(train) & set(valid) and len(train) + len(valid) == 5000
    assert (np.diff(train) > 0).all() and (np.diff(valid) > 0).all()
    again = split_rows(5000, PerUserSplit(0.3, 7, "by"), "f.csv", {"by": users})
    assert (again[1] == valid).all()
    assert not np.array_equal(split_rows(5000, PerUserSplit(0.3, 8, "by"), "f.csv", {"by": users})[1], valid)
    # each user's share, as the docs say: round half up, at most all but one
    counts = {u: (users == u).sum() for u in set(users)}
    for u, count in counts.items():
        assert (users[valid] == u).sum() == min(int(np.floor(round(count * 0.3, 9) + 0.5)), count - 1)
    # the users' ids as numbers give the same rows: the keys are drawn per row, in file order
    codes = np.unique(users, return_inverse=True)[1]
    assert (split_rows(5000, PerUserSplit(0.3, 7, "by"), "f.csv", {"by": codes})[1] == valid).all()


def test_leave_last_takes_each_users_latest_rows_ties_in_file_order():
    columns = {"user": USERS, "time": TIMES}
    # n=2: a's one row stays; b has 2 rows, so 1 goes: its latest (row 5, time 2); c's two latest
    # are rows 3 and 4, both at time 7
    train, valid = split_rows(8, LeaveLastSplit(2, "time", "user"), "f.csv", columns)
    assert valid.tolist() == [3, 4, 5] and train.tolist() == [0, 1, 2, 6, 7]
    # n=1: of c's rows 3 and 4 at time 7, row 4 comes later in the file
    train, valid = split_rows(8, LeaveLastSplit(1, "time", "user"), "f.csv", columns)
    assert valid.tolist() == [4, 5] and train.tolist() == [0, 1, 2, 3, 6, 7]


def test_leave_last_picks_the_largest_times_of_every_user():
    rng = np.random.default_rng(1)
    users, times = rng.integers(0, 50, 2000), rng.permutation(2000).astype(float)  # no ties
    train, valid = split_rows(2000, LeaveLastSplit(3, "t", "u"), "f.csv", {"u": users, "t": times})
    assert set(users[train]) == set(users) and not set(train) & set(valid)
    for u in set(users):
        mine = np.flatnonzero(users == u)
        latest = mine[np.argsort(times[mine])][-min(3, len(mine) - 1):] if len(mine) > 1 else []
        assert sorted(valid[users[valid] == u].tolist()) == sorted(np.asarray(latest).tolist())


def test_a_user_split_that_leaves_no_validation_rows_is_d106():
    users = np.array(["a", "b", "c"])  # every user has one row
    for split in (PerUserSplit(0.5, 0, "u"), LeaveLastSplit(1, "t", "u")):
        with pytest.raises(DataError) as err:
            split_rows(3, split, "f.csv", {"u": users, "t": np.arange(3.0)})
        assert err.value.code.code == "D106" and "of 3 rows (3 users) leaves no validation rows" in str(err.value)


def test_leave_last_refuses_a_missing_time():
    with pytest.raises(DataError, match=r"column 't': data row 2 holds a missing value") as err:
        split_rows(3, LeaveLastSplit(1, "t", "u"), "f.csv", {"u": np.zeros(3, np.int64), "t": np.array([1, np.nan, 2])})
    assert err.value.code.code == "D105"


def test_the_place_splits_pick_as_they_always_did():
    order = np.random.default_rng(42).permutation(10)
    train, valid = split_rows(10, RandomSplit(0.3, 42), "f.csv")
    assert valid.tolist() == sorted(order[:3].tolist()) and train.tolist() == sorted(order[3:].tolist())
    assert [a.tolist() for a in split_rows(10, LastSplit(0.2), "f.csv")] == [list(range(8)), [8, 9]]
    assert [a.tolist() for a in split_rows(10, RowSplit(2, 4), "f.csv")] == [[0, 1, *range(4, 10)], [2, 3]]
    with pytest.raises(DataError, match=r"f.csv: error\[D106\]: last\(0.01\) of 10 rows leaves no validation rows"):
        split_rows(10, LastSplit(0.01), "f.csv")


# ---------------------------------------------------------------- reading: the columns a split reads, a second file


def test_a_column_read_for_the_split_alone_is_read_and_dropped(tmp_path):
    table = write_rows(tmp_path / "rows.csv", 60, 0)
    spec = load_spec(write_spec(tmp_path, "leave_last(2)"))[0]
    assert split_columns(spec.data.valid, wanted_of(spec))[0].name == "timestamp"
    train, valid, _ = read_rows(spec.data, wanted_of(spec))
    assert set(train) == set(valid) == {"user", "item", "rating"}  # timestamp: read for the split, not kept
    expect = split_rows(60, spec.data.valid, "rows.csv", table)[1]
    assert (valid["rating"] == table["rating"][expect]).all() and len(train["user"]) == 60 - len(expect)


def test_the_user_column_is_read_for_a_model_that_does_not_use_it(tmp_path):
    write_rows(tmp_path / "rows.csv", 60, 0)
    spec = load_spec(write_spec(tmp_path, "per_user(0.25, seed=2)", inputs="user: category, item: category, "
                                "other: category", user="item"), ["data.inputs=[user: category, item: category]"])[0]
    items_only = (spec.data.inputs[1], spec.data.target)  # the model reads item alone
    train, valid, _ = read_rows(spec.data, items_only)
    assert set(train) == {"item", "rating"} and len(train["item"]) + len(valid["item"]) == 60


def test_the_file_split_reads_the_second_file_for_validation(tmp_path):
    base = write_rows(tmp_path / "u1.base", 40, 0)
    test = write_rows(tmp_path / "u1.test", 15, 1)
    spec = load_spec(write_spec(tmp_path, 'file("u1.test")', source='csv("u1.base")'))[0]
    assert spec.data.valid == FileSplit((tmp_path / "u1.test").resolve())
    train, valid, path = read_rows(spec.data, wanted_of(spec))
    assert (train["rating"] == base["rating"]).all() and (valid["rating"] == test["rating"]).all()
    assert (valid["user"] == test["user"]).all() and path == str((tmp_path / "u1.base").resolve())


def test_the_file_split_resolves_against_the_spec_folder(tmp_path):
    (tmp_path / "data").mkdir()
    write_rows(tmp_path / "data" / "a.csv", 20, 0)
    write_rows(tmp_path / "data" / "b.csv", 5, 1)
    spec = load_spec(write_spec(tmp_path, 'file("data/b.csv")', source='csv("data/a.csv")'))[0]
    assert valid_file(spec.data.valid) == (tmp_path / "data" / "b.csv").resolve()


def _file_split_error(tmp_path: Path, make) -> Exception:
    write_rows(tmp_path / "u1.base", 40, 0)
    make(tmp_path / "other")
    spec = load_spec(write_spec(tmp_path, 'file("other")', source='csv("u1.base")'))[0]
    with pytest.raises((SpecError, DataError)) as err:
        read_rows(spec.data, wanted_of(spec))
    return err.value


def test_a_file_split_of_no_file_a_folder_or_a_fifo_is_e208_at_the_split(tmp_path):
    makers = {"not found": lambda p: None, "is not a regular file": lambda p: p.mkdir()}
    if hasattr(os, "mkfifo"):
        makers["is not a regular file: "] = os.mkfifo  # refused before it is opened: no reader waits on it
    for k, (said, make) in enumerate(makers.items()):
        folder = tmp_path / str(k)
        folder.mkdir()
        err = _file_split_error(folder, make)
        assert isinstance(err, SpecError), err
        (diagnostic,) = err.diagnostics
        assert diagnostic.code.code == "E208" and said in diagnostic.message
        assert diagnostic.span.text == 'file("other")'


def test_an_empty_file_split_is_d122_naming_it(tmp_path):
    err = _file_split_error(tmp_path, lambda p: p.write_text(""))
    assert isinstance(err, DataError) and err.code.code == "D122" and err.path.endswith("other")
    (tmp_path / "header").mkdir()
    header_alone = _file_split_error(tmp_path / "header", lambda p: p.write_text("user,item,rating\n"))
    assert header_alone.code.code == "D122" and "no data rows" in str(header_alone)


def test_a_file_split_of_other_columns_is_d128(tmp_path):
    err = _file_split_error(tmp_path, lambda p: p.write_text("user,item,score\n1,2,3\n"))
    assert isinstance(err, DataError) and err.code.code == "D128"
    assert "lacks the column 'rating' that the spec reads from" in str(err) and "user, item, score" in str(err)


def test_a_file_split_of_npz_arrays_reads_the_second_archive(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("a.npz", 30), ("b.npz", 9)):
        np.savez(tmp_path / name, user=rng.integers(0, 5, n), item=rng.integers(0, 5, n), rating=rng.random(n))
    spec = load_spec(write_spec(tmp_path, 'file("b.npz")', source='npz("a.npz")'))[0]
    train, valid, _ = read_rows(spec.data, wanted_of(spec))
    assert len(train["user"]) == 30 and (valid["rating"] == np.load(tmp_path / "b.npz")["rating"]).all()
    np.savez(tmp_path / "b.npz", user=np.zeros(3), rating=np.ones(3))  # no item array
    with pytest.raises(DataError, match=r"D128.*lacks the column 'item'"):
        read_rows(spec.data, wanted_of(spec))


def test_data_that_brings_its_own_validation_set_refuses_every_split(tmp_path):
    arrays = {f"{c}_{part}": np.arange(6) for c in ("user", "item", "rating") for part in ("train", "valid")}
    np.savez(tmp_path / "own.npz", **arrays)
    for valid in ("per_user(0.5)", "file(\"own.npz\")"):
        spec = load_spec(write_spec(tmp_path, valid, source='npz("own.npz")'))[0]
        with pytest.raises(SpecError, match="E206"):
            read_rows(spec.data, wanted_of(spec))
    spec = load_spec(write_spec(tmp_path, "random(0.5)", source='npz("own.npz")'))[0]
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, valid=None))
    train, valid, _ = read_rows(spec.data, wanted_of(spec))
    assert len(train["user"]) == len(valid["user"]) == 6


# ---------------------------------------------------------------- check-time errors


@pytest.mark.parametrize("valid,inputs,code,at", [
    ("per_user(0.2, by=item_id)", "user: category, item: category", "E201", "item_id"),
    ("per_user(0.2)", "uid: category, item: category", "E201", "per_user(0.2)"),
    ("per_user(0.2, by=age)", "user: category, item: category, age: float", "E301", "age"),
    ("per_user(0.2, by=rating)", "user: category, item: category", "E201", "rating"),  # the target is no input
    ("leave_last(1, by=item)", "user: category, item: category", "E301", "item"),
    ("leave_last(1, by=pixels)", "user: category, item: category, pixels: float(4)", "E301", "pixels"),
    ("leave_last(1, user=age)", "user: category, item: category, age: float", "E301", "age"),
    ("leave_last(0)", "user: category, item: category", "E302", "0"),
    ("per_user(1)", "user: category, item: category", "E302", "1"),
    ('per_user(0.2, by="")', "user: category, item: category", "E201", '""'),
    ("file(3)", "user: category, item: category", "E301", "3"),
    ('file("")', "user: category, item: category", "E312", '""'),
])
def test_a_split_column_of_the_wrong_kind_is_an_error_at_its_argument(tmp_path, valid, inputs, code, at):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, valid, inputs=inputs))
    # those at the split's line (a CSV column of float(4), a model of `user` without one, are errors too)
    assert [(d.code.code, d.span.text) for d in err.value.diagnostics if d.span.line == 5] == [(code, at)]


def test_a_numeric_column_the_spec_does_not_declare_is_read_for_leave_last(tmp_path):
    spec = load_spec(write_spec(tmp_path, "leave_last(1, by=when, user=user)"))[0]
    assert spec.data.valid == LeaveLastSplit(1, "when", "user")
    assert [(c.name, c.kind) for c in split_columns(spec.data.valid, wanted_of(spec))] == [("when", "float")]
    write_rows(tmp_path / "rows.csv", 20, 0)  # no column `when`: E205 at the split
    with pytest.raises(SpecError) as err:
        read_rows(spec.data, wanted_of(spec))
    assert [(d.code.code, d.span.text) for d in err.value.diagnostics] == \
        [("E205", "leave_last(1, by=when, user=user)")]


# ---------------------------------------------------------------- every declared kind, both ways


@dataclass(frozen=True)
class Case:
    """A kind's spec line and what the checker makes of it."""

    valid: str
    split: object


CASES = {
    "random": Case("random(0.25, seed=3)", RandomSplit(0.25, 3)),
    "rows": Case("rows(5, 20)", RowSplit(5, 20)),
    "last": Case("last(0.3)", LastSplit(0.3)),
    "per_user": Case("per_user(0.3, seed=5, by=user)", PerUserSplit(0.3, 5, "user")),
    "leave_last": Case("leave_last(2, by=timestamp, user=user)", LeaveLastSplit(2, "timestamp", "user")),
    "file": Case('file("valid.csv")', None),
    "none": Case("none", NoSplit()),
}


def test_every_split_has_a_case_here():
    assert set(CASES) == set(SPLITS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_split_checks_reads_and_comes_back_from_json_with_the_same_rows(kind, tmp_path):
    write_rows(tmp_path / "rows.csv", 80, 0)
    write_rows(tmp_path / "valid.csv", 17, 1)
    spec = load_spec(write_spec(tmp_path, CASES[kind].valid))[0]
    split = spec.data.valid
    assert split.kind == kind and split == (CASES[kind].split or FileSplit((tmp_path / "valid.csv").resolve()))
    train, valid, _ = read_rows(spec.data, wanted_of(spec))
    assert (len(valid["user"]) > 0) == validates(split) and len(train["user"]) > 0  # none: every row trains
    written = json.loads(json.dumps(split_to_json(split)))
    assert written["kind"] == kind
    back = split_from_json(written)
    assert back == split and split_to_json(back) == written
    again = read_rows(dataclasses.replace(spec.data, valid=back), wanted_of(spec))
    for part, arrays in zip((train, valid), again[:2]):
        assert all((part[k] == arrays[k]).all() for k in part)


def test_the_place_splits_write_the_json_they_always_did():
    assert split_to_json(RandomSplit(0.1, 42)) == {"kind": "random", "fraction": 0.1, "seed": 42}
    assert split_to_json(RowSplit(3, None)) == {"kind": "rows", "start": 3, "end": None}
    assert split_to_json(LastSplit(0.2)) == {"kind": "last", "fraction": 0.2}
    assert split_to_json(None) is None and split_from_json(None) is None
    assert split_to_json(PerUserSplit(0.2, 1, "u")) == {"kind": "per_user", "fraction": 0.2, "seed": 1, "by": "u"}
    assert split_to_json(LeaveLastSplit(1, "t", "u")) == {"kind": "leave_last", "n": 1, "by": "t", "user": "u"}
    assert split_to_json(FileSplit(Path("/d/u1.test"))) == {"kind": "file", "path": "/d/u1.test"}
    assert split_to_json(NoSplit()) == {"kind": "none"}


def test_every_declaration_names_itself_and_reads_its_fields():
    for name, defn in SPLITS.items():
        assert defn.name == name and defn.doc and defn.example.startswith(f"{name}(" if defn.params else name)
        assert all(isinstance(f, (Real, Int, DataColumn, FileName)) for f in defn.params)
        assert len({f.name for f in defn.params}) == len(defn.params)


# ---------------------------------------------------------------- trained and evaluated end to end


def _tables(folder: Path, kind: str) -> str:
    """The files a kind's spec reads, each format's own way, from specs/data/ratings.csv's first rows
    with a timestamp beside them; the source call."""
    with open(ROOT / "specs" / "data" / "ratings.csv") as f:
        rows = [line.strip().split(",") for line in list(f)[1:801]]
    table = {"user": np.array([int(r[0]) % 40 for r in rows]), "item": np.array([int(r[1]) for r in rows]),
             "rating": np.array([float(r[2]) for r in rows]),
             "timestamp": np.random.default_rng(0).integers(0, 10**9, len(rows))}
    if kind == "parquet":
        pq.write_table(pa.table(table), folder / "rows.parquet")
        return 'parquet("rows.parquet")'
    if kind == "npz":
        np.savez(folder / "rows.npz", **table)
        return 'npz("rows.npz")'
    with open(folder / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([list(table), *zip(*table.values())])
    return 'csv("rows.csv")'


def _trained(folder: Path, source: str, valid: str, capsys) -> tuple[Path, dict]:
    spec = write_spec(folder, valid, source=source)
    assert main(["train", str(spec), "--out", str(folder / "run"), "--quiet"]) == 0
    capsys.readouterr()
    with open(folder / "run" / "metrics.csv") as f:
        return folder / "run" / "model.onnx", list(csv.DictReader(f))[-1]


@pytest.mark.parametrize("valid,kind", [("per_user(0.2, seed=4)", "csv"), ("per_user(0.2, seed=4)", "npz"),
                                        ("leave_last(1)", "csv"), ("leave_last(2, by=timestamp)", "parquet"),
                                        ("leave_last(1)", "npz")])
def test_a_user_split_trains_and_evaluate_takes_its_validation_rows(valid, kind, tmp_path, capsys):
    source = _tables(tmp_path, kind)
    model, last = _trained(tmp_path, source, valid, capsys)
    data = next(tmp_path.glob("rows.*"))
    got = evaluate_file(model, data, split="valid", device="cpu")
    spec = load_spec(tmp_path / "split.spec")[0]
    assert got["rows"] == len(read_rows(spec.data, wanted_of(spec))[1]["user"])
    assert got["loss"] == pytest.approx(float(last["valid_loss"]), rel=1e-4, abs=1e-6)
    assert got["rmse"] == pytest.approx(float(last["rmse"]), rel=1e-4, abs=1e-6)


def test_a_per_user_split_of_the_ratings_trains_every_user_seen(tmp_path, capsys):
    model, last = _trained(tmp_path, f'csv("{ROOT / "specs" / "data" / "ratings.csv"}")', "per_user(0.1, seed=2)",
                           capsys)
    got = evaluate_file(model, ROOT / "specs" / "data" / "ratings.csv", split="valid", device="cpu")
    assert got["loss"] == pytest.approx(float(last["valid_loss"]), rel=1e-4, abs=1e-6)
    spec = load_spec(tmp_path / "split.spec")[0]
    train, valid, _ = read_rows(spec.data, wanted_of(spec))
    assert got["rows"] == len(valid["user"]) and set(valid["user"]) <= set(train["user"])


def test_a_file_split_trains_and_evaluate_takes_the_validation_file(tmp_path, capsys):
    with open(ROOT / "specs" / "data" / "ratings.csv") as f:
        lines = list(f)
    (tmp_path / "u1.base").write_text("".join(lines[:1001]))
    (tmp_path / "u1.test").write_text("".join([lines[0], *lines[1001:1301]]))
    model, last = _trained(tmp_path, 'csv("u1.base")', 'file("u1.test")', capsys)
    got = evaluate_file(model, tmp_path / "u1.base", split="valid", device="cpu")
    assert got["rows"] == 300 and got["loss"] == pytest.approx(float(last["valid_loss"]), rel=1e-4, abs=1e-6)
    assert any("u1.test" in note for note in got["notes"])
    assert evaluate_file(model, tmp_path / "u1.base", split="train", device="cpu")["rows"] == 1000


# ---------------------------------------------------------------- the docs' table


def _written(field) -> str:
    """An argument as the docs' table writes it: required bare, else with its default (`...`: none)."""
    if field.required:
        return field.name
    return f"{field.name}={'...' if field.default is None else field.default}"


def _called(name: str, defn) -> str:
    """A split as the docs' table names it: with its arguments, or bare when it takes none (`none`)."""
    return f"{name}({', '.join(_written(f) for f in defn.params)})" if defn.params else name


def test_the_docs_table_of_splits_is_the_declarations():
    text = (ROOT / "docs" / "language.md").read_text()
    section = text[text.index("The splits a spec may name"):]
    lines = re.search(r"((?:^\|.*\n)+)", section, re.M).group(1).splitlines()[2:]
    rows = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in lines]
    assert [row[0] for row in rows] == [f"`{_called(name, defn)}`" for name, defn in SPLITS.items()]
    for (_, doc, example), defn in zip(rows, SPLITS.values()):
        assert (doc, example) == (defn.doc, f"`valid = {defn.example}`"), defn.name


def test_every_docs_example_checks(tmp_path):
    for name, defn in SPLITS.items():
        load_spec(write_spec(tmp_path, defn.example, inputs="user: category, item: category"))


# ---------------------------------------------------------------- a kind nobody declared


@dataclass(frozen=True)
class Undeclared:
    """A checked split of a kind no declaration names (as a split added without its declaration)."""

    kind: ClassVar[str] = "made_up"
    span: object = None


def test_a_split_never_declared_raises_at_every_lookup():
    lookups = {
        "the registry": lambda: split_def("made_up"),
        "the pick": lambda: split_rows(10, Undeclared(), "f.csv"),
        "the columns read": lambda: split_columns(Undeclared(), ()),
        "the validation file": lambda: valid_file(Undeclared()),
        "the export": lambda: split_to_json(Undeclared()),
        "evaluate's reading": lambda: split_from_json({"kind": "made_up"}),
    }
    for stage, call in lookups.items():
        with pytest.raises(UndeclaredSplit, match="no split 'made_up' is declared"):
            call()
    assert issubclass(UndeclaredSplit, KeyError)


def test_a_spec_naming_an_unknown_split_is_e202_with_did_you_mean(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, "per_usr(0.2)"))
    assert [(d.code.code, d.message, d.notes) for d in err.value.diagnostics] == \
        [("E202", "unknown validation split 'per_usr'", ("did you mean 'per_user'?",))]
