"""Side tables (`table NAME { source, key, columns }` in the data block): each row of the data takes its
key's row of the table, a key the table lacks the column's fill; the exported model holds the tables and
takes only the keys. Oracles: the columns built by hand from the CSV files, the exported model against the
torch model fed those hand-built columns, recommenders ranked by onnxruntime as training ranked them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers import prepared_spec, trained

from specc.commands.cli import main
from specc.export import to_onnx
from specc.inference.session import Session

SPEC = """\
data {{
    source = csv("ratings.csv")
    inputs = [user: category, item: category]
    target = rating: float
    valid  = random(0.2, seed=0)
    batch  = 32
    table users {{
        source  = csv("{users}")
        key     = user
        columns = [age: float(fill=40), job: category]
    }}
    table items {{
        source  = csv("items.csv")
        key     = item
        columns = [genre: category(fill="x")]
    }}
}}
model {{
    {model}
}}
train {{
    loss    = mse
    metrics = [rmse]
    fit_one_cycle(epochs=3, lr=1e-2)
    seed    = 0
}}
"""
MODEL = ("h   = concat(embedding(user, 3), embedding(item, 3), embedding(job, 2), embedding(genre, 2), age / 50)\n"
         "    out = h |> linear(6) |> relu |> linear(1)")
AGES = {u: 18 + (7 * u) % 50 for u in range(1, 31)}  # users 28-30 are not in users.csv; 31 is in it alone
JOBS = {u: "abc"[u % 3] for u in range(1, 32)}
GENRES = {i: "xyz"[i % 3] for i in range(1, 19)}  # items 19 and 20 are not in items.csv


def files(folder, users_csv="users.csv"):
    rng = np.random.default_rng(0)
    with open(folder / "users.csv", "w") as f:
        f.write("user,age,job\n" + "".join(f"{u},{AGES.get(u, 33)},{JOBS[u]}\n" for u in [*range(1, 28), 31]))
    (folder / "items.csv").write_text("item,title,genre\n" + "".join(f"{i},Film {i},{g}\n" for i, g in GENRES.items()))
    rows = []
    for _ in range(500):
        u, i = int(rng.integers(1, 31)), int(rng.integers(1, 21))
        rows.append((u, i, round(3 + (AGES[u] > 40) - (GENRES.get(i) == "x") + rng.normal(0, 0.3), 2)))
    (folder / "ratings.csv").write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    path = folder / "side.spec"
    path.write_text(SPEC.format(users=users_csv, model=MODEL))
    return path, rows


def _by_hand(prepared, users, items):
    """The model's inputs for raw (user, item) rows, from the tables as written above: a user the table lacks
    gets age 40 and the unknown job; an item it lacks, genre 'x'."""
    vocabs = prepared.vocabs
    in_table = {*range(1, 28), 31}
    age = np.array([AGES.get(u, 33) if u in in_table else 40 for u in users], np.float32)
    jobs = [JOBS[u] if u in in_table else None for u in users]
    job = np.array([vocabs["job"].lookup([j])[0] if j is not None else 0 for j in jobs])
    genre = vocabs["genre"].lookup([GENRES.get(i, "x") for i in items])
    return {"user": vocabs["user"].lookup(users), "item": vocabs["item"].lookup(items), "job": job, "genre": genre,
            "age": age}


def test_each_row_takes_its_key_s_row_of_the_table_or_the_fill(tmp_path):
    path, rows = files(tmp_path)
    spec, prepared, _ = prepared_spec(path)
    users = [int(prepared.vocabs["user"].values[k - 1]) for k in prepared.train["user"]]
    items = [int(prepared.vocabs["item"].values[k - 1]) for k in prepared.train["item"]]
    want = _by_hand(prepared, users, items)
    for name in ("age", "job", "genre"):
        np.testing.assert_array_equal(prepared.train[name], want[name], err_msg=name)
    # a category's vocabulary is its values in the training rows: the fill 'x' among them, no job of user 31
    assert set(prepared.vocabs["genre"].values) == {"x", "y", "z"} and set(prepared.vocabs["job"].values) <= set("abc")
    assert 28 in users and not any(k == 0 for k in prepared.train["user"])
    # the memory estimate holds the tables' columns by key beside the splits
    from dataclasses import replace

    from specc.model.plan import data_bytes

    extra = sum(side.values.nbytes for side in prepared.sides.values())
    assert data_bytes(prepared) - data_bytes(replace(prepared, sides=None)) == extra > 0


@pytest.mark.parametrize("key", ['data.users.source.path="people.csv"', 'data.users.source=csv("people.csv")'])
def test_set_gives_a_side_table_another_file(tmp_path, monkeypatch, key):
    path, _ = files(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    people = {u: 60 + u for u in range(1, 32)}  # every user, ages the spec's own users.csv does not have
    (tmp_path / "elsewhere" / "people.csv").write_text(
        "user,age,job\n" + "".join(f"{u},{a},c\n" for u, a in people.items()))
    monkeypatch.chdir(tmp_path / "elsewhere")  # a --set path starts from the working folder
    spec, prepared, _ = prepared_spec(path, [key])
    users = [int(prepared.vocabs["user"].values[k - 1]) for k in prepared.train["user"]]
    np.testing.assert_array_equal(prepared.train["age"], np.array([people[u] for u in users], np.float32))
    assert set(prepared.vocabs["job"].values) == {"c"}
    assert spec.data.tables[0].source.path.name == "people.csv"  # the other table keeps its own file
    assert spec.data.tables[1].source.path == tmp_path / "items.csv"


def test_set_names_a_side_table_s_keys_when_one_is_wrong(tmp_path, capsys):
    path, _ = files(tmp_path)
    assert main(["check", str(path), "--set", "data.users.sorce.path=\"x.csv\""]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'data.users.sorce.path'" in err and "did you mean 'data.users.source.path'" in err
    assert main(["check", str(path), "--set", "data.users.batch=3"]) == 1  # a data setting, not a table's
    assert "unknown key 'data.users.batch'" in capsys.readouterr().err
    assert main(["check", str(path), "--set", "data.users.key=item"]) == 1  # the table has no column 'item'
    assert "column 'item' is not in users.csv" in capsys.readouterr().err


def test_the_exported_model_takes_the_keys_alone_and_looks_the_tables_up(tmp_path):
    path, rows = files(tmp_path)
    spec, prepared, model, _ = trained(path)
    proto = to_onnx(spec, model, prepared.vocabs, prepared.sides)
    assert [i.name for i in proto.graph.input] == ["user", "item"]
    # rows of known users and items, a user and an item the tables lack (28, 19), a user never in the
    # training rows but in its table (31), a user and an item in neither (99, 77)
    users = [u for u, _, _ in rows[:20]] + [28, 31, 99, 1]
    items = [i for _, i, _ in rows[:20]] + [19, 2, 5, 77]
    got = Session(proto.SerializeToString(), device="cpu").run(
        {"user": np.array(users, np.int64), "item": np.array(items, np.int64)})["rating"]
    inputs = _by_hand(prepared, users, items)
    with torch.no_grad():
        want = model.eval()(*[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.model.inputs])[:, 0]
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)
    # user 31's age is the table's (33), not the fill (40): the prediction differs from an unknown user's
    assert got[-3] != got[-2]


def test_predict_reads_the_keys_from_a_file_without_the_side_columns(tmp_path, capsys):
    path, _ = files(tmp_path)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (tmp_path / "ask.csv").write_text("user,item\n3,4\n28,19\n")
    assert main(["predict", str(tmp_path / "run" / "model.onnx"), str(tmp_path / "ask.csv")]) == 0
    out = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert out[0] == ["user", "item", "rating"] and len(out) == 3
    spec, prepared, _ = prepared_spec(path)
    assert main(["evaluate", str(tmp_path / "run" / "model.onnx"), str(tmp_path / "ratings.csv"), "--split",
                 "valid"]) == 0
    last = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))[-1]
    assert f"{float(last['rmse']):.5f}" in capsys.readouterr().out


def test_a_model_may_read_a_table_s_column_and_not_its_key(tmp_path, capsys):
    path, _ = files(tmp_path)
    path.write_text(SPEC.format(users="users.csv", model="out = concat(embedding(item, 3), age / 50) |> linear(1)"))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "'user' is not used" not in err and "'job' is not used" in err  # the key is what the model takes
    session = Session((tmp_path / "run" / "model.onnx").read_bytes(), device="cpu")
    assert sorted(session.inputs) == ["item", "user"]


RECOMMENDER = """\
data {
    source = csv("clicks.csv")
    inputs = [user: category, item: category]
    target = implicit(user, item, negatives=2, top_k=4)
    valid  = per_user(0.25, seed=0)
    batch  = 32
    table users {
        source  = csv("users.csv")
        key     = user
        columns = [age: float(fill=40), job: category]
    }
    table items {
        source  = csv("items.csv")
        key     = item
        columns = [genre: category]
    }
}
model {
    u   = concat(embedding(user, 4), embedding(job, 2), age / 50) |> linear(4)
    i   = embedding(item, 4) + embedding(genre, 4)
    out = dot(u, i)
}
train {
    loss    = bpr
    metrics = [ndcg(4), recall(4)]
    fit_one_cycle(epochs=2, lr=1e-2)
    seed    = 0
}
"""


def clicks(folder) -> None:
    """clicks.csv: each of users 1-30 a few of items 1-20."""
    rng = np.random.default_rng(1)
    (folder / "clicks.csv").write_text("user,item\n" + "".join(
        f"{u},{i}\n" for u in range(1, 31) for i in rng.permutation(np.arange(1, 21))[:int(rng.integers(4, 9))]))


def trained_as_it_evaluates(folder, text: str) -> None:
    """The recommender `text` trained into folder/run, its exported top k's `specc evaluate` on the validation
    interactions equal to training's last NDCG@4 and Recall@4."""
    from specc.inference.evaluate import evaluate_file

    (folder / "rec.spec").write_text(text)
    assert main(["train", str(folder / "rec.spec"), "--out", str(folder / "run"), "--quiet"]) == 0
    last = list(csv.DictReader(open(folder / "run" / "metrics.csv")))[-1]
    got = evaluate_file(folder / "run" / "model.onnx", folder / "clicks.csv", split="valid", device="cpu")
    for metric in ("ndcg@4", "recall@4"):
        assert got[metric] == pytest.approx(float(last[metric]), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("view", ["interactions", "users"])
def test_a_recommender_reads_side_tables_of_users_and_items(tmp_path, view):
    """Training ranks with the tables' columns; the exported top k (which takes only user ids) ranks the
    same: `specc evaluate` through it gives training's last metrics."""
    files(tmp_path)
    clicks(tmp_path)
    text = RECOMMENDER
    if view == "users":  # the model scores every item from the user and the user's table columns
        text = text.replace("negatives=2, top_k=4", "view=users, top_k=4").replace(
            "inputs = [user: category, item: category]",
            "inputs = [user: category, item: category, rated: history(user, item)]").replace(
            "    i   = embedding(item, 4) + embedding(genre, 4)\n    out = dot(u, i)",
            "    out = concat(u, embedding_bag(rated, 4)) |> linear(classes)").replace("bpr", "multinomial")
    trained_as_it_evaluates(tmp_path, text)
    session = Session((tmp_path / "run" / "model.onnx").read_bytes(), device="cpu")
    assert list(session.inputs) == ["user"]


# ---------------------------------------------------------------- hostile tables

HOSTILE = [
    ("empty.csv", b"", "D122", "the file is empty"),
    ("header.csv", b"user,age,job\n", "D122", "no data rows"),
    ("twice.csv", b"user,age,job\n1,30,a\n1,40,b\n", "D129", "key '1' is on rows 1 and 2"),
    ("nokey.csv", b"user,age,job\n,30,a\n2,40,b\n", "D129", "row 1 has no key"),
    ("text.csv", b"user,age,job\nu1,30,a\n2,40,b\n", "D129", "key 'u1' is not a whole number"),
    ("huge.csv", b"user,age,job\n99999999999999999999,30,a\n2,40,b\n", "D129",
     "key '99999999999999999999' is not a whole number in int64's range"),
    ("word.csv", b"user,age,job\n1,old,a\n2,40,b\n", "D104", "column 'age': expected a number, found 'old'"),
    ("short.csv", b"user,age,job\n1,3,a\n2,40\n", "D103", "expected 3 fields, found 2"),
    ("latin.csv", b"user,age,job\n1,3,\xe9\n2,40,b\n", "D121", "byte 0xe9 is not UTF-8"),
    ("other.csv", b"user,age,job\n100,3,a\n200,40,b\n", "D129", "none of its 2 keys"),
    ("nan.csv", b"user,age,job\n1,nan,a\n2,40,b\n", "D105", "expected a finite number"),
]


@pytest.mark.parametrize("name, content, code, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_table_is_a_data_error_naming_it_and_nothing_is_written(tmp_path, capsys, name, content, code, message):
    path, _ = files(tmp_path, users_csv=name)
    (tmp_path / name).write_bytes(content)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / name}" in err and f"error[{code}]" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["check", str(path)]) == 1  # check reads the data too, and says the same
    assert f"error[{code}]" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "loop", "folder", "absent"])
