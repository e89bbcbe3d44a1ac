"""parquet(...) sources and compressed CSV: Parquet files written by pyarrow here, read by specc as
the same CSV is (same prepared arrays, same trained weights); the schema checked against the spec
at the spec's line; a folder read as one table in order of its files' paths; damaged files named."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, collab_spec, trained

from specc.commands.cli import main
from specc.data.prepare import prepare
from specc.language.diagnostics import DataError, SpecError
from specc.training.run import load_spec

FIXTURES = ROOT / "tests" / "data" / "parquet"


# --------------------------------------------------------------------------- the golden specs' files

def fixture_tables() -> dict[str, pa.Table]:
    """The tables of tests/data/parquet/, which the golden specs parquet_*.spec read."""
    types = pa.table({
        "user": pa.array([1, 2, 3, 1, 2, 3], pa.int64()),
        "item": pa.array(["a", "b", "c", "a", "b", "c"], pa.string()),
        "score": pa.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], pa.float64()),
        "label": pa.array(["x", "y", "x", "y", "x", "y"], pa.string()),
        "when": pa.array([0, 1, 2, 3, 4, 5], pa.timestamp("ms")),
        "vec": pa.array([[1.0, 2.0, 3.0, 4.0]] * 6, pa.list_(pa.float32())),
        "fixed": pa.array([[1.0, 2.0, 3.0, 4.0]] * 6, pa.list_(pa.float32(), 4)),
    })
    half = pa.table({"user": pa.array([1, 2, 3], pa.int64()), "rating": pa.array([1.0, 2.0, 3.0])})
    other = pa.table({"user": pa.array([4, 5, 6], pa.int32()), "rating": pa.array([4.0, 5.0, 1.0])})
    return {"types.parquet": types, "disagree/part-0.parquet": half, "disagree/part-1.parquet": other}


BROKEN = b"user,item,rating\n1,2,3\n"  # a CSV under a .parquet name


def write_fixtures(folder: Path) -> None:
    """Write the golden specs' Parquet files (python tests/test_parquet.py rewrites them)."""
    for name, table in fixture_tables().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name)
    (folder / "broken.parquet").write_bytes(BROKEN)


def test_the_fixture_files_hold_what_write_fixtures_writes():
    for name, table in fixture_tables().items():
        assert pq.read_table(FIXTURES / name).equals(table), name
    assert (FIXTURES / "broken.parquet").read_bytes() == BROKEN


# --------------------------------------------------------------------------- helpers

def as_parquet(csv: Path, out: Path, **write) -> Path:
    """The README's one line: a CSV converted by pyarrow, types as pyarrow infers them."""
    pq.write_table(pacsv.read_csv(csv), out, **write)
    return out


def spec_over(folder: Path, source: str, *, inputs="user: category, item: category", target="rating: float",
              procs="", name="p") -> Path:
    """A small collab-shaped spec whose data block reads `source`."""
    path = folder / f"{name}.spec"
    model = "out = dot(embedding(user, 4), embedding(item, 4))"
    if inputs != "user: category, item: category":  # every input used, so that every one is read
        parts = [f"embedding({c}, 2)" if kind == "category" else f"{c} |> flatten" if "," in shape else c
                 for c, kind, shape in re.findall(r"(\w+): (category|float)(\([^)]*\))?", inputs)]
        model = f"out = concat({', '.join(parts)}) |> linear(1)"
    path.write_text(f"""data {{
    source = {source}
    inputs = [{inputs}]
    target = {target}
    valid  = random(0.25, seed=1){procs}
}}
model {{
    {model}
}}
train {{
    loss = mse
    fit(epochs=1, lr=1e-2)
}}
""")
    return path


def prepared(path: Path, sets=()):
    spec, _ = load_spec(path, list(sets))
    return prepare(spec.data, spec.model.inputs)


def assert_same(a, b) -> None:
    """Two Prepared hold the same arrays, vocabularies and statistics."""
    assert a.train.keys() == b.train.keys()
    for part in ("train", "valid"):
        for name, arr in getattr(a, part).items():
            other = getattr(b, part)[name]
            assert arr.dtype == other.dtype, (part, name)
            np.testing.assert_array_equal(arr, other, err_msg=f"{part} {name}")
    assert a.vocabs == b.vocabs
    assert a.stats == b.stats
    for name, arr in a.raw_valid.items():  # as read: NaN where missing, equal to NaN here
        np.testing.assert_array_equal(np.asarray(arr), np.asarray(b.raw_valid[name]), err_msg=name)


