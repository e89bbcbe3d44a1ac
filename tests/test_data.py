"""Data: reading, splitting and vocabularies, with the exact error messages."""

import numpy as np
import pytest

from specc.data.prepare import Vocab, prepare
from specc.data.split import split_rows
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import RandomSplit, RowSplit
from specc.training.run import load_spec
from helpers import collab_over, collab_spec, ratings_rows


def test_vocab_orders_integer_ids_numerically_and_maps_unseen_to_zero():
    v = Vocab.fit("user", ["10", "2", "07", "2", "7"])
    assert v.integer and v.values == ("2", "7", "10") and v.counts == (2, 2, 1) and v.size == 4
    assert v.lookup(["7", "10", "2", "99", "007"]).tolist() == [2, 3, 1, 0, 2]
    assert v.lookup([10, 5]).tolist() == [3, 0]


def test_vocab_of_strings():
    v = Vocab.fit("item", ["b", "a", "b", "c"])
    assert not v.integer and v.values == ("a", "b", "c") and v.counts == (1, 2, 1)
    assert v.lookup(["c", "zzz", "a"]).tolist() == [3, 0, 1]
    assert Vocab.from_json(v.to_json()) == v


def test_random_split_is_seeded_and_disjoint():
    train, valid = split_rows(1000, RandomSplit(0.1, 42), "f.csv")
    assert len(valid) == 100 and len(train) == 900
    assert not set(train) & set(valid) and set(train) | set(valid) == set(range(1000))
    again, valid_again = split_rows(1000, RandomSplit(0.1, 42), "f.csv")
    assert (valid == valid_again).all()
    assert not (valid == split_rows(1000, RandomSplit(0.1, 43), "f.csv")[1]).all()


def test_row_split():
    train, valid = split_rows(10, RowSplit(7, None), "f.csv")
    assert valid.tolist() == [7, 8, 9] and train.tolist() == list(range(7))
    train, valid = split_rows(10, RowSplit(2, 4), "f.csv")
    assert valid.tolist() == [2, 3] and train.tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    with pytest.raises(DataError, match=r"rows\(10, ...\): the file has only 10 rows"):
        split_rows(10, RowSplit(10, None), "f.csv")


def _spec_over(tmp_path, csv_text: str):
    spec, _ = load_spec(collab_over(tmp_path, csv_text))
    return spec


def _data_error(tmp_path, csv_text: str) -> str:
    spec = _spec_over(tmp_path, csv_text)
    with pytest.raises(DataError) as err:
        prepare(spec.data, spec.model.inputs)
    return str(err.value).replace(str(tmp_path), "TMP")


def test_prepare_encodes_train_and_valid(tmp_path):
    spec = _spec_over(tmp_path, "user,item,rating\n" + ratings_rows(10, 10))
    p = prepare(spec.data, spec.model.inputs)
    assert p.n_train == 80 and p.n_valid == 20
    assert p.train["user"].dtype == np.int64 and p.train["rating"].dtype == np.float32
    assert p.train["user"].min() >= 1 and p.vocabs["user"].size <= 11
    assert sorted(p.raw_valid) == ["item", "rating", "user"]


def test_data_error_messages(tmp_path):
    assert _data_error(tmp_path, "") == "TMP/r.csv: error[D122]: the file is empty"
    assert _data_error(tmp_path, "user,item,rating\n") == "TMP/r.csv: error[D122]: the file has no data rows"
    assert _data_error(tmp_path, "user,item,rating\n1,2,3\n4,5\n") == \
        "TMP/r.csv:3: error[D103]: expected 3 fields, found 2"
    assert _data_error(tmp_path, "user,item,rating\n1,2,3\n4,5,x\n") == \
        "TMP/r.csv:3: error[D104]: column 'rating': expected a number, found 'x'"
    assert _data_error(tmp_path, "user,item,rating\n1,2,3\n4,5,nan\n") == \
        "TMP/r.csv:3: error[D105]: column 'rating': expected a finite number, found a missing value (NaN)"
    # what Python's csv module cannot parse: a D123 (once a D102), in the header or a row
    assert _data_error(tmp_path, "user,item," + "r" * 140_000 + "\n1,2,3\n") == \
        "TMP/r.csv:1: error[D123]: cannot be parsed: field larger than field limit (131072)"
    assert _data_error(tmp_path, 'user,item,rating\n1,"2,3\n4,5,6\n') == \
        "TMP/r.csv:3: error[D123]: cannot be parsed: unexpected end of data"


def test_missing_file_is_reported_at_the_line_that_names_it(tmp_path):
    spec, _ = load_spec(collab_spec(tmp_path, data="nowhere.csv"))
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    assert err.value.render() == (
        f"{tmp_path}/tiny.spec:2:18: error[E208]: data file not found: {tmp_path}/nowhere.csv\n"
        '  2 |     source = csv("nowhere.csv")\n'
        "    |                  ^~~~~~~~~~~~~\n"
        "  = note: a path in a spec is relative to the spec's folder; one given with --set, to the working folder")


def test_header_without_a_spec_column_points_at_the_spec(tmp_path):
    spec = _spec_over(tmp_path, "user,movie,rating\n1,2,3\n")
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    text = err.value.render().replace(str(tmp_path), "TMP")
    assert text == (
        "TMP/tiny.spec:3:31: error[E205]: column 'item' is not in r.csv\n"
        "  3 |     inputs = [user: category, item: category]\n"
        "    |                               ^~~~~~~~~~~~~~\n"
        "  = note: r.csv has the columns: user, movie, rating"
    )


def test_wrong_delimiter_says_what_the_header_looks_like(tmp_path):
    spec = _spec_over(tmp_path, "user;item;rating\n1;2;3\n")
    with pytest.raises(SpecError) as err:
        prepare(spec.data, spec.model.inputs)
    lines = err.value.render().replace(str(tmp_path), "TMP").splitlines()
    assert lines[0] == "TMP/tiny.spec:3:15: error[E205]: column 'user' is not in r.csv"
    assert "  = note: the header looks ';'-separated: csv(..., delimiter=\";\")" in lines


def test_infinite_feature_or_target(tmp_path):
    assert _data_error(tmp_path, "user,item,rating\n1,2,3\n4,5,inf\n") == \
        "TMP/r.csv:3: error[D105]: column 'rating': expected a finite number, found inf"