def test_a_table_path_that_is_no_regular_file_is_refused_at_its_source(tmp_path, capsys, kind):
    import os

    path, _ = files(tmp_path, users_csv="odd.csv")
    odd = tmp_path / "odd.csv"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "loop":
        os.symlink("odd2.csv", odd)
        os.symlink("odd.csv", tmp_path / "odd2.csv")
    elif kind == "folder":
        odd.mkdir()
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert 'source  = csv("odd.csv")' in err and "Traceback" not in err


def test_serve_answers_from_the_keys_alone_as_predict_does(tmp_path, capsys):
    """Over loopback: a request names a user and an item, nothing of the tables, and gets predict's numbers."""
    from test_serve import call, served

    path, _ = files(tmp_path)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    model = tmp_path / "run" / "model.onnx"
    (tmp_path / "ask.csv").write_text("user,item\n3,4\n28,19\n31,2\n")
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "ask.csv")]) == 0
    want = [float(line.split(",")[2]) for line in capsys.readouterr().out.splitlines()[1:]]
    with served(model) as (_, url, _):
        status, got, _ = call(url + "/predict", {"user": [3, 28, 31], "item": [4, 19, 2]})
        assert status == 200 and list(got) == ["rating"]
        assert [f"{v:.6g}" for v in got["rating"]] == [f"{v:.6g}" for v in want]
        status, schema, _ = call(url + "/schema", method="GET")
        assert status == 200 and "age" not in json.dumps(schema) and "user" in json.dumps(schema)


