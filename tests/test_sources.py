"""The source registry's coverage: every source of specc.data.sources goes through check -> train ->
export -> predict -> evaluate on tiny data this test writes, the exported model records how its data
was read (specc.reading, by the source's own declaration), and predict's and evaluate's answers are
onnxruntime's on the same rows. A source without a case here fails at once; the docs' table of
sources agrees with the declarations both ways; a kind nobody declared raises in every stage."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import ROOT
from specc.commands.cli import main
from specc.data.prepare import prepare
from specc.data.preview import preview
from specc.data.sources import SOURCES, UndeclaredSource, source_def
from specc.data.sources.base import Char, Choice, Flag
from specc.export.graph import metadata
from specc.inference.evaluate import evaluate_file
from specc.language.diagnostics import DataError, SpecError
from specc.language.source import Span
from specc.language.spec import IMAGE_MODES
from specc.training.run import load_spec

ROWS = """\
data {{
    source = {source}
    inputs = [c: category, a: float]
    target = y: float
    valid  = {valid}
    batch  = 8
}}
model {{
    out = concat(embedding(c, 2), a) |> linear(1)
}}
train {{
    loss    = mse
    metrics = [rmse, mae]
    fit(epochs=2, lr=1e-2)
    seed    = 1
}}
"""

IMAGES = """\
data {
    source = images("pictures", size=(4, 4), mode="gray")
    inputs = [image: float(1, 4, 4) / 255]
    target = label: category
    valid  = random(0.25, seed=1)
    batch  = 4
}
model {
    out = image |> flatten |> linear(classes)
}
train {
    loss    = cross_entropy
    metrics = [accuracy, error_rate]
    fit(epochs=2, lr=1e-2)
    seed    = 1
}
"""


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Ids 1 to 5 (an unseen 9 now and then, for predict), a number and a target that follows them."""
    rng = np.random.default_rng(seed)
    c = rng.integers(1, 6, n)
    c[::7] = 9 if seed else c[::7]
    a = np.round(rng.normal(0, 1, n), 3)
    return {"c": c, "a": a, "y": np.round(0.5 * c + a + rng.normal(0, 0.1, n), 3)}


def write_text(path: Path, table: dict, delimiter: str = ",", header: bool = True) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(table)
    writer.writerows(zip(*table.values()))
    text = out.getvalue().encode()
    path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)


def write_parquet(path: Path, table: dict) -> None:
    pq.write_table(pa.table({"c": table["c"].astype(np.int64), "a": table["a"], "y": table["y"]}), path)


def write_pictures(root: Path, classes: dict[str, int], seed: int) -> dict[Path, tuple[str, np.ndarray]]:
    """Grey 4 x 4 PNGs (the model's own size: decoding gives these pixels), each class brighter
    than the one before, under root/<class>/ (or root/ itself where the class is '')."""
    rng = np.random.default_rng(seed)
    written = {}
    for k, (label, count) in enumerate(classes.items()):
        for j in range(count):
            pixels = np.clip(rng.normal(60 + 120 * k, 30, (4, 4)), 0, 255).astype(np.uint8)
            path = root / label / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            written[path] = (label, pixels)
    return written


@dataclass
class Case:
    """One source's spec and data, and a new file of its kind for predict and evaluate with what
    onnxruntime is fed for it (and the target's values)."""

    spec: Path
    reading: dict  # what the exported model must record as specc.reading
    new: Path
    feed: dict[str, np.ndarray]
    truth: np.ndarray


def _rows_case(folder: Path, source: str, reading: dict, write: Callable, name: str, new: str,
               valid: str = "random(0.25, seed=2)") -> Case:
    write(folder / name, rows(48, 0))
    table = rows(20, 1)
    write(folder / new, table)
    (folder / "rows.spec").write_text(ROWS.format(source=source, valid=valid))
    feed = {"c": table["c"].astype(np.int64), "a": table["a"].astype(np.float32)}
    return Case(folder / "rows.spec", reading, folder / new, feed, table["y"])


def csv_case(folder: Path) -> Case:
    """Gzipped text with a header; predict reads another gzipped CSV, its columns in another order."""
    reading = {"format": "csv", "delimiter": ",", "header": True, "columns": None, "missing": [], "strip": False}
    case = _rows_case(folder, 'csv("rows.csv.gz")', reading, write_text, "rows.csv.gz", "new.csv.gz")
    table = rows(20, 1)
    write_text(case.new, {"y": table["y"], "a": table["a"], "c": table["c"], "extra": table["c"] * 0})
    return case