def errors_of(path: Path, sets=()) -> list[str]:
    with pytest.raises(SpecError) as err:
        prepared(path, sets)
    return [f"{d.code}:{d.span.line}:{d.span.column}: {d.message}" for d in err.value.diagnostics]


# --------------------------------------------------------------------------- Parquet against CSV

def test_parquet_prepares_the_same_arrays_as_the_csv(ratings_dir, tmp_path):
    csv = ratings_dir / "ratings.csv"
    as_parquet(csv, tmp_path / "r.parquet")
    from_csv = prepared(spec_over(tmp_path, f'csv("{csv}")', name="c"))
    from_parquet = prepared(spec_over(tmp_path, 'parquet("r.parquet")'))
    assert_same(from_csv, from_parquet)
    assert from_parquet.vocabs["user"].integer  # int64 ids: the exported model takes int64


def test_collab_trained_from_parquet_has_the_weights_of_the_same_trained_from_csv(ratings_dir, tmp_path):
    import torch

    (tmp_path / "csv").mkdir()
    (tmp_path / "pq").mkdir()
    csv = ratings_dir / "ratings.csv"
    as_parquet(csv, tmp_path / "pq" / "ratings.parquet", row_group_size=700)  # several row groups
    (tmp_path / "csv" / "ratings.csv").write_bytes(csv.read_bytes())
    fit = "fit_one_cycle(epochs=1, lr=1e-2)"
    runs = [trained(collab_spec(tmp_path / "csv", fit=fit)), trained(_parquet_collab(tmp_path / "pq", fit))]
    (_, _, a, ha), (_, _, b, hb) = runs
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert ha.records[-1].valid_loss == hb.records[-1].valid_loss


def _parquet_collab(folder: Path, fit: str) -> Path:
    """helpers.collab_spec with its csv(...) source made parquet(...)."""
    path = collab_spec(folder, fit=fit)
    path.write_text(path.read_text().replace('csv("ratings.csv")', 'parquet("ratings.parquet")'))
    return path



# --------------------------------------------------------------------------- types from the schema

def test_columns_are_typed_by_the_schema(tmp_path):
    pq.write_table(pa.table({
        "user": pa.array(["u1", "u2", "u1", "u3"] * 5),                          # strings: a category of text
        "item": pa.array([10, 20, 30, 40] * 5, pa.int16()).dictionary_encode(),  # dictionary of ints: int ids
        "age": pa.array([20, 30, 40, 50] * 5, pa.int32()),                       # an int column read as float
        "rating": pa.array([1, 2, 3, 4] * 5, pa.uint8()),                        # an int target read as float
    }), tmp_path / "t.parquet")
    got = prepared(spec_over(tmp_path, 'parquet("t.parquet")', inputs="user: category, item: category, age: float"))
    assert got.vocabs["user"].values == ("u1", "u2", "u3") and not got.vocabs["user"].integer
    assert got.vocabs["item"].values == ("10", "20", "30", "40") and got.vocabs["item"].integer
    assert got.train["age"].dtype == np.float32 and set(got.train["age"]) <= {20, 30, 40, 50}
    assert got.train["rating"].dtype == np.float32 and set(got.train["rating"]) <= {1, 2, 3, 4}


def test_ids_past_int64_and_booleans(tmp_path):
    big = (1 << 63) + 5
    pq.write_table(pa.table({"user": pa.array([big, 1, 2, 3] * 4, pa.uint64()),
                             "item": pa.array([True, False] * 8),
                             "rating": pa.array([True, False, False, True] * 4)}), tmp_path / "t.parquet")
    got = prepared(spec_over(tmp_path, 'parquet("t.parquet")'))
    assert got.vocabs["user"].values == ("1", "2", "3", str(big))  # as text, as an .npz's or a CSV's would be
    assert got.vocabs["item"].values == ("0", "1") and got.vocabs["item"].integer
    assert sorted(set(got.train["rating"]) | set(got.valid["rating"])) == [0.0, 1.0]