def test_a_table_s_column_may_be_a_vector_of_several_of_its_columns(tmp_path):
    """`flags: float(columns=[a, b, c])` in a table (MovieLens' u.item genre flags): each row takes its item's
    three numbers as one vector; the exported model holds them and still takes only the ids."""
    path, rows = files(tmp_path)
    flags = {i: (i % 2, (i // 2) % 2, float(i) / 10) for i in range(1, 16)}
    (tmp_path / "flags.csv").write_text("item,a,b,c\n" + "".join(f"{i},{a},{b},{c}\n" for i, (a, b, c) in flags.items()))
    path.write_text(SPEC.format(users="users.csv", model="out = concat(embedding(item, 3), flags) |> linear(1)").replace(
        'source  = csv("items.csv")', 'source  = csv("flags.csv")').replace(
        'columns = [genre: category(fill="x")]', "columns = [flags: float(columns=[a, b, c], fill=-1)]"))
    spec, prepared, model, _ = trained(path)
    items = [int(prepared.vocabs["item"].values[k - 1]) for k in prepared.train["item"]]
    want = np.array([flags.get(i, (-1, -1, -1)) for i in items], np.float32)
    np.testing.assert_array_equal(prepared.train["flags"], want)
    proto = to_onnx(spec, model, prepared.vocabs, prepared.sides)
    assert [i.name for i in proto.graph.input] == ["item"]
    got = Session(proto.SerializeToString(), device="cpu").run({"item": np.array([3, 19], np.int64)})["rating"]
    with torch.no_grad():
        hand = model.eval()(torch.from_numpy(prepared.vocabs["item"].lookup([3, 19])),
                            torch.tensor([flags[3], (-1, -1, -1)], dtype=torch.float32))[:, 0]
    np.testing.assert_allclose(got, hand.numpy(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- a set of categories per key

TAGS = {i: () if i % 5 == 0 else ("xyz"[i % 3], str(i % 4)) for i in range(1, 17)}  # items 17-20: not in the table
SET_MODEL = "out = concat(embedding(item, 3), embedding_bag(tags, 2, mode=sum)) |> linear(1)"


def tags_spec(path, tags=TAGS, column='tags: categories(sep="|")', sep="|"):
    """The ratings spec with the items table a set of tags per item."""
    (path.parent / "tags.csv").write_text("item,tags\n" + "".join(f"{i},{sep.join(t)}\n" for i, t in tags.items()))
    path.write_text(SPEC.format(users="users.csv", model=SET_MODEL).replace(
        'source  = csv("items.csv")', 'source  = csv("tags.csv")').replace(
        'columns = [genre: category(fill="x")]', f"columns = [{column}]"))
    return path


def _tags_by_hand(vocab, items) -> np.ndarray:
    """Each item's tags as the model takes them: the vocabulary indices of those known, in index order, padded with
    0 to the longest; an item the table lacks, none."""
    rows = [sorted(k for k in (vocab.lookup([t])[0] for t in TAGS.get(i, ())) if k > 0) for i in items]
    out = np.zeros((len(rows), max(1, max(map(len, rows)))), np.int64)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def test_a_table_s_column_may_be_a_set_of_categories(tmp_path):
    """`tags: categories(sep="|")` in a table: each row takes its item's set of tags (a key the table lacks, and
    an empty field, the empty set), its vocabulary the tags of the training rows' items; the exported model
    holds the sets by key and takes only the ids."""
    path, _ = files(tmp_path)
    spec, prepared, model, _ = trained(tags_spec(path))
    vocab = prepared.vocabs["tags"]
    items = [int(prepared.vocabs["item"].values[k - 1]) for k in prepared.train["item"]]
    assert set(vocab.values) == {t for i in set(items) for t in TAGS.get(i, ())}
    want = _tags_by_hand(vocab, items)
    got = prepared.train["tags"]
    assert got.shape[1] == want.shape[1] and np.array_equal(got, want)
    assert (got[[i > 16 or i % 5 == 0 for i in items]] == 0).all()  # no tags: the table lacks it, or its set is empty
    proto = to_onnx(spec, model, prepared.vocabs, prepared.sides)
    assert [i.name for i in proto.graph.input] == ["item"]
    asked = [3, 5, 19, 77, 1]  # tags; an empty set; not in the table; never seen anywhere; tags again
    got = Session(proto.SerializeToString(), device="cpu").run({"item": np.array(asked, np.int64)})["rating"]
    with torch.no_grad():
        hand = model.eval()(torch.from_numpy(prepared.vocabs["item"].lookup(asked)),
                            torch.from_numpy(_tags_by_hand(vocab, asked)))[:, 0]
    np.testing.assert_allclose(got, hand.numpy(), rtol=0, atol=1e-6)
    assert len(set(np.round(got, 6))) > 2, "the tags should change the predictions"


def test_a_recommender_bags_an_item_s_set_from_its_table_on_the_grid(tmp_path):
    """The item's set of tags in the item's values: ranked on the grid of users x items in training and in the
    exported top k, which ranks as training did (`specc evaluate` gives its last metrics)."""
    files(tmp_path)
    clicks(tmp_path)
    tags_spec(tmp_path / "side.spec")
    text = RECOMMENDER.replace('source  = csv("items.csv")', 'source  = csv("tags.csv")').replace(
        "columns = [genre: category]", 'columns = [tags: categories(sep="|")]').replace(
        "i   = embedding(item, 4) + embedding(genre, 4)", "i   = embedding(item, 4) + embedding_bag(tags, 4)")
    trained_as_it_evaluates(tmp_path, text)
    spec, prepared, _ = prepared_spec(tmp_path / "rec.spec")
    from specc.training.implicit import model_grid
    from specc.training.loop import build_model, interactions_of

    inter = interactions_of(spec, prepared, torch.device("cpu"))
    assert inter.sides["tags"][1].shape == (prepared.vocabs["item"].size, prepared.train["tags"].shape[1])
    assert model_grid(spec, build_model(spec, prepared), inter) is not None


@pytest.mark.parametrize("tags, code, message", [
    ({1: ("a", "b", "c"), 2: ("a",)}, "D130", "a set of 3 distinct ids, more than the column's max_size (2)"),
    ({1: ("-1", "4"), 2: ("4",)}, "D105", "the id -1 in a set"),  # whole-number ids: -1 pads the exported sets
])
def test_a_bad_set_in_a_table_is_an_error_naming_the_table_s_file(tmp_path, capsys, tags, code, message):
    path, _ = files(tmp_path)
    tags_spec(path, tags, column='tags: categories(sep="|", max_size=2)')
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'tags.csv'}" in err and f"error[{code}]" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