def tsv_case(folder: Path) -> Case:
    """Tab-separated, no header: predict reads a file laid out as the training data was (the recording's)."""
    reading = {"format": "csv", "delimiter": "\t", "header": False, "columns": ["c", "a", "y"], "missing": [],
               "strip": False}

    def write(path: Path, table: dict) -> None:
        write_text(path, table, delimiter="\t", header=False)

    return _rows_case(folder, 'tsv("rows.tsv", header=false, columns=[c, a, y])', reading, write, "rows.tsv",
                      "new.tsv")


def npz_case(folder: Path) -> Case:
    """The file's own train and valid arrays; predict reads another archive's plain arrays."""
    train, valid = rows(36, 0), rows(12, 2)
    np.savez(folder / "rows.npz", **{f"{k}_train": v for k, v in train.items()},
             **{f"{k}_valid": v for k, v in valid.items()})
    table = rows(20, 1)
    np.savez(folder / "new.npz", **table)
    (folder / "rows.spec").write_text(ROWS.format(source='npz("rows.npz")', valid="random(0.25)").replace(
        "    valid  = random(0.25)\n", ""))
    feed = {"c": table["c"].astype(np.int64), "a": table["a"].astype(np.float32)}
    return Case(folder / "rows.spec", {"format": "npz"}, folder / "new.npz", feed, table["y"])


def parquet_case(folder: Path) -> Case:
    """A Parquet file; predict and evaluate read another (the model records Parquet, not npz)."""
    return _rows_case(folder, 'parquet("rows.parquet", columns=[c, a, y])', {"format": "parquet"}, write_parquet,
                      "rows.parquet", "new.parquet")


def images_case(folder: Path) -> Case:
    """Class folders of PNGs; evaluate reads others laid out so (predict: the same images)."""
    write_pictures(folder / "pictures", {"dark": 8, "light": 8}, 0)
    new = write_pictures(folder / "new", {"dark": 3, "light": 3}, 1)
    (folder / "images.spec").write_text(IMAGES)
    paths = sorted(new)
    feed = {"image": np.stack([new[p][1] for p in paths])[:, None]}
    return Case(folder / "images.spec", {"format": "images", "size": [4, 4], "mode": "gray"}, folder / "new", feed,
                np.array([new[p][0] for p in paths]))


def write_jsonl(path: Path, table: dict) -> None:
    """One JSON object a row (ids as numbers, a null-free float), gzipped where the name ends .gz."""
    text = "".join(json.dumps({k: v.item() for k, v in zip(table, values)}) + "\n" for values in zip(*table.values()))
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())


def jsonl_case(folder: Path) -> Case:
    """JSON Lines; predict and evaluate read another, gzipped, its fields in another order and one more."""
    case = _rows_case(folder, 'jsonl("rows.jsonl")', {"format": "jsonl"}, write_jsonl, "rows.jsonl", "new.jsonl.gz")
    table = rows(20, 1)
    write_jsonl(case.new, {"extra": table["c"] * 0, "y": table["y"], "a": table["a"], "c": table["c"]})
    return case


CASES = {"csv": csv_case, "tsv": tsv_case, "npz": npz_case, "parquet": parquet_case, "images": images_case,
         "jsonl": jsonl_case}


def test_every_source_has_a_case_here():
    assert set(CASES) == set(SOURCES)


def _train(case: Case, folder: Path, capsys) -> Path:
    assert main(["check", str(case.spec)]) == 0
    assert main(["train", str(case.spec), "--out", str(folder / "run"), "--quiet"]) == 0
    capsys.readouterr()
    return folder / "run" / "model.onnx"


