"""Set columns (`tags: categories(sep="|")`) and float vectors of several columns (`float(columns=[...])`):
read from CSV, Parquet, JSON Lines and .npz alike, a vocabulary fitted on the training rows, embedding_bag's
reductions against the sums written out by hand, training whose loss falls, the exported model's (N, L) input
against torch through `specc predict`, and every misuse and hostile file a clear error."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import prepared_spec, trained

from specc.commands.cli import main
from specc.data.prepare import Vocab, prepare
from specc.data.sets import encode_sets, sets_array, split_texts
from specc.export import parity, parity_rows, to_onnx
from specc.inference.columns import padded_sets
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import CATEGORIES, SET_MAX
from specc.training.run import load_spec

TAGS = ["a", "b", "c", "d", "e", "f", "g"]

SPEC = """\
data {{
    source = {source}
    inputs = [user: category, tags: categories({args}), genres: float(columns=[action, drama])]
    target = rating: float
    valid  = random(0.2, seed=0)
    batch  = 16
}}
model {{
    t   = embedding_bag(tags, 4, mode={mode})
    out = concat(embedding(user, 3), t, genres) |> linear(1)
}}
train {{
    loss = mse
    fit(epochs={epochs}, lr=1e-2)
    seed = 3
}}
"""


def rows(n=240, seed=0):
    """(user, tags, action, drama, rating) rows: the rating grows with the set's size and its ids."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        tags = [TAGS[i] for i in rng.choice(len(TAGS), int(rng.integers(0, 4)), replace=False)]
        if k % 7 == 0 and tags:
            tags.append(tags[0])  # an id given twice: counts once
        action, drama = round(float(rng.random()), 3), round(float(rng.random()), 3)
        rating = 1 + sum(TAGS.index(t) for t in set(tags)) / 4 + 2 * action - drama
        out.append((int(rng.integers(1, 12)), tags, action, drama, round(rating, 3)))
    return out


def write_csv(folder, data=None, name="m.csv"):
    lines = ["user,tags,action,drama,rating"] + [f"{u},{'|'.join(t)},{a},{d},{r}" for u, t, a, d, r in data or rows()]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def write_parquet(folder, data=None, name="m.parquet"):
    data = data or rows()
    pq.write_table(pa.table({"user": [r[0] for r in data], "tags": pa.array([r[1] for r in data], pa.list_(pa.string())),
                             "action": [r[2] for r in data], "drama": [r[3] for r in data],
                             "rating": [r[4] for r in data]}), folder / name)
    return folder / name


def spec_file(folder, source='csv("m.csv")', mode="mean", args='sep="|"', epochs=2, name="sets.spec"):
    path = folder / name
    path.write_text(SPEC.format(source=source, mode=mode, args=args, epochs=epochs))
    return path


# ---------------------------------------------------------------- reading and encoding


def test_a_field_is_split_at_sep_empty_ids_dropped():
    got = split_texts(["a|b", "", "||", "b|a|a", " x | y "], "|", strip=True)
    assert list(got) == [("a", "b"), (), (), ("b", "a", "a"), ("x", "y")]


def test_the_encoding_counts_an_id_once_and_drops_unknown_ids():
    vocab = Vocab.fit("tags", np.array(["a", "b", "c"], dtype=object))
    sets = sets_array([("c", "a"), (), ("b", "b", "b"), ("zzz",), ("zzz", "a")])
    assert encode_sets(vocab, sets).tolist() == [[1, 3], [0, 0], [2, 0], [0, 0], [1, 0]]


def test_the_declaration_and_its_defaults(tmp_path):
    write_csv(tmp_path)
    spec, _ = load_spec(spec_file(tmp_path, args=""))
    tags, genres = spec.data.inputs[1], spec.data.inputs[2]
    assert (tags.kind, tags.sep, tags.max_size) == (CATEGORIES, "|", SET_MAX)
    assert (genres.shape, genres.parts) == ((2,), ("action", "drama"))
    spec, _ = load_spec(spec_file(tmp_path, args='sep=";", max_size=9'))
    assert (spec.data.inputs[1].sep, spec.data.inputs[1].max_size) == (";", 9)


def test_float_columns_read_as_the_columns_read_one_by_one(tmp_path):
    data = rows()
    write_csv(tmp_path, data)
    spec, prepared, _ = prepared_spec(spec_file(tmp_path))
    by_hand = np.array([[a, d] for _, _, a, d, _ in data], dtype=np.float32)
    n = prepared.n_train + prepared.n_valid
    got = np.concatenate([prepared.train["genres"], prepared.valid["genres"]])
    assert got.shape == (n, 2)
    # the rows of both splits, each the pair of its own line (the split draws rows, the pairs stay whole)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, by_hand.tolist()))
    assert {tuple(r) for r in prepared.valid["genres"].tolist()} <= {tuple(r) for r in by_hand.tolist()}