def test_nulls_are_missing_values_as_in_csv(tmp_path):
    """A null reads as an empty CSV field does: in a category column the category '', in a float
    column a missing value that fill_missing fills (and only it)."""
    user = [1, 2, None, 4, 5, 6, 7, 8] * 3
    age = [20.0, None, 30.0, 40.0, None, 50.0, 60.0, 70.0] * 3
    rating = [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0] * 3
    pq.write_table(pa.table({"user": pa.array(user, pa.int64()), "age": pa.array(age), "rating": pa.array(rating)}),
                   tmp_path / "t.parquet")
    text = "user,age,rating\n" + "".join(f"{'' if u is None else u},{'' if a is None else a},{r}\n"
                                          for u, a, r in zip(user, age, rating))
    (tmp_path / "t.csv").write_text(text)
    cols, fill = "user: category, age: float", "\n    procs  = [fill_missing, normalize]"
    from_parquet = prepared(spec_over(tmp_path, 'parquet("t.parquet")', inputs=cols, procs=fill))
    from_csv = prepared(spec_over(tmp_path, 'csv("t.csv", missing=[""])', inputs=cols, procs=fill, name="c"))
    assert_same(from_csv, from_parquet)
    assert "" in from_parquet.vocabs["user"].values and not from_parquet.vocabs["user"].integer
    assert from_parquet.stats["age"].missing > 0
    # without fill_missing, a null number is an error at its row, as an empty CSV field is at its line
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("t.parquet")', inputs=cols))
    assert str(err.value) == (f"{tmp_path / 't.parquet'}: error[D105]: column 'age': row 2: expected a finite number, "
                              "found a missing value (a null or NaN); fill_missing in the data block's procs fills "
                              "missing values")


def test_a_null_target_is_an_error_at_its_file_and_row(tmp_path):
    pq.write_table(pa.table({"user": [1, 2, 3], "item": [1, 2, 3], "rating": [1.0, 2.0, 3.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"user": [4, 5, 6], "item": [4, 5, 6], "rating": [1.0, None, 3.0]}), tmp_path / "b.parquet")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, f'parquet("{tmp_path}")'))
    assert str(err.value) == (f"{tmp_path / 'b.parquet'}: error[D105]: column 'rating': row 2: expected a finite "
                              "number, found a missing value (a null or NaN)")


def test_list_columns_are_float_arrays(tmp_path):
    rows = 8
    flat = [[float(k * 4 + j) for j in range(4)] for k in range(rows)]
    pq.write_table(pa.table({
        "x": pa.array(flat, pa.list_(pa.float32())),                                   # a flat list: float(2, 2)
        "f": pa.array(flat, pa.list_(pa.float64(), 4)),                                # fixed size: float(4)
        "n": pa.array([[v[:2], v[2:]] for v in flat], pa.list_(pa.list_(pa.int64()))),  # nested as the shape
        "rating": pa.array([float(k % 5) for k in range(rows)]),
    }), tmp_path / "t.parquet")
    got = prepared(spec_over(tmp_path, 'parquet("t.parquet")', inputs="x: float(2, 2), f: float(4), n: float(2, 2)"))
    whole = np.concatenate([got.train["x"], got.valid["x"]])
    assert whole.shape == (rows, 2, 2)
    assert sorted(whole.reshape(rows, 4).tolist()) == flat
    for name in ("f", "n"):
        np.testing.assert_array_equal(got.train[name].reshape(-1, 4), got.train["x"].reshape(-1, 4))


def test_a_list_of_the_wrong_length_or_a_null_list_is_an_error_at_its_row(tmp_path):
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]]), "rating": [1.0, 2.0, 3.0]}),
                   tmp_path / "short.parquet")
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], None, [4.0, float("nan")]]), "rating": [1.0, 2.0, 3.0]}),
                   tmp_path / "null.parquet")
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [2.0, 3.0], [4.0, float("nan")]]), "rating": [1.0, 2.0, 3.0]}),
                   tmp_path / "nan.parquet")
    expected = {
        "short": "D103]: column 'x': row 2: a list of 1 values, but the spec declares float(2)",
        "null": "D105]: column 'x': row 2: a missing list (null) where the spec declares float(2)",
        "nan": ("D105]: column 'x': row 3: expected a finite number (value 2 of 2), found a missing value "
                "(a null or NaN)"),
    }
    for name, message in expected.items():
        with pytest.raises(DataError) as err:
            prepared(spec_over(tmp_path, f'parquet("{name}.parquet")', inputs="x: float(2)", name=name),
                     ["data.valid=rows(0, 1)"])
        assert str(err.value).endswith(message), name