def _by_onnxruntime(model: Path, feed: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_source_trains_exports_records_its_reading_and_predicts_as_onnxruntime(kind, tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))
    case = CASES[kind](tmp_path)
    spec, _ = load_spec(case.spec)
    model = _train(case, tmp_path, capsys)
    recorded = json.loads(ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map["specc.reading"])
    assert recorded == case.reading == source_def(spec.data.source.kind).reading(spec.data.source)
    want = _by_onnxruntime(model, case.feed)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(model), str(case.new), "--out", str(out)]) == 0
    got = list(csv.DictReader(out.open()))
    assert len(got) == len(case.truth)
    if kind == "images":  # the file column, then the label and a probability per class
        assert [row["file"] for row in got] == [f"{label}/{k}.png" for label in ("dark", "light") for k in range(3)]
        assert [row["label"] for row in got] == list(want["label"])
        for k, cls in enumerate(("dark", "light")):  # written as the float32 it was, bit for bit
            assert [np.float32(row[f"probability_{cls}"]) for row in got] == list(want["probabilities"][:, k])
        return
    if kind == "npz":  # arrays keep no column but the inputs: the prediction is `y`
        assert [np.float32(row["y"]) for row in got] == list(want["y"])
        return
    assert [np.float32(row["y_pred"]) for row in got] == list(want["y"])
    assert [float(row["y"]) for row in got] == list(case.truth)  # the target's column, kept as given


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_source_evaluates_as_onnxruntime_scores(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))
    case = CASES[kind](tmp_path)
    model = _train(case, tmp_path, capsys)
    want = _by_onnxruntime(model, case.feed)
    result = evaluate_file(model, case.new)
    assert result["rows"] == len(case.truth)
    if kind == "images":
        truth = np.array([("dark", "light").index(t) for t in case.truth])
        accuracy = float(np.mean(want["label"] == case.truth))
        assert result["loss"] == pytest.approx(-np.log(want["probabilities"][np.arange(len(truth)), truth]).mean(),
                                               rel=1e-6)
        assert (result["accuracy"], result["error_rate"]) == pytest.approx((accuracy, 1 - accuracy))
        return
    err = want["y"].astype(np.float64) - case.truth
    assert result["loss"] == pytest.approx(float(np.mean(err ** 2)), rel=1e-9)
    assert result["rmse"] == pytest.approx(math.sqrt(np.mean(err ** 2)), rel=1e-9)
    assert result["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-9)


# ---------------------------------------------------------------- the declarations themselves


def test_every_declaration_reads_its_path_first_and_names_its_kind():
    for name, defn in SOURCES.items():
        assert defn.name == name and defn.params[0].name == "path" and defn.doc
        assert len({f.name for f in defn.params}) == len(defn.params)
    mode = next(f for f in SOURCES["images"].params if f.name == "mode")
    assert isinstance(mode, Choice) and set(mode.choices) == set(IMAGE_MODES) and mode.default in IMAGE_MODES


def test_a_tsv_source_is_a_csv_source_with_a_tab(tmp_path):
    write_text(tmp_path / "rows.tsv", rows(48, 0), delimiter="\t")
    (tmp_path / "rows.spec").write_text(ROWS.format(source='tsv("rows.tsv")', valid="random(0.25)"))
    source = load_spec(tmp_path / "rows.spec")[0].data.source
    assert (source.kind, source.delimiter, source.header) == ("csv", "\t", True)


def _table_after(text: str, heading: str) -> list[list[str]]:
    section = text[text.index(heading):]
    lines = re.search(r"((?:^\|.*\n)+)", section, re.M).group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in lines]


def _written_default(field, text: str):
    """A default as the docs write it (`false`, `","`), or the field's own where the docs say `...`."""
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        return json.loads(text)
    return field.default


def test_the_docs_table_of_sources_is_the_declarations():
    text = (ROOT / "docs" / "language.md").read_text()
    documented = {}
    for row in _table_after(text, "The sources a spec may name"):
        call = re.fullmatch(r"`(\w+)\((.*)\)`", row[0])
        assert call, row[0]
        documented[call[1]] = call[2]
    assert set(documented) == set(SOURCES)
    for name, args in documented.items():
        params = SOURCES[name].params
        written = dict(re.findall(r'(\w+)=((?:\([^)]*\))|"[^"]*"|\[[^]]*\]|[\w.]+)', args))
        assert args.split(",")[0] == "path" and list(written) == [f.name for f in params[1:]], name
        for field in params[1:]:
            if isinstance(field, (Flag, Char, Choice)):
                assert _written_default(field, written[field.name]) == field.default, (name, field.name)


# ---------------------------------------------------------------- a kind nobody declared


@dataclass(frozen=True)
class Undeclared:
    """A checked source of a kind no declaration names (as a source added without its declaration)."""

    kind: ClassVar[str] = "avro"
    path: Path
    span: Span | None = None


def _undeclared(tmp_path: Path):
    write_text(tmp_path / "rows.csv", rows(48, 0))
    (tmp_path / "rows.spec").write_text(ROWS.format(source='csv("rows.csv")', valid="random(0.25)"))
    spec = load_spec(tmp_path / "rows.spec")[0]
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, source=Undeclared(tmp_path / "rows.avro")))