def test_the_vocabulary_is_the_training_rows_and_each_row_its_distinct_ids(tmp_path):
    data = rows()
    write_csv(tmp_path, data)
    spec, prepared, _ = prepared_spec(spec_file(tmp_path))
    vocab = prepared.vocabs["tags"]
    matrix = prepared.train["tags"]
    assert matrix.dtype == np.int64 and matrix.shape[1] == 3  # at most 3 distinct ids a row in these rows
    for row in matrix.tolist():
        ids = [i for i in row if i]
        assert ids == sorted(set(ids)) and row[len(ids):] == [0] * (len(row) - len(ids))
    # the counts are the training rows holding each id, an id given twice in a row counted once
    raw = prepare(spec.data, spec.model.inputs)
    assert sum(vocab.counts) == int((raw.train["tags"] > 0).sum())


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("mode", ["mean", "sum", "sqrtn"])
def test_the_bag_reduces_as_the_sums_written_out_do(tmp_path, mode):
    write_csv(tmp_path)
    spec, prepared, model, _ = trained(spec_file(tmp_path, mode=mode))
    items = torch.from_numpy(prepared.valid["tags"])
    weight = model.t.weight.detach()
    with torch.no_grad():
        got = model.t(items)
    for k, row in enumerate(items.tolist()):
        ids = [i for i in row if i]
        total = weight[ids].sum(dim=0) if ids else torch.zeros(4)
        want = {"sum": total, "mean": total / max(1, len(ids)), "sqrtn": total / max(1, len(ids)) ** 0.5}[mode]
        torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-7)
    empty = torch.zeros(1, 3, dtype=torch.int64)
    assert not model.t(empty).any()  # an empty set: zeros
    if mode == "sum":  # and torch's own bag, the same weights
        bag = torch.nn.EmbeddingBag.from_pretrained(weight, mode="sum", padding_idx=0)
        torch.testing.assert_close(got, bag(items), rtol=1e-6, atol=1e-7)


def test_training_from_csv_lowers_the_loss(tmp_path):
    write_csv(tmp_path, rows(600))
    _, _, _, history = trained(spec_file(tmp_path, epochs=6))
    losses = [r.train_loss for r in history.records]
    assert losses[-1] < 0.5 * losses[0]


def test_parquet_lists_and_csv_fields_train_bit_identical_weights(tmp_path):
    data = rows()
    write_csv(tmp_path, data)
    write_parquet(tmp_path, data)
    a = trained(spec_file(tmp_path, name="a.spec"))[2].state_dict()
    b = trained(spec_file(tmp_path, source='parquet("m.parquet")', name="b.spec"))[2].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_json_lines_arrays_and_npz_padded_arrays_read_as_csv_fields(tmp_path):
    data = rows()
    write_csv(tmp_path, data)
    with open(tmp_path / "m.jsonl", "w") as f:
        for u, t, a, d, r in data:
            f.write(json.dumps({"user": u, "tags": t, "action": a, "drama": d, "rating": r}) + "\n")
    width = max(len(t) for _, t, _, _, _ in data)
    np.savez(tmp_path / "m.npz", user=np.array([r[0] for r in data]), action=np.array([r[2] for r in data]),
             drama=np.array([r[3] for r in data]), rating=np.array([r[4] for r in data]),
             tags=np.array([t + [""] * (width - len(t)) for _, t, _, _, _ in data]))
    want = prepared_spec(spec_file(tmp_path, name="a.spec"))[1]
    for source in ('jsonl("m.jsonl")', 'npz("m.npz")'):
        got = prepared_spec(spec_file(tmp_path, source=source, name="b.spec"))[1]
        assert np.array_equal(got.train["tags"], want.train["tags"]), source
        assert got.vocabs["tags"] == want.vocabs["tags"]