def test_type_errors_point_at_the_declaration_and_name_the_file(tmp_path):
    pq.write_table(pa.table({"user": [1, 2], "item": [1.5, 2.5], "rating": ["a", "b"]}), tmp_path / "t.parquet")
    path = spec_over(tmp_path, 'parquet("t.parquet")')
    assert errors_of(path) == [
        "E210:3:31: column 'item' is declared category, but t.parquet holds floating-point numbers",
        "E210:4:14: column 'rating' is declared float, but t.parquet holds strings",
    ]


def test_columns_selects_what_the_spec_may_read(tmp_path):
    pq.write_table(pa.table({"user": [1, 2, 3, 4], "item": [1, 2, 1, 2], "rating": [1.0, 2.0, 3.0, 4.0],
                             "noise": ["a", "b", "c", "d"]}), tmp_path / "t.parquet")
    ok = prepared(spec_over(tmp_path, 'parquet("t.parquet", columns=[user, item, rating])'))
    assert ok.n_train + ok.n_valid == 4
    # a selected column the file does not have is refused, as pyarrow and pandas refuse it
    assert errors_of(spec_over(tmp_path, 'parquet("t.parquet", columns=[user, item, rating, ratings])')) == [
        "E205:2:22: columns=[...] names 'ratings', which is not in t.parquet"]


# --------------------------------------------------------------------------- folders

def test_a_folder_is_one_table_in_order_of_the_files_paths(tmp_path):
    folder = tmp_path / "parts"
    (folder / "c").mkdir(parents=True)
    rng = np.random.default_rng(3)
    parts = {}
    for name in ("b.parquet", "a.parquet", "c/d.parquet", "c/a.parquet"):  # written out of order
        n = int(rng.integers(40, 60))
        parts[name] = pa.table({"user": rng.integers(0, 30, n), "item": rng.integers(0, 20, n),
                                "rating": rng.integers(1, 6, n).astype(float)})
        pq.write_table(parts[name], folder / name, row_group_size=7)
    (folder / "_SUCCESS").write_text("")           # what Spark leaves beside its parts
    (folder / ".a.parquet.crc").write_text("x")    # hidden: left out
    (folder / "notes.txt").write_text("not data")  # not Parquet: left out
    whole = pa.concat_tables([parts[n] for n in ("a.parquet", "b.parquet", "c/a.parquet", "c/d.parquet")])
    as_csv = tmp_path / "whole.csv"
    pacsv.write_csv(whole, as_csv)
    from_folder = prepared(spec_over(tmp_path, 'parquet("parts")'))
    assert_same(prepared(spec_over(tmp_path, f'csv("{as_csv}")', name="c")), from_folder)


def test_a_folder_whose_files_disagree_or_hold_none(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"user": [1, 2], "item": [1, 2], "rating": [1.0, 2.0]}), folder / "a.parquet")
    pq.write_table(pa.table({"user": [1, 2], "rating": [1.0, 2.0]}), folder / "b.parquet")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("parts")'))
    assert "error[D112]: the files disagree: b.parquet has no column 'item', which a.parquet has" in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("user\n1\n")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("empty")'))
    assert "error[D112]: holds no Parquet files" in str(err.value)


def test_two_columns_of_one_name_are_an_error_naming_the_file(tmp_path):
    # D125 (once a D102): which of the two the spec means cannot be told, in one file or in a folder's
    users = pa.array([1, 2, 3, 4, 5] * 4)
    twice = pa.Table.from_arrays([users, users, users, pa.array([1.0, 2, 3, 4, 5] * 4)],
                                 names=["user", "user", "item", "rating"])
    pq.write_table(twice, tmp_path / "r.parquet")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("r.parquet")'))
    assert str(err.value) == f"{tmp_path / 'r.parquet'}: error[D125]: has 2 columns named 'user'"
    (tmp_path / "parts").mkdir()
    pq.write_table(twice.rename_columns(["user", "item", "x", "rating"]), tmp_path / "parts" / "a.parquet")
    pq.write_table(twice, tmp_path / "parts" / "b.parquet")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("parts")'))
    assert str(err.value) == f"{tmp_path / 'parts' / 'b.parquet'}: error[D125]: has 2 columns named 'user'"