def test_a_users_unknown_source_is_e202_with_did_you_mean(tmp_path):
    (tmp_path / "rows.spec").write_text(ROWS.format(source='parquett("rows.parquet")', valid="random(0.25)"))
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "rows.spec")
    [d] = err.value.diagnostics
    assert (str(d.code), d.message, d.notes) == ("E202", "unknown source 'parquett'", ("did you mean 'parquet'?",))


def test_the_lookup_of_an_undeclared_kind_raises_a_key_error():
    with pytest.raises(UndeclaredSource, match="no source 'avro' is declared in specc.data.sources") as err:
        source_def("avro")
    assert isinstance(err.value, KeyError)


STAGES = {
    "prepare": lambda spec: prepare(spec.data),
    "preview": lambda spec: preview(spec),
    "export metadata": lambda spec: metadata(spec, {}),
}


@pytest.mark.parametrize("stage", STAGES)
def test_an_undeclared_kind_raises_in_every_stage(tmp_path, stage):
    """A source whose declaration is missing is a bug: each stage says so, none reads it as another."""
    with pytest.raises(UndeclaredSource, match="no source 'avro' is declared"):
        STAGES[stage](_undeclared(tmp_path))


def test_predict_and_evaluate_refuse_a_model_that_records_a_source_this_specc_does_not_declare(tmp_path, capsys):
    import onnx

    case = csv_case(tmp_path)
    model = _train(case, tmp_path, capsys)
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "specc.reading":
            prop.value = json.dumps({"format": "avro"})
    newer = tmp_path / "newer.onnx"
    onnx.save(proto, str(newer))
    for argv in (["predict", str(newer), str(case.new)], ["evaluate", str(newer), str(case.new)]):
        assert main(argv) == 1
        assert capsys.readouterr().err.strip() == (
            f"{newer}: error[D108]: its metadata specc.reading names the source 'avro', which this specc does not "
            f"read (it reads {', '.join(SOURCES)}): was it written by a newer specc?")
    with pytest.raises(DataError):
        evaluate_file(newer, case.new)


# ---------------------------------------------------------------- empty splits