def test_onnx_matches_torch_through_predict_on_the_csv(tmp_path, capsys):
    data = rows()
    path = write_csv(tmp_path, data)
    spec, prepared, model, _ = trained(spec_file(tmp_path, mode="sqrtn"))
    proto = to_onnx(spec, model.eval(), prepared.vocabs)
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5
    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == ["user", "tags", "genres"]
    assert [d.dim_param or d.dim_value for d in inputs["genres"].type.tensor_type.shape.dim] == ["N", 2]
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "model.onnx"), str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    got = np.array([float(line.rsplit(",", 1)[1]) for line in out[1:]])
    vocab = prepared.vocabs["tags"]
    with torch.no_grad():
        want = model(torch.from_numpy(prepared.vocabs["user"].lookup(np.array([r[0] for r in data]))),
                     torch.from_numpy(encode_sets(vocab, sets_array([tuple(r[1]) for r in data]))),
                     torch.tensor([[r[2], r[3]] for r in data], dtype=torch.float32))[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_exported_model_counts_a_repeated_id_once_and_skips_padding(tmp_path):
    write_csv(tmp_path)
    spec, prepared, model, _ = trained(spec_file(tmp_path, mode="sum"))
    from specc.inference.session import Session

    session = Session(to_onnx(spec, model.eval(), prepared.vocabs).SerializeToString(), device="cpu")
    feed = {"user": np.array([1, 1, 1]), "genres": np.zeros((3, 2), np.float32),
            "tags": np.array([["a", "b", "", ""], ["b", "a", "a", "b"], ["a", "", "zzz", "b"]], dtype=object)}
    got = session.run(feed)["rating"]
    assert got[0] == pytest.approx(got[1], abs=1e-6) and got[0] == pytest.approx(got[2], abs=1e-6)


def test_predict_pads_the_sets_it_reads(tmp_path):
    def fail(k, message, code):
        raise AssertionError(message)
    got = padded_sets(sets_array([("3", "1", "3"), (), ("7",)]), True, fail)
    assert got.tolist() == [[3, 1], [-1, -1], [7, -1]]
    assert padded_sets(sets_array([("x",), ()]), False, fail).tolist() == [["x"], [""]]


# ---------------------------------------------------------------- misuse, at the spec's line


@pytest.mark.parametrize("change, message", [
    (('categories(sep="|")', 'categories(sep="|", size=3)'), "categories has no argument 'size'"),
    (('categories(sep="|")', 'categories(sep="||")'), "sep must be one character, found 2 ('||')"),
    (('categories(sep="|")', 'categories(sep=",")'), "the set separator ',' of 'tags' is the file's delimiter"),
    (('categories(sep="|")', 'categories("|")'), "categories takes its arguments by name: sep and max_size"),
    (('categories(sep="|")', 'categories(max_size=0)'), "max_size"),
    (("rating: float", 'rating: categories(sep="|")'), "a categories column (a set of ids per row) is an input "
                                                        "or a table's column, not the target"),
    (("embedding_bag(tags, 4, mode=mean)", "embedding(tags, 4)"),
     "embedding: 'tags' is a categories column; expected a category column"),
    (("concat(embedding(user, 3), t, genres)", "concat(embedding(user, 3), tags, genres)"),
     "'tags' is a categories column (a set per row); use it through an embedding_bag"),
    (("float(columns=[action, drama])", "float(columns=[])"),
     "columns: expected a list of column names, found an empty list"),
    (("float(columns=[action, drama])", "float(columns=[action, action])"), "column 'action' is named twice"),
    (("float(columns=[action, drama])", "float(columns=[action, user])"),
     "column 'user' of float(columns=[...]) is an input too"),
    (("float(columns=[action, drama])", "float(columns=[action, rating])"),
     "column 'rating' of float(columns=[...]) is the target too"),
    (("float(columns=[action, drama])", "float(2, columns=[action, drama])"),
     "float takes a shape, as in float(784), or columns=[...] alone"),
])
def test_what_the_checker_refuses(tmp_path, capsys, change, message):
    write_csv(tmp_path)
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace(*change))
    assert main(["check", "--no-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "sets.spec:" in err


# ---------------------------------------------------------------- hostile data


def _prepared_error(folder, text: bytes | str, spec_args=None):
    path = folder / "m.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    spec, _ = load_spec(spec_file(folder, **(spec_args or {})))
    with pytest.raises((DataError, SpecError)) as info:
        prepare(spec.data, spec.model.inputs)
    return str(info.value)


HEADER = "user,tags,action,drama,rating\n"
GOOD = "".join(f"{k},a|b,0.5,0.5,3\n" for k in range(1, 12))


def test_empty_fields_and_fields_of_separators_alone_are_empty_sets(tmp_path):
    write_csv(tmp_path)
    (tmp_path / "m.csv").write_text(HEADER + GOOD + "".join(f"{k},,0.1,0.2,1\n{k},||,0.1,0.2,1\n" for k in range(9)))
    spec, prepared, _ = prepared_spec(spec_file(tmp_path))
    empty = (np.concatenate([prepared.train["tags"], prepared.valid["tags"][:, :2]]) == 0).all(axis=1).sum()
    assert empty == 18


@pytest.mark.parametrize("text, wanted", [
    (HEADER + GOOD + "12,a|b,0.5", ":13: error[D103]: expected 5 fields, found 3"),  # cut short
    (HEADER.encode() + GOOD.encode() + b"12,a|\xff,0.5,0.5,3\n", ":13: error[D121]: column 'tags'"),
    (HEADER + GOOD + "12," + "|".join(map(str, range(1_000_000))) + ",0.5,0.5,3\n",
     "error[D130]: column 'tags': data row 12: a set of 1,000,000 distinct ids, more than the column's max_size (256)"),
    (HEADER + GOOD + "12," + "|".join(map(str, range(300))) + ",0.5,0.5,3\n",
     ":13: error[D130]: column 'tags': a set of 300 distinct ids, more than the column's max_size (256)"),
    (HEADER + GOOD + "12,a,0.5,lots,3\n", ":13: error[D104]: column 'drama': expected a number, found 'lots'"),
    ("user,tags,action,rating\n1,a,0.5,3\n", "column 'drama' is not in m.csv"),
    (HEADER + "".join(f"{k},-1|4,0.5,0.5,3\n" for k in range(1, 12)), "column 'tags': the id -1 in a set"),
])
def test_hostile_text_is_a_clear_error_at_its_line_and_column(tmp_path, text, wanted):
    assert wanted in _prepared_error(tmp_path, text)


def test_a_set_within_a_raised_max_size_is_read(tmp_path):
    write_csv(tmp_path)
    many = "|".join(f"t{k}" for k in range(300))
    (tmp_path / "m.csv").write_text(HEADER + GOOD + f"12,{many},0.5,0.5,3\n" * 3)
    spec, prepared, _ = prepared_spec(spec_file(tmp_path, args='max_size=300'))
    assert max(prepared.train["tags"].shape[1], prepared.valid["tags"].shape[1]) == 300


@pytest.mark.parametrize("column, wanted", [
    (pa.array([[1.5, 2.0]] * 12, pa.list_(pa.float64())), "column 'tags' is declared categories, but m.parquet "
                                                          "holds lists of floating-point numbers"),
    (pa.array([[["a"]]] * 12, pa.list_(pa.list_(pa.string()))), "holds lists nested 2 deep"),
    (pa.array([3] * 12, pa.int64()), "holds one id a row"),
    (pa.array([["a", None]] + [["b"]] * 11, pa.list_(pa.string())), "m.parquet: error[D104]: column 'tags': row 1: a null id in "
                                                                     "a list"),
])
def test_hostile_parquet_is_a_clear_error(tmp_path, column, wanted):
    pq.write_table(pa.table({"user": list(range(12)), "tags": column, "action": [0.5] * 12, "drama": [0.5] * 12,
                             "rating": [3.0] * 12}), tmp_path / "m.parquet")
    spec, _ = load_spec(spec_file(tmp_path, source='parquet("m.parquet")'))
    with pytest.raises((DataError, SpecError)) as info:
        prepare(spec.data, spec.model.inputs)
    assert wanted in str(info.value) or wanted in "\n".join(d.message for d in getattr(info.value, "diagnostics", ()))


def test_a_null_parquet_list_is_the_empty_set(tmp_path):
    pq.write_table(pa.table({"user": list(range(12)), "tags": pa.array([None, ["a"]] * 6, pa.list_(pa.string())),
                             "action": [0.5] * 12, "drama": [0.5] * 12, "rating": [3.0] * 12}), tmp_path / "m.parquet")
    spec, prepared, _ = prepared_spec(spec_file(tmp_path, source='parquet("m.parquet")'))
    both = np.concatenate([prepared.train["tags"], prepared.valid["tags"]])
    assert sorted(both[:, 0].tolist()) == [0] * 6 + [1] * 6


def test_serve_reads_a_set_as_an_array_or_as_text_and_runs_it_as_predict_does(tmp_path):
    from specc.inference.serve import read_request
    from specc.inference.session import Session

    write_csv(tmp_path)
    spec, prepared, model, _ = trained(spec_file(tmp_path, mode="sum"))
    session = Session(to_onnx(spec, model.eval(), prepared.vocabs).SerializeToString(), device="cpu")
    body = [{"user": 1, "tags": ["a", "b", "a"], "genres": [0.5, 0.2]},
            {"user": 1, "tags": "b|a", "genres": [0.5, 0.2]}, {"user": 1, "tags": None, "genres": [0.5, 0.2]}]
    request, _ = read_request(session, json.dumps(body).encode(), 100)
    assert request.feed["tags"].tolist() == [["a", "b"], ["b", "a"], ["", ""]]
    got = session.run(request.feed)["rating"]
    assert got[0] == pytest.approx(got[1], abs=1e-6) and got[2] != pytest.approx(got[0], abs=1e-6)