# --------------------------------------------------------------------------- damaged files

def test_a_damaged_file_is_named(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    table = pa.table({"user": rng.integers(0, 1000, 20000), "item": rng.integers(0, 50, 20000),
                      "rating": rng.random(20000)})
    pq.write_table(table, folder / "a.parquet")
    pq.write_table(table, folder / "b.parquet", compression="zstd")
    data = bytearray((folder / "b.parquet").read_bytes())
    page = pq.read_metadata(folder / "b.parquet").row_group(0).column(2).data_page_offset
    data[page:page + 16] = b"\xff" * 16  # the rating column's page header: the footer stays readable
    (folder / "b.parquet").write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("parts")'))
    assert str(err.value).startswith(f"{folder / 'b.parquet'}: error[D102]: cannot be read as Parquet, it is damaged")
    (folder / "b.parquet").write_bytes(bytes(data[:len(data) // 2]))  # cut short: no footer
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, 'parquet("parts")'))
    assert str(err.value).startswith(f"{folder / 'b.parquet'}: error[D102]: is not a readable Parquet file")


def test_a_missing_file_is_reported_at_the_spec_path(tmp_path):
    assert errors_of(spec_over(tmp_path, 'parquet("nope.parquet")')) == [
        f"E208:2:22: data file not found: {tmp_path / 'nope.parquet'}"]


# --------------------------------------------------------------------------- compressed CSV

def compressed(path: Path, ending: str) -> Path:
    """The file compressed as its new name's ending says: gzip and bz2 by Python, zstd and lz4 by pyarrow."""
    out = path.with_name(path.name + ending)
    data = path.read_bytes()
    if ending == ".gz":
        out.write_bytes(gzip.compress(data))
    elif ending == ".bz2":
        out.write_bytes(bz2.compress(data))
    else:
        with pa.output_stream(str(out)) as f:  # the codec from the name's ending
            f.write(data)
    return out


@pytest.mark.parametrize("ending", [".gz", ".zst", ".bz2", ".lz4"])
def test_a_compressed_csv_reads_as_the_plain_one(ratings_dir, tmp_path, ending):
    csv = tmp_path / "ratings.csv"
    csv.write_bytes((ratings_dir / "ratings.csv").read_bytes())
    packed = compressed(csv, ending)
    assert packed.read_bytes()[:32] != csv.read_bytes()[:32]
    assert_same(prepared(spec_over(tmp_path, 'csv("ratings.csv")', name="c")),
                prepared(spec_over(tmp_path, f'csv("{packed.name}")')))


@pytest.mark.parametrize("ending", [".gz", ".zst"])
def test_a_bad_row_of_a_compressed_csv_is_reported_at_its_line_and_column(tmp_path, ending):
    rows = "user,item,rating\n" + "".join(f"{k},{k % 7},{k % 5 + 1}\n" for k in range(5000))
    (tmp_path / "r.csv").write_text(rows.replace("\n4321,", "\n4321,x,", 1).replace("\n2500,3,1\n", "\n2500,3,?\n"))
    packed = compressed(tmp_path / "r.csv", ending)
    with pytest.raises(DataError) as plain:
        prepared(spec_over(tmp_path, 'csv("r.csv")', name="c"))
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, f'csv("{packed.name}")'))
    assert str(plain.value) == f"{tmp_path / 'r.csv'}:4323: error[D103]: expected 3 fields, found 4"
    assert str(err.value) == str(plain.value).replace("r.csv:", f"{packed.name}:")


def test_a_bad_value_of_a_compressed_csv_is_reported_at_its_line_and_column(tmp_path):
    rows = "user,item,rating\n" + "".join(f"{k},{k % 7},{k % 5 + 1}\n" for k in range(5000))
    (tmp_path / "r.csv").write_text(rows.replace("\n2500,1,1\n", "\n2500,1,?\n"))
    packed = compressed(tmp_path / "r.csv", ".gz")
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, f'csv("{packed.name}")'))
    assert str(err.value) == (f"{packed}:2502: error[D104]: column 'rating': expected a number, found '?' "
                              "(a missing-value marker? say csv(..., missing=[\"?\"]))")