@pytest.mark.parametrize("empty, message", [
    ("train", "arrays 'c_train', 'a_train', 'y_train' have no rows, so there are no training rows"),
    ("valid", "arrays 'c_valid', 'a_valid', 'y_valid' have no rows, so there are no validation rows"),
])
def test_an_npz_split_without_rows_is_a_data_error_in_check_and_train(tmp_path, capsys, empty, message):
    """Not NaN at step 0 (no training rows) nor a traceback (no validation rows): what check accepts, train runs."""
    parts = {"train": rows(12, 0), "valid": rows(4, 2)}
    parts[empty] = {k: v[:0] for k, v in parts[empty].items()}
    np.savez(tmp_path / "rows.npz", **{f"{k}_{part}": v for part, table in parts.items() for k, v in table.items()})
    (tmp_path / "rows.spec").write_text(ROWS.format(source='npz("rows.npz")', valid="random(0.25)").replace(
        "    valid  = random(0.25)\n", ""))
    for argv in (["check", str(tmp_path / "rows.spec")],
                 ["train", str(tmp_path / "rows.spec"), "--out", str(tmp_path / "run"), "--quiet"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.strip() == f"{tmp_path / 'rows.npz'}: error[D106]: {message}"
        assert "NaN" not in err and "Traceback" not in err


def test_no_rows_left_is_a_data_error_whatever_the_source(tmp_path, monkeypatch):
    """Each source names what it can (an .npz's empty arrays); prepare's own check holds for any
    source, the next one too: a read that leaves no training rows never reaches training."""
    spec = load_spec(csv_case(tmp_path).spec)[0]

    def nothing_to_train(data, wanted):
        return {c.name: np.zeros(0) for c in wanted}, {c.name: np.ones(3) for c in wanted}, "rows.csv.gz"

    monkeypatch.setitem(SOURCES, "csv", dataclasses.replace(SOURCES["csv"], read=nothing_to_train))
    with pytest.raises(DataError, match="rows.csv.gz: error.D106.: the data leaves no training rows"):
        prepare(spec.data)


# ---------------------------------------------------------------- Parquet rows for predict, hostile


@pytest.fixture(scope="module")
def parquet_model(tmp_path_factory) -> tuple[Path, Path]:
    """A model trained from parquet(...), and the folder to write files for it in."""
    folder = tmp_path_factory.mktemp("parquet")
    case = parquet_case(folder)
    assert main(["train", str(case.spec), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run" / "model.onnx", folder


def _predicted(capsys, model: Path, path: Path, *options: str) -> tuple[int, str]:
    code = main(["predict", str(model), str(path), *options])
    return code, capsys.readouterr().err.strip()


def test_predict_reads_a_parquet_file_by_its_first_bytes_whatever_its_name(parquet_model, capsys):
    model, folder = parquet_model
    table = rows(6, 3)
    write_parquet(folder / "rows.bin", table)
    assert main(["predict", str(model), str(folder / "rows.bin")]) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    feed = {"c": table["c"].astype(np.int64), "a": table["a"].astype(np.float32)}
    assert [np.float32(row["y_pred"]) for row in out] == list(_by_onnxruntime(model, feed)["y"])


def test_predict_parquet_columns_missing_or_of_the_wrong_type(parquet_model, capsys):
    model, folder = parquet_model
    pq.write_table(pa.table({"c": [1, 2], "y": [0.5, 1.5]}), folder / "no_a.parquet")
    assert _predicted(capsys, model, folder / "no_a.parquet") == (
        1, f"{folder / 'no_a.parquet'}: error[D107]: missing input column 'a' (the file has: c, y)")
    pq.write_table(pa.table({"c": [1, 2], "a": ["x", "y"]}), folder / "text_a.parquet")
    assert _predicted(capsys, model, folder / "text_a.parquet") == (
        1, f"{folder / 'text_a.parquet'}: error[D104]: column 'a': holds strings; the model's column 'a' takes numbers")
    pq.write_table(pa.table({"c": [1.5, 2.0], "a": [0.1, 0.2]}), folder / "float_c.parquet")
    assert _predicted(capsys, model, folder / "float_c.parquet") == (
        1, f"{folder / 'float_c.parquet'}: error[D104]: column 'c': holds floating-point numbers; the model's column "
           "'c' takes ids or text")


def test_predict_parquet_values_are_reported_at_their_row(parquet_model, capsys):
    model, folder = parquet_model
    pq.write_table(pa.table({"c": [1, 2, 3], "a": [0.1, None, 0.3]}), folder / "null_a.parquet")
    assert _predicted(capsys, model, folder / "null_a.parquet") == (
        1, f"{folder / 'null_a.parquet'}: error[D105]: column 'a': row 2: expected a number, found a missing value "
           "(NaN); the model was not trained to fill missing values of 'a' (fill_missing)")
    pq.write_table(pa.table({"c": ["1", "x"], "a": [0.1, 0.2]}), folder / "word_c.parquet")
    assert _predicted(capsys, model, folder / "word_c.parquet") == (
        1, f"{folder / 'word_c.parquet'}: error[D104]: column 'c': row 2: expected a whole number (the model's ids "
           "are integers), found 'x'")


def test_predict_parquet_files_that_are_not_what_they_say(parquet_model, capsys):
    import os

    model, folder = parquet_model
    whole = folder / "new.parquet"
    (folder / "cut.parquet").write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    code, err = _predicted(capsys, model, folder / "cut.parquet")
    assert code == 1 and err.startswith(f"{folder / 'cut.parquet'}: error[D102]: is not a readable Parquet file: ")
    (folder / "empty.parquet").write_bytes(b"")
    code, err = _predicted(capsys, model, folder / "empty.parquet")
    assert code == 1 and err.startswith(f"{folder / 'empty.parquet'}: error[D102]: is not a readable Parquet file: ")
    pq.write_table(pa.table({"c": pa.array([], pa.int64()), "a": pa.array([], pa.float64())}), folder / "none.parquet")
    assert _predicted(capsys, model, folder / "none.parquet") == (
        1, f"{folder / 'none.parquet'}: error[D122]: has no data rows")
    os.mkfifo(folder / "fifo.parquet")
    assert _predicted(capsys, model, folder / "fifo.parquet") == (
        1, f"{folder / 'fifo.parquet'}: error[D101]: is a FIFO (named pipe), not a regular file")
    (folder / "loop.parquet").symlink_to(folder / "loop.parquet")
    code, err = _predicted(capsys, model, folder / "loop.parquet")
    assert code == 1 and err.startswith(f"{folder / 'loop.parquet'}: error[D101]: is a symbolic link loop")
    assert _predicted(capsys, model, whole, "--delimiter", ",") == (
        2, f"specc: error: --delimiter: {whole} is a Parquet file, not a CSV")
    assert _predicted(capsys, model, whole, "--array", "c=c") == (
        2, f"specc: error: --array names arrays of an .npz archive; {whole} is a Parquet file (its schema names the "
           "columns)")