@pytest.mark.parametrize("ending", [".gz", ".zst"])
def test_a_damaged_compressed_csv_is_an_error_at_the_line_it_reached(tmp_path, ending):
    rows = "user,item,rating\n" + "".join(f"{k},{k % 7},{k % 5 + 1}\n" for k in range(200_000))
    (tmp_path / "r.csv").write_text(rows)
    packed = compressed(tmp_path / "r.csv", ending)
    data = packed.read_bytes()
    packed.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError) as err:
        prepared(spec_over(tmp_path, f'csv("{packed.name}")'))
    codec = "gzip" if ending == ".gz" else "Zstandard"
    assert f"error[D102]: cannot be decompressed as {codec}, as its name asks: the file is damaged, cut short" \
        in str(err.value)
    line = int(str(err.value).split(":")[1])
    assert 1000 < line < 200_000


def test_predict_and_evaluate_read_a_compressed_csv(ratings_dir, tmp_path):
    copy = tmp_path / "ratings.csv"
    copy.write_bytes((ratings_dir / "ratings.csv").read_bytes())
    spec = _parquet_collab_from(tmp_path, copy)
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", str(spec), "--out", str(out), "--quiet"]) == 0
    packed = compressed(copy, ".gz")
    results = {}
    for name in (copy, packed):
        assert main(["predict", str(out / "model.onnx"), str(name), "--out", str(tmp_path / f"{name.name}.out")]) == 0
        results[name.name] = (tmp_path / f"{name.name}.out").read_text()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["evaluate", str(out / "model.onnx"), str(name), "--split", "valid"]) == 0
        results[name.name + " evaluate"] = buf.getvalue()
    assert results["ratings.csv"] == results["ratings.csv.gz"] and results["ratings.csv"].count("\n") == 3001
    evaluated = results["ratings.csv.gz evaluate"].replace("ratings.csv.gz", "ratings.csv")  # the file's name aside
    assert results["ratings.csv evaluate"] == evaluated
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def _parquet_collab_from(folder: Path, csv: Path) -> Path:
    """A one-epoch collab spec trained from the Parquet form of `csv`."""
    as_parquet(csv, folder / "ratings.parquet")
    return _parquet_collab(folder, "fit_one_cycle(epochs=1, lr=1e-2)")


# --------------------------------------------------------------------------- the commands

def test_check_reads_no_torch_and_show_data_reads_parquet(tmp_path):
    pq.write_table(pa.table({"user": [1, 2, 3, 4, 5], "item": [1, 2, 1, 2, 1], "rating": [1.0, 2, 3, 4, 5]}),
                   tmp_path / "t.parquet")
    path = spec_over(tmp_path, 'parquet("t.parquet")')
    code = ("import sys; from specc.commands.cli import main; rc = main(['check', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.splitlines()[-1] == "0 False", done.stderr
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["show", str(path), "--stage", "data"]) == 0
    assert "4 training and 1 validation rows" in buf.getvalue()


if __name__ == "__main__":
    write_fixtures(FIXTURES)


def test_a_missing_whole_number_id_in_the_validation_rows_exports_as_the_unknown_id(tmp_path, capsys):
    """A null id of a whole-number category column that only validation rows hold is the unknown category, in
    training and in the export's check against torch (which fed it to int() and showed a traceback)."""
    rng = np.random.default_rng(0)
    users = [None if k == 5 else int(u) for k, u in enumerate(rng.integers(1, 30, 400))]
    pq.write_table(pa.table({"user": pa.array(users, pa.int64()), "item": rng.integers(1, 20, 400),
                             "rating": rng.normal(3, 1, 400)}), tmp_path / "r.parquet")
    (tmp_path / "p.spec").write_text('data {\n    source = parquet("r.parquet")\n    inputs = [user: category, '
                                     'item: category]\n    target = rating: float\n    valid  = rows(0, 100)\n}\n'
                                     'model {\n    out = dot(embedding(user, 3), embedding(item, 3))\n}\n'
                                     'train {\n    loss = mse\n    fit(epochs=1, lr=1e-2)\n}\n')
    assert main(["train", str(tmp_path / "p.spec"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    from specc.inference.session import Session

    session = Session(tmp_path / "run" / "model.onnx", device="cpu")
    unknown = session.run({"user": np.array([10**9], np.int64), "item": np.array([3], np.int64)})["rating"]
    assert np.isfinite(unknown).all()
